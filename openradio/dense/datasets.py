"""Segmentation data sets in the layouts people keep on disk.

=============  ==============================================================  ==============
layout         files                                                           labels
=============  ==============================================================  ==============
``ade20k``     ``ADEChallengeData2016/images/{training,validation}/*.jpg``,    0 = ignore,
               ``.../annotations/{training,validation}/*.png``                 1..150 -> 0..149
``voc``        ``VOC2012/JPEGImages/*.jpg``, palette PNGs in                   21 classes,
               ``SegmentationClass/``, splits ``ImageSets/Segmentation/        255 = ignore
               {train,val}.txt``
``cityscapes`` ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png``,           19 train ids,
               ``gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png``         255 = ignore
``folders``    ``ROOT/{train,val}/images/*`` + ``.../masks/*.png`` (what        as stored,
               ``openradio probe seg`` reads; ``annotations/``, ``labels/``    255 = ignore
               also accepted)
=============  ==============================================================  ==============

``read_split(root, layout, split)`` returns a :class:`SegData`; ``layout='auto'`` recognises the
four from their folder names. A root may be the data set's own folder or the one above it
(``ADEChallengeData2016``, ``VOCdevkit/VOC2012``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from openradio.eval.probe import load_mask, read_segmentation_folder
from openradio.inputs.imageio import is_image_name

__all__ = ["LAYOUTS", "SegData", "read_split", "detect_layout", "CITYSCAPES_CLASSES", "VOC_CLASSES"]

LAYOUTS = ("ade20k", "voc", "cityscapes", "folders")
IGNORE = 255
VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
CITYSCAPES_CLASSES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
_SPLITS = {"ade20k": {"train": "training", "val": "validation"}}


@dataclass
class SegData:
    """Image/mask pairs and how their mask values become class indices (``IGNORE`` = 255)."""

    images: list[Path]
    masks: list[Path]
    layout: str
    num_classes: Optional[int] = None  # known for the standard sets; None: from the masks
    classnames: Optional[list[str]] = None
    root: str = ""
    ignore_index: int = IGNORE
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def target(self, i: int) -> torch.Tensor:
        """(H, W) int64 class indices of image ``i``, ``ignore_index`` where unlabelled."""
        m = load_mask(self.masks[i])
        if self.layout == "ade20k":  # 0 = "other": ignored; classes 1..150 -> 0..149
            m = m - 1
            m[m < 0] = self.ignore_index
        return m


def _ade_root(root: Path) -> Path:
    for cand in (root, root / "ADEChallengeData2016"):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir() and (cand / "images" / "training").is_dir():
            return cand
    raise ValueError(
        f"{root} is not an ADE20K folder: expected ADEChallengeData2016/images/{{training,validation}} "
        "and annotations/{training,validation}"
    )


def _voc_root(root: Path) -> Path:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    raise ValueError(
        f"{root} is not a Pascal VOC folder: expected JPEGImages/, SegmentationClass/ and "
        "ImageSets/Segmentation/{train,val}.txt"
    )


def detect_layout(root: str | os.PathLike) -> str:
    """Which of ``LAYOUTS`` a folder holds, from its sub-folder names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation data folder not found: {root}")
    checks = (("ade20k", _ade_root), ("voc", _voc_root))
    for name, fn in checks:
        try:
            fn(root)
            return name
        except ValueError:
            pass
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "train" / "images").is_dir():
        return "folders"
    raise ValueError(
        f"cannot tell the layout of {root}: expected ADEChallengeData2016/, VOC's JPEGImages/ + "
        "SegmentationClass/, Cityscapes' leftImg8bit/ + gtFine/, or train/ and val/ folders of "
        "images/ + masks/; pass --layout"
    )


def read_split(root: str | os.PathLike, layout: str = "auto", split: str = "train") -> SegData:
    """The ``split`` ('train' or 'val') of the data set at ``root`` in ``layout``."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"segmentation data folder not found: {root}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {list(LAYOUTS)} or 'auto'")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if layout == "ade20k":
        base = _ade_root(root)
        sub = _SPLITS["ade20k"][split]
        img_dir, ann_dir = base / "images" / sub, base / "annotations" / sub
        images = sorted(p for p in img_dir.iterdir() if is_image_name(p.name))
        masks = [ann_dir / (p.stem + ".png") for p in images]
        data = SegData(images, masks, layout, 150, None, str(base))
    elif layout == "voc":
        base = _voc_root(root)
        listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"VOC split list not found: {listing}")
        ids = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
        images = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
        masks = [base / "SegmentationClass" / f"{i}.png" for i in ids]
        data = SegData(images, masks, layout, 21, list(VOC_CLASSES), str(base))
    elif layout == "cityscapes":
        img_root = root / "leftImg8bit" / split
        if not img_root.is_dir():
            raise FileNotFoundError(f"Cityscapes images not found: {img_root}")
        images = sorted(img_root.glob("*/*_leftImg8bit.png"))
        masks = [
            root / "gtFine" / split / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            for p in images
        ]
        data = SegData(images, masks, layout, 19, list(CITYSCAPES_CLASSES), str(root))
    else:
        s = read_segmentation_folder(root / split if (root / split).is_dir() else root)
        data = SegData(list(s.images), list(s.masks), layout, None, None, s.source)
    if not data.images:
        raise ValueError(f"no {split} images found in {root} ({layout} layout)")
    missing = next((m for m in data.masks if not m.is_file()), None)
    if missing is not None:
        hint = (
            " (make the train-id masks with cityscapesscripts' createTrainIdLabelImgs)"
            if layout == "cityscapes"
            else ""
        )
        raise FileNotFoundError(f"mask not found: {missing}{hint}")
    return data
