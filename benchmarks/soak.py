"""Soak test (run by hand): many forward passes at mixed input sizes, batch sizes and modes, with
the process's memory at the start and the end. A leak (a cache keyed by input size that never
empties, tensors kept alive across calls) shows as memory growing with the number of calls.

    .venv/bin/python benchmarks/soak.py                      # a small random checkpoint, CPU, ~2 min
    .venv/bin/python benchmarks/soak.py --version radio_v2.5-b --device cuda --iters 2000

Prints resident memory (RSS; and CUDA memory on a GPU) after a warm-up round that has seen every
size once, then every --report calls, and the growth from warm-up to the end.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openradio.runtime import platform_line


def rss_mib() -> float:
    """Current resident set size (Linux /proc), in MiB; peak RSS elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", default=None, help="released name or checkpoint (default: a small random one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--report", type=int, default=100, help="print memory every N calls")
    p.add_argument("--max-side", type=int, default=256, help="largest input side in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(platform_line(args.device))

    import openradio
    from openradio.verify.testing import make_tiny_checkpoint

    tmp = None
    version = args.version
    if version is None:
        tmp = tempfile.TemporaryDirectory()
        version = str(make_tiny_checkpoint(Path(tmp.name) / "soak.pth.tar", embed_dim=96, depth=4, num_heads=3))
    device = torch.device(args.device)
    global_model = openradio.radio_model(version, adaptor_names=["clip", "sam"], progress=False).to(device).eval()
    windowed = (
        openradio.radio_model(version, adaptor_names=["clip", "sam"], vitdet_window_size=2, progress=False)
        .to(device)
        .eval()
    )
    step = global_model.min_resolution_step
    sides = list(range(step, args.max_side + 1, step))
    rng = random.Random(args.seed)

    def one_call(i: int, h: int, w: int) -> None:
        b = rng.choice([1, 2, 4])
        x = torch.rand(b, 3, h, w, device=device)
        with torch.inference_mode():
            if i % 5 == 4 and h % (2 * step) == 0 and w % (2 * step) == 0:
                out = windowed(x)  # ViTDet
            elif i % 7 == 6:
                out = global_model.forward_intermediates(x, indices=[1, -1], output_fmt="NCHW")
            else:
                out = global_model(x, feature_fmt=rng.choice(["NLC", "NCHW"]))
        del out

    def mem() -> str:
        s = f"RSS {rss_mib():8.1f} MiB"
        if device.type == "cuda":
            s += f" | CUDA allocated {torch.cuda.memory_allocated(device) / 2**20:8.1f} MiB"
        return s

    start_rss = rss_mib()
    print(f"{version}: {len(sides)} sides from {sides[0]} to {sides[-1]} px, {args.iters} calls on {device}")
    print(f"start (model loaded)         {mem()}")
    for i, h in enumerate(sides):  # warm-up: every height once, with random widths
        one_call(i, h, rng.choice(sides))
    gc.collect()
    warm_rss = rss_mib()
    print(f"after warm-up ({len(sides)} calls)    {mem()}")
    t = time.perf_counter()
    for i in range(1, args.iters + 1):
        one_call(i, rng.choice(sides), rng.choice(sides))
        if i % args.report == 0:
            gc.collect()
            print(f"after {i:6d} calls           {mem()}")
    gc.collect()
    end_rss = rss_mib()
    print(
        f"end: {args.iters} calls in {time.perf_counter() - t:.1f} s; RSS start {start_rss:.1f} MiB, after "
        f"warm-up {warm_rss:.1f} MiB, end {end_rss:.1f} MiB (growth since warm-up {end_rss - warm_rss:+.1f} MiB)"
    )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
