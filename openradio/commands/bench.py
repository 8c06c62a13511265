"""`openradio bench`: inference throughput and latency per resolution, as ratios to a same-process baseline."""

from __future__ import annotations

import argparse

import openradio
from openradio.commands.common import CLIError, add_model_arguments, parse_adaptors

HELP = "measure inference throughput per resolution against a baseline run in the same process"
EXAMPLES = """\
  openradio bench --version radio_v2.5-b                                   # vs plain timm ViT-B/16
  openradio bench --version radio_v2.5-b --vitdet-window 16 --resolutions 1024,2048 --batch-size 2
                                                                           # ViTDet vs global attention
  openradio bench --version radio_v2.5-l --device cuda --amp --out bench.csv

baselines (--baseline): 'timm' = a plain timm ViT with the same name and model_kwargs as the
checkpoint (learned position embedding, one class token, no CPE, no registers); 'global' = the
same model with global attention (default when --vitdet-window is given); 'none'.
Model and baseline calls alternate on the same input; 'speed ratio' is the median over those
call pairs of baseline time / model time (>1: the model is faster), 'time ratio' its inverse.
Absolute numbers depend on the machine and its load: compare the ratios. Latencies are medians
(--stat min: minima) of --iters calls after --warmup untimed ones (CUDA synchronised)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, adaptor=False, resolution=False)
    p.add_argument(
        "--adaptor",
        action="append",
        default=None,
        metavar="NAME",
        help="include this adaptor's heads in the timed forward (repeat or comma-separate)",
    )
    p.add_argument(
        "--resolutions",
        "--resolution",
        dest="resolutions",
        default="224,512,1024",
        metavar="R1,R2,...",
        help="comma-separated square input sizes (rounded to the model's step); default 224,512,1024",
    )
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per forward pass (default 8)")
    p.add_argument(
        "--baseline",
        choices=["timm", "global", "none"],
        default=None,
        help="what to compare with (default: global with --vitdet-window, else timm)",
    )
    p.add_argument(
        "--iters", type=int, default=10, metavar="N", help="timed forward passes (model/baseline pairs) per resolution"
    )
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed forward passes first")
    p.add_argument(
        "--stat",
        choices=["median", "min"],
        default="median",
        help="per-call time to report: median (typical) or min (least disturbed by other load)",
    )
    p.add_argument("--out", default=None, metavar="FILE.csv", help="also write the rows as CSV")


def run(args: argparse.Namespace) -> int:
    from openradio.eval.throughput import bench_model, format_table, write_rows_csv
    from openradio.runtime import parse_int_list, pick_device

    resolutions = parse_int_list(args.resolutions, "--resolutions") if args.resolutions else None
    for flag in ("batch_size", "iters"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        raise CLIError(f"--warmup must be >= 0, got {args.warmup}")
    baseline = args.baseline or ("global" if args.vitdet_window is not None else "timm")
    if baseline == "global" and args.vitdet_window is None:
        raise CLIError("--baseline global compares ViTDet with global attention: also give --vitdet-window W")
    device = pick_device(args.device)
    adaptors = parse_adaptors(args.adaptor)

    model = openradio.radio_model(
        args.version,
        adaptor_names=adaptors or None,
        vitdet_window_size=args.vitdet_window,
        progress=not args.no_progress,
    )
    model = model.to(device).eval()
    rows = bench_model(
        model,
        resolutions,
        batch_size=args.batch_size,
        baseline=baseline,
        vitdet_window=args.vitdet_window,
        iters=args.iters,
        warmup=args.warmup,
        device=device,
        amp=args.amp,
        stat=args.stat,
    )
    name = getattr(model, "version", None) or args.version
    amp = " (bf16 autocast)" if args.amp else ""
    print(
        f"{name} on {device}{amp}: {args.stat} of {args.iters} timed passes after "
        f"{args.warmup} warm-up; speed ratio = median of per-pair baseline time / model time"
    )
    print(format_table(rows))
    if args.out:
        print(f"wrote {write_rows_csv(rows, args.out)}")
    return 0
