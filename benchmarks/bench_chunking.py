"""CPU inference: the whole batch in one pass through the blocks vs groups of whole images.

``model.cpu_chunk_tokens`` (default ``openradio.model.radio.CPU_CHUNK_TOKENS``) makes CPU
inference run the blocks on groups of images of at most that many tokens, so a block's
activations stay in the CPU caches. This script times one batch at several settings
(interleaved, median over rounds), checks that every setting gives the same outputs bit for bit
as one pass (it stops if not), and prints MFU against a 2048^3 float32 ``torch.mm`` timed in the
same rounds.

    python benchmarks/bench_chunking.py --threads 2 --resolution 512 --batch 8 --limits 0,1100,2100,4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from openradio.runtime import platform_line

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compare import SHAPES, build, model_flops, seconds  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="b16", choices=sorted(SHAPES))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--limits",
        default="0,1100,2100,4096",
        help="cpu_chunk_tokens settings to compare (0: the whole batch in one pass)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(platform_line())
    limits = [int(v) for v in a.limits.split(",")]
    dim, depth, _ = SHAPES[a.shape]
    model, _, _ = build(a.shape, Path(tempfile.mkdtemp()))
    x = torch.rand(a.batch, 3, a.resolution, a.resolution)
    mm_a, mm_b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times: dict[int, list[float]] = {c: [] for c in limits}
    mm: list[float] = []
    tokens = (a.resolution // 16) ** 2 + model.num_prefix_tokens
    print(
        f"torch {torch.__version__}; {a.threads} thread(s); {a.shape} at {a.resolution} px, batch {a.batch} "
        f"({tokens} tokens per image); median of {a.rounds} interleaved rounds"
    )
    with torch.inference_mode():
        model.cpu_chunk_tokens = 0
        ref = model(x)
        for c in limits:
            model.cpu_chunk_tokens = c
            out = model(x)
            if not (torch.equal(out.summary, ref.summary) and torch.equal(out.features, ref.features)):
                print(f"cpu_chunk_tokens={c}: outputs differ from one pass")
                return 1
        print("every setting gives the one-pass outputs bit for bit")
        for r in range(a.rounds):
            mm.append(min(seconds(lambda: torch.mm(mm_a, mm_b)) for _ in range(3)))
            for c in limits if r % 2 == 0 else limits[::-1]:
                model.cpu_chunk_tokens = c
                times[c].append(seconds(lambda: model(x)))
    flops = model_flops(dim, depth, 16, a.resolution, a.batch, model.num_prefix_tokens, model._schedule(), None)
    peak = 2 * 2048**3 / statistics.median(mm)
    print(f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    base = statistics.median(times[limits[0]])
    for c in limits:
        t = statistics.median(times[c])
        per = "whole batch" if not c else f"{max(1, c // tokens)} image(s) per pass"
        print(
            f"cpu_chunk_tokens {c:6d} ({per:>20}): {t:7.2f} s  MFU {100 * flops / t / peak:5.1f} %  "
            f"x{base / t:.2f} vs cpu_chunk_tokens={limits[0]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
