"""Frozen-backbone linear probes: semantic segmentation on patch features, classification on summaries.

Segmentation (``probe_segmentation``): images are resized to ``resolution`` x ``resolution``, the
frozen model's spatial features (B, C, h, w) are computed once and cached, and a linear head
(BatchNorm + 1x1 convolution: affine, so still a linear map of the features) is trained with
cross-entropy on logits bilinearly upsampled to 4x the feature grid against nearest-resized masks.
Evaluation upsamples the logits to each mask's **original** size and reports per-class IoU,
mIoU (over classes that occur in the ground truth or the predictions) and pixel accuracy.

Data: ``DIR/images/<name>.<ext>`` and ``DIR/masks/<name>.png`` (``annotations/`` or ``labels/``
also accepted), masks single-channel class indices (PNG mode L, P or I); ``ignore_index`` (255)
pixels count nowhere.

Classification (``probe_classification``): the model's summary (backbone or an adaptor's),
standardised with the training set's statistics, into one linear layer trained with AdamW;
reports top-1 / top-5 and per-class accuracy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from openradio.eval.data import IMAGE_EXTENSIONS, LabelledImages, iterate_batches, load_image
from openradio.inputs.imageio import is_image_name, resize_image
from openradio.runtime import autocast, select_output

__all__ = [
    "SegmentationSet",
    "read_segmentation_folder",
    "load_mask",
    "probe_segmentation",
    "SegProbeResult",
    "LinearSegHead",
    "probe_classification",
    "ClsProbeResult",
    "confusion_iou",
]

MASK_DIRS = ("masks", "annotations", "labels")


# -- data ---------------------------------------------------------------------------------------------
@dataclass
class SegmentationSet:
    images: list[Path]
    masks: list[Path]
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)


def read_segmentation_folder(root: str | os.PathLike) -> SegmentationSet:
    """Pairs ``root/images/X.*`` with ``root/masks/X.png`` (or annotations/, labels/) by file stem."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation folder {str(root)!r} does not exist")
    img_dir = root / "images"
    mask_dir = next((root / d for d in MASK_DIRS if (root / d).is_dir()), None)
    if not img_dir.is_dir() or mask_dir is None:
        raise ValueError(
            f"{str(root)!r} must hold images/ and masks/ (or annotations/ or labels/) sub-folders "
            "with one class-index PNG mask per image, same file stem"
        )
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    images, paired = [], []
    for p in sorted(img_dir.iterdir()):
        if is_image_name(p.name) and p.is_file():
            if p.stem not in masks:
                raise FileNotFoundError(f"image {p} has no mask {mask_dir / (p.stem + '.png')}")
            images.append(p)
            paired.append(masks[p.stem])
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {img_dir}")
    return SegmentationSet(images, paired, source=str(root))


