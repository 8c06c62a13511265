"""Colour-coded synthetic segmentation data (each class one flat colour, in 16-px stripes) written
in the four on-disk layouts openradio.dense.datasets reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = np.array([(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40)], np.uint8)
NUM_CLASSES = len(PALETTE)


def synth_pairs(n: int, seed: int, size: int = 64, stripe: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (image HxWx3 uint8, labels HxW) pairs; stripes vertical or horizontal; every class
    appears in every four consecutive images."""
    rng = np.random.default_rng(seed)
    out = []
    k = size // stripe
    for i in range(n):
        classes = rng.permutation(NUM_CLASSES)[:k] if k <= NUM_CLASSES else rng.integers(0, NUM_CLASSES, k)
        lab = np.repeat(np.repeat(classes[None, :], size, 0), stripe, 1)
        if i % 2:
            lab = lab.T.copy()
        out.append((PALETTE[lab], lab.astype(np.uint8)))
    return out


def _save_png(arr, path: Path, mode=None, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette)
    im.save(path)


def write_layout(root: Path, layout: str, n_train: int = 8, n_val: int = 4) -> Path:
    """Writes the synthetic set under ``root`` in ``layout``; returns the --data root."""
    root = Path(root)
    splits = {"train": synth_pairs(n_train, 1), "val": synth_pairs(n_val, 2)}
    for split, pairs in splits.items():
        for i, (img, lab) in enumerate(pairs):
            name = f"{split}_{i:03d}"
            if layout == "folders":
                _save_png(img, root / split / "images" / f"{name}.png")
                _save_png(lab, root / split / "masks" / f"{name}.png")
            elif layout == "ade20k":
                sub = {"train": "training", "val": "validation"}[split]
                base = root / "ADEChallengeData2016"
                m = lab + 1
                m[0, :] = 0  # ADE's 0 = unlabelled: ignored
                _save_png(img, base / "images" / sub / f"ADE_{name}.png")
                _save_png(m, base / "annotations" / sub / f"ADE_{name}.png")
            elif layout == "voc":
                base = root / "VOCdevkit" / "VOC2012"
                (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
                m = lab.copy()
                m[:, 0] = 255  # VOC's void border
                pal = [0] * 768
                for c, col in enumerate(PALETTE):
                    pal[3 * c : 3 * c + 3] = col.tolist()
                _save_png(m, base / "SegmentationClass" / f"{name}.png", mode="P", palette=pal)
                lst = base / "ImageSets" / "Segmentation" / f"{split}.txt"
                lst.parent.mkdir(parents=True, exist_ok=True)
                with open(lst, "a") as f:
                    f.write(name + "\n")
            elif layout == "cityscapes":
                city = "aachen" if split == "train" else "frankfurt"
                stem = f"{city}_{i:06d}_000019"
                _save_png(img, root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                m = lab.copy()
                m[-1, :] = 255
                _save_png(m, root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
            else:
                raise ValueError(layout)
    return root
