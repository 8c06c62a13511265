"""Helpers for the evaluation tests: small real-image sets and tiny random open_clip text towers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# skimage's bundled photographs: distinct scenes, so each is one "class"
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")

# open_clip model config of a tiny CLIP whose embeddings have the tiny checkpoint's clip summary size
TINY_CLIP_EMBED_DIM = 32
TINY_TEXT_CONFIG = {
    "embed_dim": TINY_CLIP_EMBED_DIM,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _sample(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3]


def _variants(img: Image.Image) -> list[Image.Image]:
    """Crops and flips of one photograph (different sizes and aspect ratios on purpose)."""
    w, h = img.size
    out = [
        img,
        img.transpose(Image.FLIP_LEFT_RIGHT),
        img.crop((0, 0, int(w * 0.8), int(h * 0.9))),
        img.crop((int(w * 0.15), int(h * 0.1), w, h)).transpose(Image.FLIP_LEFT_RIGHT),
        img.crop((int(w * 0.1), int(h * 0.2), int(w * 0.9), int(h * 0.85))),
        img.crop((0, int(h * 0.1), int(w * 0.7), h)),
    ]
    return out


def make_image_folder(root: Path, classes=SAMPLE_IMAGES, variants=range(4), max_side: int = 96) -> Path:
    """ImageFolder ``root/<class>/<i>.png`` of crops/flips (``variants``: which of 6) of skimage's photographs."""
    root = Path(root)
    for c in classes:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        base = Image.fromarray(_sample(c))
        base.thumbnail((max_side * 2, max_side * 2))  # small files: fast to decode in tests
        all_variants = _variants(base)
        for i in variants:
            v = all_variants[i]
            v.thumbnail((max_side, max_side))
            v.save(d / f"{i}.png")
    return root


def write_tiny_text_config(dirpath: Path, name: str = "openradio-tiny-text") -> Path:
    """An open_clip model-config JSON for a tiny CLIP (usable as a model name through its path)."""
    path = Path(dirpath) / f"{name}.json"
    path.write_text(json.dumps(TINY_TEXT_CONFIG))
    return path


def make_tiny_text_model(seed: int = 0):
    """A tiny randomly initialised open_clip CLIP built from TINY_TEXT_CONFIG."""
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    cfg = TINY_TEXT_CONFIG
    model = CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])
    assert isinstance(model, open_clip.model.CLIP)
    return model.eval()


def save_tiny_text_tower(dirpath: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the config JSON and an open_clip state-dict file; returns (config path, weights path)."""
    cfg = write_tiny_text_config(dirpath)
    weights = Path(dirpath) / "tiny_text_weights.pt"
    torch.save(make_tiny_text_model(seed).state_dict(), weights)
    return cfg, weights
