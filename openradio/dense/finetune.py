"""Fine-tuning RADIO for semantic segmentation.

Components (each testable alone): a :class:`SegmentationModel` (RADIO + one of three heads), the
parameter groups (:func:`param_groups`: layer-wise learning-rate decay), the schedule (linear
warm-up then cosine, per step), the loop (:func:`finetune_segmentation`: AdamW, bf16 autocast
on CUDA, a checkpoint each epoch with exact resume, mIoU and per-class IoU per epoch) and the
export (:func:`export_segmenter` / :func:`load_segmenter`).

Heads:

* ``linear``: BatchNorm + 1x1 convolution on the last block's map (the probe's head).
* ``linear4``: the same on four blocks' maps concatenated along channels (DINOv2's "linear4":
  blocks 2/5/8/11 of a ViT-B, 4/11/17/23 of a ViT-L, see ``dinov2_block_indices``).
* ``pyramid``: ViTDet's simple feature pyramid (strides 4-32) and a light decoder: every level
  upsampled to stride 4 and summed, a 3x3 conv + BN + ReLU, a 1x1 classifier (Semantic FPN's
  merge, without its per-level conv towers).

Modes: ``frozen`` (the backbone runs without gradients and every weight stays bit-identical),
``last:N`` (the last N blocks and the final norm train), ``full`` (everything trains; block
``i`` of ``depth`` gets ``backbone_lr * layer_decay ** (depth - 1 - i)``, the patch embedding
``backbone_lr * layer_decay ** depth``).

Resume is exact: each epoch's order and flips come from a generator seeded by (seed, epoch),
and the checkpoint holds the trainable weights, AdamW's state, the schedule's step and the
history, so an interrupted run continued with ``resume=True`` ends equal to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from openradio.atomicio import atomic_path, write_text
from openradio.dense.backbone import RadioBackbone, dinov2_block_indices
from openradio.dense.datasets import SegData
from openradio.dense.segment import label_palette
from openradio.eval.probe import LinearSegHead, confusion_iou
from openradio.extras import require
from openradio.formats.official import official_state_dict, save_checkpoint
from openradio.formats.resolve import radio_model
from openradio.inputs.imageio import load_image, tensor_to_uint8
from openradio.runtime import autocast

__all__ = [
    "FinetuneConfig",
    "SegmentationModel",
    "PyramidDecoder",
    "build_segmentation_model",
    "param_groups",
    "finetune_segmentation",
    "FinetuneResult",
    "export_segmenter",
    "load_segmenter",
    "parse_mode",
    "HEADS",
]

HEADS = ("linear", "linear4", "pyramid")
CHECKPOINT = "last.pt"


def parse_mode(mode: str, depth: int) -> int:
    """Number of trainable blocks: 0 (frozen), N (last:N) or depth (full)."""
    if mode == "frozen":
        return 0
    if mode == "full":
        return depth
    if mode.startswith("last:"):
        try:
            n = int(mode[5:])
        except ValueError:
            n = -1
        if 1 <= n <= depth:
            return n
        raise ValueError(f"mode {mode!r}: N must be a number of blocks in 1..{depth}")
    raise ValueError(f"unknown mode {mode!r}; use 'frozen', 'last:N' or 'full'")


@dataclass
class FinetuneConfig:
    num_classes: int
    mode: str = "frozen"
    head: str = "linear"
    resolution: int = 512
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3  # head (and pyramid neck)
    backbone_lr: float = 1e-5  # the last block's; earlier ones decay by layer_decay
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    pyramid_channels: int = 128
    ignore_index: int = 255
    flip: bool = True
    seed: int = 0
    amp: Optional[bool] = None  # None: bf16 autocast on CUDA, float32 elsewhere
    workers: int = 0
    classnames: Optional[list[str]] = None
    version: str = ""

    def check(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; use one of {list(HEADS)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {self.num_classes}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")


class PyramidDecoder(nn.Module):
    """Sum of the pyramid levels upsampled to the finest one, 3x3 conv + BN + ReLU, 1x1 classifier."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        x = levels[0]
        for f in levels[1:]:
            x = x + F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(x))


