"""bf16 weights on a native-bf16 CPU: the fused blocks with packed weights vs plain weights, one process.

``openradio.model.fused_cpu`` hands oneDNN each Linear's weight once in its own layout
(``PACK_WEIGHTS``); this times the same bf16 model both ways, alternating every round (order
reversed every round), and prints the median of ``plain / packed`` (> 1: packing is faster) and
whether the outputs are the same bits.

    python benchmarks/bench_prepack.py                       # B/16, 224 and 512, batch 1 and 8
    python benchmarks/bench_prepack.py --threads 1,2 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_compare  # noqa: E402  (the same model the comparison builds)

from openradio.model import fused_cpu  # noqa: E402
from openradio.runtime import platform_line  # noqa: E402


def ab(model, x, rounds: int) -> tuple[float, float, bool]:
    """(median packed seconds, median plain / packed, same bits) for one input."""
    times = {True: [], False: []}
    outs = {}
    with torch.inference_mode():
        for flag in (True, False):  # warm-up, and the outputs to compare
            fused_cpu.PACK_WEIGHTS = flag
            outs[flag] = model(x).features
        for r in range(rounds):
            for flag in (True, False) if r % 2 == 0 else (False, True):
                fused_cpu.PACK_WEIGHTS = flag
                t0 = time.perf_counter()
                model(x)
                times[flag].append(time.perf_counter() - t0)
    fused_cpu.PACK_WEIGHTS = True
    ratio = statistics.median(p / q for p, q in zip(times[False], times[True]))
    return statistics.median(times[True]), ratio, bool(torch.equal(outs[True], outs[False]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resolutions", default="224,512")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="", help="comma-separated torch thread counts (default: torch's)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--shape", default="b16", choices=sorted(bench_compare.SHAPES))
    a = ap.parse_args(argv)
    print(platform_line())
    if not fused_cpu.onednn_bf16_matmuls():
        print("oneDNN has no bf16 matmuls on this CPU (no AVX512-BF16/AMX): nothing to compare")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model, _, _ = bench_compare.build(a.shape, Path(tmp))
        model = model.set_compute_dtype(torch.bfloat16).eval()
        print(f"{'thr':>3} {'res':>5} {'bs':>3} {'packed ms':>10} {'plain/packed':>13} {'same bits':>9}")
        for threads in [int(t) for t in a.threads.split(",") if t] or [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            for res in [int(r) for r in a.resolutions.split(",")]:
                for bs in [int(b) for b in a.batches.split(",")]:
                    t, ratio, same = ab(model, torch.rand(bs, 3, res, res), a.rounds)
                    print(
                        f"{threads:3d} {res:5d} {bs:3d} {t * 1e3:10.0f} {'x%.3f' % ratio:>13} {str(same):>9}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
