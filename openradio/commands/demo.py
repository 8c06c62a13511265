"""`openradio demo`: distil a small student offline (or load a released model), evaluate, write a report."""

from __future__ import annotations

import argparse

from openradio.commands.common import CLIError

HELP = "end-to-end demo: distil a small student on bundled photos (or load a release), evaluate, write a report"
EXAMPLES = """\
  openradio demo                                   # offline: ~2 min on 2 CPU cores, writes demo-report/
  openradio demo --out /tmp/demo --steps 20        # shorter training
  openradio demo --version radio_v2.5-b            # a released model and its real DINOv2 teacher (downloads)

offline, the demo trains with the tiny v2.5 recipe (four small random teachers of the real
architectures: open_clip CLIP and SigLIP, timm DINOv2 and SAM; two partitions, SAM mosaic,
PHI-S), exports OUT/model.pth.tar, and evaluates it on held-out photographs: mode-switching
curves, PCA feature pictures at several resolutions, throughput vs. a timm ViT, training
curves. The report is OUT/report.html (and report.md), with CSVs and PNGs next to it."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-report", metavar="DIR", help="report folder (default demo-report)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="training steps for the offline demo (default 300; the tiny recipe itself has 60)",
    )
    p.add_argument(
        "--version",
        default=None,
        metavar="NAME_OR_PATH",
        help="evaluate a released model (e.g. radio_v2.5-b) or a local checkpoint instead of training",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--tiny-teacher",
        action="store_true",
        help="with --version: compare with a small random teacher instead of the released one (dry run)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and messages")


def run(args: argparse.Namespace) -> int:
    from openradio.demo import run_demo

    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    if args.steps is not None and args.version:
        raise CLIError("--steps applies to the offline demo's training; drop it with --version")
    if args.tiny_teacher and not args.version:
        raise CLIError("--tiny-teacher only applies with --version (the offline demo's teachers are already tiny)")
    run_demo(
        args.out,
        steps=args.steps,
        version=args.version,
        device=args.device,
        progress=not args.no_progress,
        tiny_teacher=args.tiny_teacher,
    )
    return 0