class SegmentationModel(nn.Module):
    """RADIO + a segmentation head; ``forward(x)`` gives logits (B, K, H, W) at the input's size.
    ``x`` is (B, 3, H, W) in [0, 1] at a supported resolution."""

    def __init__(self, radio, head: str, num_classes: int, trainable_blocks: int = 0, pyramid_channels: int = 128):
        super().__init__()
        depth = len(radio.blocks)
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; use one of {list(HEADS)}")
        self.head_type = head
        self.trainable_blocks = trainable_blocks
        if head == "linear":
            self.backbone = RadioBackbone(radio, out_indices=[-1], pyramid=False)
            self.head = LinearSegHead(radio.embed_dim, num_classes)
        elif head == "linear4":
            self.backbone = RadioBackbone(radio, out_indices=dinov2_block_indices(depth), pyramid=False)
            self.head = LinearSegHead(radio.embed_dim * len(self.backbone.out_indices), num_classes)
        else:
            self.backbone = RadioBackbone(
                radio, out_indices=[-1], pyramid=True, out_channels=pyramid_channels, extra_pool=False
            )
            self.head = PyramidDecoder(pyramid_channels, num_classes)
        radio.requires_grad_(False)
        if trainable_blocks:
            for b in list(radio.blocks)[depth - trainable_blocks :]:
                b.requires_grad_(True)
            radio.model.norm.requires_grad_(True)
            if trainable_blocks == depth:
                radio.requires_grad_(True)
                radio.input_conditioner.requires_grad_(False)
        self.num_classes = num_classes

    @property
    def radio(self):
        return self.backbone.model

    @property
    def frozen(self) -> bool:
        return self.trainable_blocks == 0

    def train(self, mode: bool = True) -> "SegmentationModel":
        super().train(mode)
        if self.frozen:
            self.radio.eval()  # frozen: inference behaviour whatever the head does
        self.radio.patch_generator.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            maps = self.backbone.block_maps(x)
        if self.head_type == "pyramid":
            logits = self.head(list(self.backbone.neck(maps).values()))
        else:
            logits = self.head(torch.cat(maps, dim=1) if len(maps) > 1 else maps[0])
        return F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, image: torch.Tensor, resolution: int, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """(H, W) class indices of a (3, H, W) image in [0, 1], run at ``resolution`` square."""
        x = F.interpolate(
            image[None].float(), size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
        ).clamp(0, 1)
        logits = self(x.to(next(self.parameters()).device))
        return (
            F.interpolate(logits, size=tuple(size or image.shape[-2:]), mode="bilinear", align_corners=False)
            .argmax(1)[0]
            .cpu()
        )

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the RADIO weights: the head and (pyramid) the neck."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.model.")}


def build_segmentation_model(radio, cfg: FinetuneConfig) -> SegmentationModel:
    return SegmentationModel(
        radio, cfg.head, cfg.num_classes, parse_mode(cfg.mode, len(radio.blocks)), cfg.pyramid_channels
    )


def _block_of(name: str, depth: int) -> int:
    """Layer id for LR decay: 0 = patch embedding / positions / prefix tokens, i + 1 = block i,
    depth + 1 = after the blocks (final norm)."""
    if ".blocks." in name or name.startswith("blocks."):
        tail = name.split("blocks.", 1)[1]
        return int(tail.split(".", 1)[0]) + 1
    if "patch_generator" in name or "cls_token" in name or "pos_embed" in name:
        return 0
    return depth + 1


def param_groups(model: SegmentationModel, cfg: FinetuneConfig) -> list[dict]:
    """AdamW groups: the head (+neck) at ``lr``; each trainable backbone layer at ``backbone_lr``
    scaled by ``layer_decay ** (depth - layer)``; no weight decay on biases and norms (1-D)."""
    depth = len(model.radio.blocks)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("backbone.model."):
            layer = min(_block_of(name[len("backbone.model.") :], depth), depth)
            lr = cfg.backbone_lr * cfg.layer_decay ** (depth - layer)
            key = ("backbone", layer, p.ndim <= 1)
        else:
            lr, key = cfg.lr, ("head", 0, p.ndim <= 1)
        g = groups.setdefault(
            key,
            {
                "params": [],
                "lr": lr,
                "weight_decay": 0.0 if p.ndim <= 1 else cfg.weight_decay,
                "name": f"{key[0]}{key[1]}{'-nowd' if key[2] else ''}",
            },
        )
        g["params"].append(p)
    return [groups[k] for k in sorted(groups, key=str)]


