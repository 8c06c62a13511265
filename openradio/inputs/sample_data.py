"""Real photographs that ship with scikit-image (and scikit-learn), written to disk offline.

The offline demo and the examples need real images without a network. scikit-image bundles a
handful of photographs inside its wheel (``skimage/data/*.png|jpg``); the other
``skimage.data`` images are fetched with ``pooch`` on first use, so they are not used here.
scikit-learn's ``load_sample_images`` adds two more (``china``, ``flower``) when it is installed.

    from openradio.inputs.sample_data import write_sample_images, write_sample_split
    paths = write_sample_images("images/")            # every available photograph
    split = write_sample_split("data/")               # data/train/*.png + data/eval/*.png

Images are written as RGB (greyscale ones are replicated to three channels), the longer side
capped at ``max_side`` pixels so that training batches decode quickly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image

from openradio.extras import require

__all__ = [
    "SampleImage",
    "SAMPLE_IMAGES",
    "TRAIN_IMAGES",
    "EVAL_IMAGES",
    "available_images",
    "load_sample_image",
    "write_sample_images",
    "SampleSplit",
    "write_sample_split",
]


@dataclass(frozen=True)
class SampleImage:
    name: str
    source: str  # 'skimage' or 'sklearn'
    loader: str  # function name in skimage.data, or the sklearn file name
    fmt: str  # file format to write: 'png' for lossless sources, 'jpg' for JPEG sources
    description: str


# Only images whose files are inside the installed packages (no pooch download).
SAMPLE_IMAGES: dict[str, SampleImage] = {
    s.name: s
    for s in [
        SampleImage("astronaut", "skimage", "astronaut", "png", "astronaut Eileen Collins (portrait)"),
        SampleImage("chelsea", "skimage", "chelsea", "png", "Chelsea the cat"),
        SampleImage("coffee", "skimage", "coffee", "png", "a cup of coffee on a saucer"),
        SampleImage("rocket", "skimage", "rocket", "jpg", "a rocket on the launch pad"),
        SampleImage("camera", "skimage", "camera", "png", "the cameraman (greyscale)"),
        SampleImage("coins", "skimage", "coins", "png", "Greek coins on a table (greyscale)"),
        SampleImage("immunohistochemistry", "skimage", "immunohistochemistry", "png", "stained tissue, microscope"),
        SampleImage("motorcycle_left", "skimage", "stereo_motorcycle:0", "png", "a motorcycle, left stereo view"),
        SampleImage("motorcycle_right", "skimage", "stereo_motorcycle:1", "png", "a motorcycle, right stereo view"),
        SampleImage("hubble_deep_field", "skimage", "hubble_deep_field", "jpg", "Hubble deep field galaxies"),
        SampleImage("retina", "skimage", "retina", "jpg", "a human retina, fundus photograph"),
        SampleImage("moon", "skimage", "moon", "png", "the lunar surface (greyscale)"),
        SampleImage("clock", "skimage", "clock", "png", "a clock, motion-blurred (greyscale)"),
        SampleImage("cell", "skimage", "cell", "png", "a cell, microscope (greyscale)"),
        SampleImage("grass", "skimage", "grass", "png", "grass texture (greyscale)"),
        SampleImage("gravel", "skimage", "gravel", "png", "gravel texture (greyscale)"),
        SampleImage("brick", "skimage", "brick", "png", "a brick wall (greyscale)"),
        SampleImage("china", "sklearn", "china.jpg", "jpg", "a Chinese temple"),
        SampleImage("flower", "sklearn", "flower.jpg", "jpg", "a flower"),
    ]
}

# Held-out photographs for evaluation: never in the training folder. Subjects with clear object/
# background structure, so PCA pictures are easy to read.
EVAL_IMAGES: tuple[str, ...] = ("chelsea", "coffee", "rocket", "flower")
TRAIN_IMAGES: tuple[str, ...] = tuple(n for n in SAMPLE_IMAGES if n not in EVAL_IMAGES)


def _load_raw(spec: SampleImage) -> np.ndarray:
    if spec.source == "skimage":
        data = require("skimage.data", "the bundled sample photographs")
        fn_name, _, index = spec.loader.partition(":")
        out = getattr(data, fn_name)()
        if index:
            out = out[int(index)]
        return np.asarray(out)
    if spec.source == "sklearn":
        datasets = require("sklearn.datasets", "the bundled sample photographs")
        return np.asarray(datasets.load_sample_image(spec.loader))
    raise ValueError(f"unknown sample-image source {spec.source!r}")


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = np.clip(img.astype(np.float64) * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:  # drop alpha
        img = img[..., :3]
    return np.ascontiguousarray(img)


def available_images(names: Optional[Iterable[str]] = None) -> list[str]:
    """The names (of ``names``, default all) that load here without a download.

    scikit-learn is optional: without it ``china`` and ``flower`` are left out. Images that
    scikit-image would have to download are never listed in :data:`SAMPLE_IMAGES`.
    """
    names = list(SAMPLE_IMAGES) if names is None else list(names)
    out = []
    for n in names:
        if n not in SAMPLE_IMAGES:
            raise ValueError(f"unknown sample image {n!r}; known: {', '.join(SAMPLE_IMAGES)}")
        spec = SAMPLE_IMAGES[n]
        if spec.source == "sklearn":
            try:
                import sklearn.datasets  # noqa: F401  (optional [demo]: is scikit-learn installed?)
            except ImportError:
                continue
        out.append(n)
    return out


def load_sample_image(name: str, max_side: Optional[int] = None) -> np.ndarray:
    """One photograph as an ``(H, W, 3)`` uint8 RGB array (longer side at most ``max_side``)."""
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}; known: {', '.join(SAMPLE_IMAGES)}")
    try:
        img = _to_rgb_uint8(_load_raw(SAMPLE_IMAGES[name]))
    except ImportError as e:
        raise RuntimeError(
            f"sample image {name!r} needs {e.name or 'a missing package'}: pip install scikit-image scikit-learn"
        ) from None
    if max_side is not None and max(img.shape[:2]) > max_side:
        h, w = img.shape[:2]
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))
    return img


def write_sample_images(
    directory: str | os.PathLike,
    names: Optional[Sequence[str]] = None,
    *,
    max_side: Optional[int] = 640,
    overwrite: bool = False,
) -> list[Path]:
    """Write the bundled photographs (``names``, default every available one) into ``directory``.

    PNG for lossless sources, JPEG (quality 95) for JPEG sources; files already there are kept
    unless ``overwrite``. Returns the written paths in ``names`` order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in available_images(names):
        spec = SAMPLE_IMAGES[name]
        path = directory / f"{name}.{spec.fmt}"
        if overwrite or not path.is_file():
            img = Image.fromarray(load_sample_image(name, max_side=max_side))
            tmp = path.with_name(path.name + ".tmp")
            # write then rename: an interrupted run never leaves a truncated image behind
            # (fast PNG compression: the files are read a few times, written once per run)
            opts = {"format": "JPEG", "quality": 95} if spec.fmt == "jpg" else {"format": "PNG", "compress_level": 1}
            img.save(tmp, **opts)
            os.replace(tmp, path)
        paths.append(path)
    if not paths:
        raise RuntimeError("no sample images could be loaded; install scikit-image (pip install scikit-image)")
    return paths


class SampleSplit(NamedTuple):
    train_dir: Path
    eval_dir: Path
    train: list[Path]
    eval: list[Path]


def write_sample_split(
    root: str | os.PathLike, *, max_side: Optional[int] = 640, overwrite: bool = False
) -> SampleSplit:
    """``root/train`` (training photographs) and ``root/eval`` (held-out ones), disjoint."""
    root = Path(root)
    train = write_sample_images(root / "train", TRAIN_IMAGES, max_side=max_side, overwrite=overwrite)
    held = write_sample_images(root / "eval", EVAL_IMAGES, max_side=max_side, overwrite=overwrite)
    return SampleSplit(root / "train", root / "eval", train, held)