def load_mask(path: str | os.PathLike) -> torch.Tensor:
    """(H, W) int64 class indices from a single-channel PNG (mode L, P, I or I;16)."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise ValueError(
                f"mask {path} is a {im.mode} image; masks must be single-channel class-index PNGs "
                "(mode L or P: pixel value = class index, 255 = ignore)"
            )
        arr = np.array(im)
    return torch.from_numpy(arr.astype(np.int64))


def _images_tensor(paths: Sequence[Path], resolution: int) -> torch.Tensor:
    return torch.stack([resize_image(load_image(p), resolution, resolution) for p in paths])


@torch.no_grad()
def _extract_spatial(
    model,
    paths: Sequence[Path],
    resolution: int,
    *,
    batch_size: int,
    device,
    amp: bool,
    adaptor: Optional[str],
    progress: bool,
    desc: str,
) -> torch.Tensor:
    chunks = []
    for i in tqdm(range(0, len(paths), batch_size), desc=desc, disable=not progress, unit="batch"):
        x = _images_tensor(paths[i : i + batch_size], resolution).to(device)
        with autocast(device, amp):
            out = model(x, feature_fmt="NCHW")
        chunks.append(select_output(out, adaptor).features.float().cpu().to(torch.float16))
    return torch.cat(chunks)


# -- segmentation -------------------------------------------------------------------------------------
def confusion_iou(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class IoU (NaN where a class is absent from both truth and prediction) and its mean."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    return iou, iou[~iou.isnan()].mean() if (~iou.isnan()).any() else torch.tensor(float("nan"))


@dataclass
class SegProbeResult:
    miou: float
    pixel_accuracy: float
    iou: list[float]  # per class, NaN where the class never occurs
    classnames: list[str]
    resolution: int
    num_train: int
    num_val: int
    head: nn.Module = field(repr=False, default=None)


class LinearSegHead(nn.Module):
    """BatchNorm + 1x1 convolution on the frozen feature map (an affine map per pixel)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def _train_head(
    head: nn.Module,
    feats: torch.Tensor,
    targets: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    device,
    loss_fn,
    progress: bool,
    desc: str,
    seed: int = 0,
):
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = feats.shape[0]
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, unit="epoch")
    for _ in bar:
        total = 0.0
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            f = feats[idx].to(device, torch.float32)
            loss = loss_fn(head(f), targets[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / n:.4f}")
    head.eval()
    return head


def probe_segmentation(
    model,
    train: SegmentationSet,
    val: SegmentationSet,
    *,
    resolution: int = 512,
    num_classes: Optional[int] = None,
    classnames: Optional[Sequence[str]] = None,
    ignore_index: int = 255,
    adaptor: Optional[str] = None,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 16,
    device=None,
    amp: bool = False,
    max_cache_gb: float = 16.0,
    progress: bool = True,
    seed: int = 0,
) -> SegProbeResult:
    """Train a linear segmentation head on frozen features of ``train``; evaluate on ``val``."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    step = model.min_resolution_step
    if resolution % step:
        raise ValueError(f"resolution {resolution} must be a multiple of the model's step {step}")
    dim, per_step = _feature_shape(model, adaptor, device)
    g = per_step * resolution // step  # feature grid side (an upsampling adaptor head gives more)
    gb = len(train) * dim * g * g * 2 / 2**30
    if gb > max_cache_gb:
        raise ValueError(
            f"caching {len(train)} training feature maps needs {gb:.1f} GiB (> max_cache_gb="
            f"{max_cache_gb}); lower the resolution, use fewer images or raise the limit"
        )
    train_masks = [load_mask(p) for p in train.masks]
    val_masks = [load_mask(p) for p in val.masks]
    if num_classes is None:
        seen = [int(m[m != ignore_index].max()) for m in train_masks + val_masks if (m != ignore_index).any()]
        if not seen:
            raise ValueError("every mask pixel is ignore_index; nothing to learn")
        num_classes = max(seen) + 1
    for p, m in zip(list(train.masks) + list(val.masks), train_masks + val_masks):
        bad = m[(m != ignore_index) & ((m < 0) | (m >= num_classes))]
        if bad.numel():
            raise ValueError(
                f"mask {p} has class {int(bad[0])}, outside [0, {num_classes}) (ignore index "
                f"{ignore_index}); pass --num-classes or fix the mask"
            )
    names = list(classnames) if classnames else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")

    feats = _extract_spatial(
        model,
        train.images,
        resolution,
        batch_size=batch_size,
        device=device,
        amp=amp,
        adaptor=adaptor,
        progress=progress,
        desc="train features",
    )
    label_size = 4 * g
    targets = torch.stack(
        [F.interpolate(m[None, None].float(), size=(label_size, label_size), mode="nearest")[0, 0] for m in train_masks]
    ).long()
    head = LinearSegHead(feats.shape[1], num_classes).to(device)
    torch.manual_seed(seed)

    def loss_fn(logits, target):
        up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(up, target, ignore_index=ignore_index)

    _train_head(
        head,
        feats,
        targets,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        device=device,
        loss_fn=loss_fn,
        progress=progress,
        desc="train probe",
        seed=seed,
    )
    del feats
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    val_feats = _extract_spatial(
        model,
        val.images,
        resolution,
        batch_size=batch_size,
        device=device,
        amp=amp,
        adaptor=adaptor,
        progress=progress,
        desc="val features",
    )
    with torch.no_grad():
        for f, m in zip(val_feats, val_masks):
            logits = head(f[None].to(device, torch.float32))
            pred = F.interpolate(logits, size=m.shape, mode="bilinear", align_corners=False).argmax(1)[0].cpu()
            keep = m != ignore_index
            conf += torch.bincount(m[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(
                num_classes, num_classes
            )
    iou, miou = confusion_iou(conf)
    acc = conf.diag().sum().item() / max(conf.sum().item(), 1)
    return SegProbeResult(float(miou), acc, iou.tolist(), names, resolution, len(train), len(val), head.cpu())


def _feature_shape(model, adaptor: Optional[str], device) -> tuple[int, int]:
    """(channels, feature-grid side per resolution step) of the chosen output."""
    step = model.min_resolution_step
    with torch.no_grad():
        out = model(torch.zeros(1, 3, step, step, device=device), feature_fmt="NCHW")
    f = select_output(out, adaptor).features
    return f.shape[1], f.shape[-1]


# -- classification -----------------------------------------------------------------------------------
@dataclass
class ClsProbeResult:
    top1: float
    top5: float
    per_class: list[float]
    classnames: list[str]
    resolution: int
    num_train: int
    num_val: int
    head: nn.Module = field(repr=False, default=None)


@torch.no_grad()
def _extract_summaries(
    model, data: LabelledImages, resolution: int, *, adaptor, batch_size, device, amp, num_workers, progress, desc
) -> torch.Tensor:
    embs: list[torch.Tensor] = [None] * len(data)  # type: ignore[list-item]
    for images, _, idx in tqdm(
        iterate_batches(data, resolution, batch_size, num_workers),
        total=-(-len(data) // batch_size),
        desc=desc,
        disable=not progress,
        unit="batch",
    ):
        with autocast(device, amp):
            out = model(images.to(device))
        s = select_output(out, adaptor).summary.float().cpu()
        for j, i in enumerate(idx.tolist()):
            embs[i] = s[j]
    return torch.stack(embs)


def probe_classification(
    model,
    train: LabelledImages,
    val: LabelledImages,
    *,
    resolution: int = 224,
    adaptor: Optional[str] = None,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    device=None,
    amp: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    seed: int = 0,
) -> ClsProbeResult:
    """Linear classifier on frozen (standardised) summaries of ``train``; accuracy on ``val``."""
    if train.classnames != val.classnames:
        raise ValueError(
            f"train and val have different classes ({len(train.classnames)} vs "
            f"{len(val.classnames)}); both must list the same class folders"
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    kw = dict(adaptor=adaptor, batch_size=32, device=device, amp=amp, num_workers=num_workers, progress=progress)
    xtr = _extract_summaries(model, train, resolution, desc="train summaries", **kw)
    xva = _extract_summaries(model, val, resolution, desc="val summaries", **kw)
    mean, std = xtr.mean(0), xtr.std(0, unbiased=False).clamp(min=1e-6)
    xtr, xva = (xtr - mean) / std, (xva - mean) / std
    ytr = torch.tensor(train.labels)
    yva = torch.tensor(val.labels)
    k = train.num_classes
    torch.manual_seed(seed)
    head = nn.Linear(xtr.shape[1], k).to(device)
    _train_head(
        head,
        xtr,
        ytr,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        device=device,
        loss_fn=F.cross_entropy,
        progress=progress,
        desc="train probe",
        seed=seed,
    )
    with torch.no_grad():
        logits = head(xva.to(device)).cpu()
    top = logits.topk(min(5, k), dim=-1).indices
    top1 = (top[:, 0] == yva).float().mean().item()
    top5 = (top == yva[:, None]).any(-1).float().mean().item()
    per_class = [((top[:, 0] == c) & (yva == c)).sum().item() / max((yva == c).sum().item(), 1) for c in range(k)]
    # fold the standardisation into the layer, so the returned head takes raw summaries
    with torch.no_grad():
        head = head.cpu()
        w = head.weight / std
        head.bias -= (w * mean).sum(-1)
        head.weight.copy_(w)
    return ClsProbeResult(top1, top5, per_class, list(train.classnames), resolution, len(train), len(val), head)