def _schedule(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


class _Pairs(torch.utils.data.Dataset):
    """Items (index, flip) of one epoch -> (image, target) resized to the training resolution."""

    def __init__(self, data: SegData, order: list[tuple[int, bool]], resolution: int):
        self.data, self.order, self.res = data, order, resolution

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int):
        i, flip = self.order[j]
        r = self.res
        img = F.interpolate(
            load_image(self.data.images[i])[None], size=(r, r), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp(0, 1)
        t = self.data.target(i)
        t = F.interpolate(t[None, None].float(), size=(r, r), mode="nearest")[0, 0].long()
        if flip:
            img, t = img.flip(-1), t.flip(-1)
        return img, t


@dataclass
class FinetuneResult:
    miou: float
    pixel_accuracy: float
    iou: list[float]
    classnames: list[str]
    history: list[dict] = field(default_factory=list)
    out_dir: Optional[str] = None
    model: Optional[SegmentationModel] = field(default=None, repr=False)


@torch.no_grad()
def evaluate(
    model: SegmentationModel,
    data: SegData,
    resolution: int,
    num_classes: int,
    device,
    amp: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, float, float]:
    """Confusion matrix over ``data`` at the masks' own sizes; returns (per-class IoU, mIoU, pixel acc)."""
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for i in tqdm(range(len(data)), desc="val", unit="image", disable=not progress, leave=False):
        m = data.target(i)
        with autocast(device, amp):
            pred = model.predict(load_image(data.images[i]), resolution, size=m.shape)
        keep = (m != data.ignore_index) & (m >= 0) & (m < num_classes)
        conf += torch.bincount(m[keep] * num_classes + pred[keep], minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    iou, miou = confusion_iou(conf)
    acc = conf.diag().sum().item() / max(conf.sum().item(), 1)
    return iou, float(miou), acc


def _trainable_state(model: SegmentationModel) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if k in names or not k.startswith("backbone.model.")
    }


def finetune_segmentation(
    radio,
    train: SegData,
    val: SegData,
    cfg: FinetuneConfig,
    *,
    out_dir: Optional[str | os.PathLike] = None,
    resume: bool = False,
    device=None,
    progress: bool = True,
    stop_after: Optional[int] = None,
    num_pictures: int = 4,
) -> FinetuneResult:
    """Train ``cfg.head`` (and the backbone per ``cfg.mode``) on ``train``; evaluate on ``val``
    after every epoch. With ``out_dir``: ``last.pt`` each epoch (``resume=True`` continues from
    it), ``metrics.jsonl``, ``predictions.png`` and the export (``head.safetensors``,
    ``head.json``, and ``backbone.pth.tar`` unless frozen). ``stop_after``: end after that many
    epochs of this call (an interruption, for tests)."""
    cfg.check()
    device = torch.device(device) if device is not None else next(radio.parameters()).device
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    step = radio.min_resolution_step
    if cfg.resolution % step:
        raise ValueError(f"resolution {cfg.resolution} must be a multiple of the model's step {step}")
    names = list(cfg.classnames) if cfg.classnames else [str(i) for i in range(cfg.num_classes)]
    if len(names) != cfg.num_classes:
        raise ValueError(f"{len(names)} class names for {cfg.num_classes} classes")
    torch.manual_seed(cfg.seed)
    model = build_segmentation_model(radio, cfg).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, round(cfg.warmup_epochs * steps_per_epoch)))
    out = Path(out_dir) if out_dir is not None else None
    start, history = 0, []
    if resume and out is not None and (out / CHECKPOINT).is_file():
        chk = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        if chk["config"]["head"] != cfg.head or chk["config"]["mode"] != cfg.mode:
            raise ValueError(
                f"{out / CHECKPOINT} is a {chk['config']['head']}/{chk['config']['mode']} run; "
                f"resume it with the same --head and --mode (or use another --out)"
            )
        missing = model.load_state_dict(chk["model"], strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"checkpoint has weights this model lacks: {missing.unexpected_keys[:4]}")
        opt.load_state_dict(chk["optimizer"])
        sched.load_state_dict(chk["scheduler"])
        start, history = int(chk["epoch"]), list(chk["history"])
    loss_fn = nn.CrossEntropyLoss(ignore_index=cfg.ignore_index)
    epochs_run = 0
    for epoch in range(start, cfg.epochs):
        if stop_after is not None and epochs_run >= stop_after:
            break
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(train), generator=g).tolist()
        flips = (torch.rand(len(train), generator=g) < 0.5).tolist() if cfg.flip else [False] * len(train)
        loader = torch.utils.data.DataLoader(
            _Pairs(train, [(i, flips[i]) for i in perm], cfg.resolution),
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=cfg.workers,
        )
        model.train()
        total_loss, seen = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not progress)
        for x, t in bar:
            x, t = x.to(device), t.to(device)
            with autocast(device, amp):
                logits = model(x)
            loss = loss_fn(logits.float(), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(x)
            seen += len(x)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        iou, miou, acc = evaluate(model, val, cfg.resolution, cfg.num_classes, device, amp, progress)
        rec = {
            "epoch": epoch + 1,
            "loss": total_loss / max(seen, 1),
            "miou": miou,
            "pixel_accuracy": acc,
            "iou": {n: (None if v != v else round(float(v), 6)) for n, v in zip(names, iou.tolist())},
        }
        history.append(rec)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {rec['loss']:.4f}  mIoU {miou:.4f}  pixel acc {acc:.4f}")
        epochs_run += 1
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            chk = {
                "epoch": epoch + 1,
                "model": _trainable_state(model),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "history": history,
                "config": _jsonable(cfg),
            }
            with atomic_path(out / CHECKPOINT) as tmp:
                torch.save(chk, tmp)
            write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    last = history[-1] if history else {"miou": float("nan"), "pixel_accuracy": float("nan"), "iou": {}}
    iou_list = [float("nan") if last["iou"].get(n) is None else last["iou"][n] for n in names]
    result = FinetuneResult(
        last["miou"], last["pixel_accuracy"], iou_list, names, history, str(out) if out else None, model
    )
    if out is not None and history and history[-1]["epoch"] == cfg.epochs:
        export_segmenter(model, cfg, out)
        if num_pictures:
            write_prediction_picture(model, val, cfg.resolution, out / "predictions.png", num_pictures, amp=amp)
    return result


def _jsonable(cfg: FinetuneConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


def export_segmenter(model: SegmentationModel, cfg: FinetuneConfig, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``head.safetensors`` (head + neck weights), ``head.json`` (how to rebuild it) and, when the
    backbone trained, ``backbone.pth.tar`` (official format: ``radio_model`` loads it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"head": out / "head.safetensors", "config": out / "head.json"}
    with atomic_path(paths["head"]) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.head_state_dict().items()}, str(tmp))
    meta = _jsonable(cfg)
    if not model.frozen:
        radio = model.radio
        if getattr(radio, "args", None) is None:
            raise ValueError(
                "the fine-tuned backbone has no checkpoint args to export with; load it with openradio.radio_model"
            )
        paths["backbone"] = save_checkpoint(out / "backbone.pth.tar", radio.args, official_state_dict(radio))
        meta["backbone"] = "backbone.pth.tar"
    write_text(paths["config"], json.dumps(meta, indent=2) + "\n")
    return paths


def load_segmenter(out_dir: str | os.PathLike, version: Optional[str] = None, device="cpu") -> SegmentationModel:
    """The fine-tuned model of ``out_dir`` (``head.json`` + ``head.safetensors``), on the exported
    ``backbone.pth.tar`` or, for a frozen run, on ``version`` (default: the one trained on)."""
    out = Path(out_dir)
    meta = json.loads((out / "head.json").read_text())
    source = str(out / meta["backbone"]) if meta.get("backbone") else (version or meta.get("version"))
    if not source:
        raise ValueError(f"{out / 'head.json'} names no backbone; pass version=")
    radio = radio_model(source, text_towers=False)
    model = SegmentationModel(radio, meta["head"], meta["num_classes"], 0, meta.get("pyramid_channels", 128))
    model.resolution = meta["resolution"]
    model.classnames = meta.get("classnames")
    state = load_file(str(out / "head.safetensors"))
    bad = model.load_state_dict(state, strict=False)
    if bad.unexpected_keys or any(not k.startswith("backbone.model.") for k in bad.missing_keys):
        raise ValueError(
            f"{out / 'head.safetensors'} does not match a {meta['head']} head: "
            f"{(bad.unexpected_keys + bad.missing_keys)[:4]}"
        )
    return model.to(device).eval()


def write_prediction_picture(
    model: SegmentationModel, data: SegData, resolution: int, path: Path, n: int = 4, amp: bool = False
) -> Path:
    """Rows of (image, ground truth, prediction) for the first ``n`` images of ``data``."""
    matplotlib = require("matplotlib", "the prediction picture")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # optional: openradio[viz], checked by require() above

    n = min(n, len(data))
    pal = label_palette(model.num_classes)[1:]
    pal = np.concatenate([pal, np.full((256 - len(pal), 3), 255, np.uint8)])  # ignore etc.: white
    device = next(model.parameters()).device
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for r in range(n):
        img = load_image(data.images[r])
        m = data.target(r)
        with autocast(device, amp):
            pred = model.predict(img, resolution, size=m.shape)
        for c, (title, pic) in enumerate(
            (
                ("image", tensor_to_uint8(img)),
                ("ground truth", pal[m.clamp(0, 255).numpy()]),
                ("prediction", pal[pred.numpy()]),
            )
        ):
            axes[r][c].imshow(pic)
            axes[r][c].set_axis_off()
            if r == 0:
                axes[r][c].set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path
