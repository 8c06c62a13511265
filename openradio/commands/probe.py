"""`openradio probe seg|cls`: frozen-backbone linear probes (segmentation on patch features, classification
on summaries)."""

from __future__ import annotations

import argparse
from pathlib import Path

from openradio.commands.common import add_model_arguments

HELP = "linear probes on frozen features: `probe seg` (per-class IoU, mIoU) and `probe cls` (top-1/top-5)"
EXAMPLES = """\
  openradio probe seg --version radio_v2.5-b --train ade/train --val ade/val --resolution 512 --num-classes 150
  openradio probe seg --version model.pth.tar --adaptor sam --train seg/train --val seg/val --out results/seg
  openradio probe cls --version radio_v2.5-b --train imagenet-subset/train --val imagenet-subset/val
segmentation folders hold images/<name>.<jpg|png> and masks/<name>.png (single-channel class indices,
255 = ignore); classification folders are ImageFolders (DIR/<class>/<image>) or 'path<TAB>label' files.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="probe", metavar="KIND", required=True)
    seg = sub.add_parser(
        "seg",
        help="linear semantic segmentation probe on spatial features",
        description="BatchNorm + 1x1 conv on frozen spatial features, cross-entropy on bilinearly "
        "upsampled logits; per-class IoU and mIoU at the masks' own resolution.",
    )
    cls = sub.add_parser(
        "cls",
        help="linear classification probe on summaries",
        description="One linear layer on standardised frozen summaries; top-1/top-5 accuracy.",
    )
    for q, res, epochs, bs in ((seg, 512, 20, 16), (cls, 224, 100, 256)):
        add_model_arguments(q, adaptor=True, resolution=False)
        q.add_argument("--train", required=True, metavar="PATH", help="training data")
        q.add_argument("--val", required=True, metavar="PATH", help="evaluation data")
        q.add_argument(
            "--resolution",
            type=int,
            default=res,
            metavar="PX",
            help=f"square input side in pixels (default {res}; rounded to the model's step)",
        )
        q.add_argument("--epochs", type=int, default=epochs, help=f"probe training epochs (default {epochs})")
        q.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate, one-cycle (default 1e-3)")
        q.add_argument("--weight-decay", type=float, default=1e-4)
        q.add_argument("--batch-size", type=int, default=bs, help=f"probe batch size (default {bs})")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--out", default=None, metavar="DIR", help="write a CSV of the results and the probe head here")
        q.add_argument("--no-progress", action="store_true", help="hide progress bars")
    seg.add_argument("--num-classes", type=int, default=None, help="default: largest class index in the masks + 1")
    seg.add_argument("--ignore-index", type=int, default=255, help="mask value that counts nowhere (default 255)")
    seg.add_argument("--classnames", default=None, metavar="FILE", help="one class name per line")
    seg.add_argument(
        "--max-cache-gb",
        type=float,
        default=16.0,
        help="limit for the cached training feature maps (float16; default 16 GiB)",
    )
    cls.add_argument("--workers", type=int, default=0, help="data-loading worker processes")


def run(args: argparse.Namespace) -> int:
    import torch

    from openradio import radio_model
    from openradio.eval.data import read_classnames, write_csv
    from openradio.runtime import model_label, pick_device, supported_resolution

    device = pick_device(args.device)
    progress = not args.no_progress
    adaptor = None if args.adaptor in (None, "backbone") else args.adaptor
    model = (
        radio_model(
            args.version,
            adaptor_names=[adaptor] if adaptor else None,
            text_towers=False,
            vitdet_window_size=args.vitdet_window,
            progress=progress,
        )
        .to(device)
        .eval()
    )
    res = supported_resolution(model, args.resolution)
    name = model_label(args.version)
    common = dict(
        resolution=res,
        adaptor=adaptor,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        device=device,
        amp=args.amp,
        progress=progress,
        seed=args.seed,
    )
    out = Path(args.out) if args.out else None
    if args.probe == "seg":
        from openradio.eval.probe import probe_segmentation, read_segmentation_folder

        r = probe_segmentation(
            model,
            read_segmentation_folder(args.train),
            read_segmentation_folder(args.val),
            num_classes=args.num_classes,
            classnames=read_classnames(args.classnames),
            ignore_index=args.ignore_index,
            max_cache_gb=args.max_cache_gb,
            **common,
        )
        for cname, iou in zip(r.classnames, r.iou):
            print(f"  {cname:>20s}  IoU {'   n/a' if iou != iou else f'{iou:.4f}'}")
        print(
            f"{name}  {adaptor or 'backbone'}  res {r.resolution}  mIoU {r.miou:.4f}  pixel acc "
            f"{r.pixel_accuracy:.4f}  ({r.num_train} train / {r.num_val} val)"
        )
        if out:
            write_csv(
                out / "probe_seg.csv",
                ["Class", "IoU"],
                [(c, "" if i != i else f"{i:.4f}") for c, i in zip(r.classnames, r.iou)] + [("mIoU", f"{r.miou:.4f}")],
            )
            torch.save(r.head.state_dict(), out / "probe_seg_head.pt")
            print(f"wrote {out / 'probe_seg.csv'}")
    else:
        from openradio.eval.data import read_labelled_images
        from openradio.eval.probe import probe_classification

        r = probe_classification(
            model, read_labelled_images(args.train), read_labelled_images(args.val), num_workers=args.workers, **common
        )
        print(
            f"{name}  {adaptor or 'backbone'} summary  res {r.resolution}  linear top-1 {r.top1:.4f}  "
            f"top-5 {r.top5:.4f}  ({r.num_train} train / {r.num_val} val)"
        )
        if out:
            write_csv(
                out / "probe_cls.csv",
                ["Class", "Accuracy"],
                [(c, f"{a:.4f}") for c, a in zip(r.classnames, r.per_class)] + [("top-1", f"{r.top1:.4f}")],
            )
            torch.save(r.head.state_dict(), out / "probe_cls_head.pt")
            print(f"wrote {out / 'probe_cls.csv'}")
    return 0
