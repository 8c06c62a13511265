#!/usr/bin/env python
"""Inference speed of openradio, as ratios to baselines measured in the same process.

Two comparisons, each at several square resolutions:

1. openradio ``RADIOModel`` (global attention) against a plain timm ViT with the same name and
   ``model_kwargs`` (same width, depth, heads, patch size) at the same input size. The ratio shows
   what RADIO adds on top of the plain ViT: the CPE position embedding (a large learned grid
   resampled to each input size on every call), the extra prefix tokens (one class token per
   teacher plus registers) and the input normalisation.
2. The same model in ViTDet mode (windowed attention in most blocks) against itself with global
   attention: what windows buy as the token count grows.

No absolute-time expectations: timings vary with the machine and its load; the ratios are the
result. Runs on CPU in a few minutes with the default small random checkpoint (built in a
temporary folder, no download); ``--version`` takes a released name or a checkpoint file.

    python benchmarks/bench_inference.py
    python benchmarks/bench_inference.py --version radio_v2.5-b --device cuda --resolutions 512,1024,2048
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# runnable from a checkout without installing the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import openradio  # noqa: E402
from openradio.eval.throughput import bench_model, format_table  # noqa: E402
from openradio.runtime import platform_line  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--version",
        default=None,
        help="released version or checkpoint file (default: a random ViT-Ti-sized checkpoint "
        "made in a temporary folder)",
    )
    p.add_argument("--embed-dim", type=int, default=192, help="width of the made checkpoint (default 192: ViT-Ti)")
    p.add_argument("--depth", type=int, default=12, help="blocks of the made checkpoint")
    p.add_argument("--heads", type=int, default=3, help="attention heads of the made checkpoint")
    p.add_argument("--resolutions", default="256,512,768", help="comma-separated square input sizes")
    p.add_argument("--vitdet-window", type=int, default=8, help="ViTDet window side in patches (0: skip ViTDet)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--iters", type=int, default=9, help="timed model/baseline call pairs per cell")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--stat",
        choices=["min", "median"],
        default="min",
        help="per-call time: min (default; least disturbed by other processes) or median",
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    return p.parse_args(argv)


def load_model(args: argparse.Namespace, tmp: str):
    if args.version:
        return openradio.radio_model(args.version), args.version
    from openradio.verify.testing import make_tiny_checkpoint

    # cpe_max_size 2048 as in the released v2.5 models: the CPE grid that is resampled per call
    # has the released size, so its share of the cost is representative for this width
    path = make_tiny_checkpoint(
        Path(tmp) / "bench.pth.tar",
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.heads,
        head_hidden=64,
        cpe_max_size=2048,
    )
    label = f"random ViT (dim {args.embed_dim}, depth {args.depth}, heads {args.heads}, patch 16, CPE 2048)"
    return openradio.radio_model(str(path)), label


def main(argv=None) -> int:
    args = parse_args(argv)
    resolutions = [int(r) for r in args.resolutions.split(",") if r.strip()]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(platform_line(device))
    common = dict(
        batch_size=args.batch_size,
        iters=args.iters,
        warmup=args.warmup,
        device=device,
        amp=args.amp,
        stat=args.stat,
        progress=False,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, label = load_model(args, tmp)
    model = model.to(device).eval()
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores visible)"
    )
    print(f"model: {label}")
    print(
        f"device: {where}; torch {torch.__version__}; batch {args.batch_size}; "
        f"latency: {args.stat} of {args.iters} passes; "
        f"ratio: median of {args.iters} alternating call pairs{'; bf16 autocast' if args.amp else ''}"
    )
    print(f"prefix tokens: RADIO {model.num_prefix_tokens} (class tokens + registers), plain timm ViT 1\n")

    print("1) RADIOModel vs plain timm ViT of the same config (speed ratio < 1: RADIO is slower)")
    print(format_table(bench_model(model, resolutions, baseline="timm", **common)))
    if args.vitdet_window:
        print(
            f"\n2) ViTDet (window {args.vitdet_window} patches) vs global attention, same model "
            "(speed ratio > 1: windows are faster)"
        )
        print(
            format_table(bench_model(model, resolutions, baseline="global", vitdet_window=args.vitdet_window, **common))
        )
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
