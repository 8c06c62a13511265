"""`openradio finetune seg`: fine-tune RADIO for semantic segmentation (frozen, last N blocks or full)."""

from __future__ import annotations

import argparse

from openradio.commands.common import CLIError, add_model_arguments

HELP = "fine-tune for segmentation: `finetune seg` (ADE20K, VOC, Cityscapes or image+mask folders; mIoU per epoch)"
EXAMPLES = """\
  openradio finetune seg --version radio_v2.5-b --data /data/ADEChallengeData2016 --out runs/ade-linear
  openradio finetune seg --version radio_v2.5-l --data /data/VOCdevkit/VOC2012 --head linear4 --epochs 20 --out runs/voc
  openradio finetune seg --version radio_v2.5-b --data /data/cityscapes --head pyramid --mode full \\
      --backbone-lr 2e-5 --layer-decay 0.75 --resolution 768 --out runs/cs-full
  openradio finetune seg --version model.pth.tar --train seg/train --val seg/val --num-classes 5 --out runs/mine
data: --data ROOT with --layout auto|ade20k|voc|cityscapes|folders (auto: recognised from the folder
names; 'folders' = ROOT/train and ROOT/val, each images/ + masks/ as `probe seg` reads), or
--train DIR --val DIR (two image+mask folders). Rerun the same command with --resume to continue
from OUT/last.pt. The result loads with openradio.dense.finetune.load_segmenter(OUT).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="task", metavar="TASK", required=True)
    seg = sub.add_parser(
        "seg",
        help="semantic segmentation",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + EXAMPLES,
    )
    add_model_arguments(seg, adaptor=False, resolution=False)
    seg.add_argument("--data", default=None, metavar="ROOT", help="data set root (see --layout)")
    seg.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "ade20k", "voc", "cityscapes", "folders"],
        help="on-disk layout of --data (default: recognised from the folder names)",
    )
    seg.add_argument("--train", default=None, metavar="DIR", help="image+mask folder for training (instead of --data)")
    seg.add_argument("--val", default=None, metavar="DIR", help="image+mask folder for evaluation (with --train)")
    seg.add_argument("--out", required=True, metavar="DIR", help="checkpoints, metrics, pictures and the export")
    seg.add_argument(
        "--mode",
        default="frozen",
        metavar="frozen|last:N|full",
        help="what trains besides the head: nothing (default), the last N blocks, or everything",
    )
    seg.add_argument(
        "--head",
        default="linear",
        choices=["linear", "linear4", "pyramid"],
        help="linear (last block), linear4 (four blocks concatenated) or pyramid (ViTDet neck + decoder)",
    )
    seg.add_argument(
        "--resolution", type=int, default=512, metavar="PX", help="square training/eval side (default 512)"
    )
    seg.add_argument("--epochs", type=int, default=10)
    seg.add_argument("--batch-size", type=int, default=8)
    seg.add_argument("--lr", type=float, default=1e-3, help="head learning rate (default 1e-3)")
    seg.add_argument("--backbone-lr", type=float, default=1e-5, help="last block's learning rate (default 1e-5)")
    seg.add_argument("--layer-decay", type=float, default=0.75, help="layer-wise LR decay per block (default 0.75)")
    seg.add_argument("--weight-decay", type=float, default=0.05)
    seg.add_argument("--warmup-epochs", type=float, default=1.0)
    seg.add_argument("--pyramid-channels", type=int, default=128, help="width of the pyramid head (default 128)")
    seg.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="default: 150 / 21 / 19 for ADE20K / VOC / Cityscapes, else the largest mask value + 1",
    )
    seg.add_argument("--classnames", default=None, metavar="FILE", help="one class name per line")
    seg.add_argument("--ignore-index", type=int, default=255)
    seg.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    seg.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    seg.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _num_classes(train, val, ignore: int) -> int:
    if train.num_classes:
        return train.num_classes
    top = -1
    for d in (train, val):
        for i in range(len(d)):
            m = d.target(i)
            m = m[m != ignore]
            if m.numel():
                top = max(top, int(m.max()))
    if top < 0:
        raise ValueError("every mask pixel is the ignore index; nothing to learn")
    return top + 1


def run(args: argparse.Namespace) -> int:
    from openradio import radio_model
    from openradio.dense.datasets import read_split
    from openradio.dense.finetune import FinetuneConfig, finetune_segmentation, parse_mode
    from openradio.eval.data import read_classnames
    from openradio.runtime import pick_device, supported_resolution

    if args.data and (args.train or args.val):
        raise CLIError("pass either --data ROOT (with --layout) or --train DIR --val DIR, not both")
    if args.data:
        train, val = read_split(args.data, args.layout, "train"), read_split(args.data, args.layout, "val")
    elif args.train and args.val:
        train, val = read_split(args.train, "folders", "train"), read_split(args.val, "folders", "val")
    else:
        raise CLIError(
            "no data: pass --data ROOT (ADE20K, VOC, Cityscapes or train/+val/ folders) or --train and --val"
        )
    device = pick_device(args.device)
    model = radio_model(
        args.version, vitdet_window_size=args.vitdet_window, text_towers=False, progress=not args.no_progress
    ).to(device)
    try:
        parse_mode(args.mode, len(model.blocks))
    except ValueError as e:
        raise CLIError(f"--mode: {e}") from None
    num_classes = args.num_classes or _num_classes(train, val, args.ignore_index)
    classnames = read_classnames(args.classnames) or train.classnames
    if classnames and len(classnames) != num_classes:
        classnames = None if not args.classnames else classnames
    res = supported_resolution(model, args.resolution)
    cfg = FinetuneConfig(
        num_classes=num_classes,
        mode=args.mode,
        head=args.head,
        resolution=res,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        backbone_lr=args.backbone_lr,
        layer_decay=args.layer_decay,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        pyramid_channels=args.pyramid_channels,
        ignore_index=args.ignore_index,
        flip=not args.no_flip,
        seed=args.seed,
        amp=True if args.amp else None,
        workers=args.workers,
        classnames=list(classnames) if classnames else None,
        version=args.version,
    )
    print(
        f"{len(train)} train / {len(val)} val images ({train.layout}), {num_classes} classes, head {args.head}, "
        f"mode {args.mode}, resolution {res}, device {device}"
    )
    r = finetune_segmentation(
        model, train, val, cfg, out_dir=args.out, resume=args.resume, device=device, progress=not args.no_progress
    )
    for name, iou in zip(r.classnames, r.iou):
        print(f"  {name:>20s}  IoU {'   n/a' if iou != iou else f'{iou:.4f}'}")
    print(
        f"mIoU {r.miou:.4f}  pixel acc {r.pixel_accuracy:.4f}; wrote {args.out} (head.safetensors, head.json, "
        "metrics.jsonl, predictions.png)"
    )
    return 0
