"""Where a bf16 attention core's time goes on this CPU, and the MFU it leaves a ViT.

For each head dim at equal FLOPs (heads x head dim = the width), at each thread count, timed in
alternating rounds beside a bf16 x bf16 2048^3 ``torch.mm`` (the matmul peak):

* ``sdpa``: ATen's fused ``F.scaled_dot_product_attention`` (the kernel openradio, timm and
  transformers all call on a CPU), in ns per attention score per core and in % of the peak;
* ``matmuls``: the two matmuls alone (Q K^T and P V as bf16 ``torch.mm``, one head at a time so
  the scores stay in cache);
* ``exp`` and ``softmax``: the float32 work a softmax needs per score, on an in-cache tile of
  scores (``torch.exp``: the least a kernel must do per score; ``torch.softmax``: ATen's row
  softmax with its max and sum);
* with ``--flex``: ``torch.compile(flex_attention)`` (needs a C++ compiler; compile time printed).

Then, for a ViT of that width and depth at ``--res``, the attention share of the FLOPs and the
attention speed a model needs for ``--target`` MFU when everything else runs at 100 / 90 / 80 % of
the peak, beside what ATen's kernel gives and what a kernel made of ATen's matmuls and exp could
give at best (their times added: no overlap; or the larger of the two: perfect overlap).

    python benchmarks/bench_attention.py                      # B/16 width, 512 px, hd 64/128/256
    python benchmarks/bench_attention.py --threads 1,2 --flex
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_compare  # noqa: E402  (the model FLOP count and timer the comparison uses)

from openradio.runtime import platform_line  # noqa: E402

seconds = bench_compare.seconds
PATCH, PREFIX = 16, 8  # a RADIO B/16 or L/16: 16 px patches, 8 prefix tokens


def tokens(res: int, patch: int = PATCH, prefix: int = PREFIX) -> int:
    return (res // patch) ** 2 + prefix


def attention_share(res: int, width: int, depth: int, patch: int = PATCH, prefix: int = PREFIX) -> float:
    """The attention core's share of a global-attention ViT's FLOPs (QK^T and PV: 4 n^2 d per block)."""
    n = tokens(res, patch, prefix)
    total = bench_compare.model_flops(width, depth, patch, res, 1, prefix, [False] * depth, None)
    return depth * 4 * n * n * width / total


def needed_fraction(share: float, target: float, rest: float) -> float | None:
    """The attention speed (fraction of the matmul peak) at which a model whose attention is
    ``share`` of its FLOPs and whose rest runs at ``rest`` of the peak reaches ``target`` MFU:
    ``target = 1 / (share / a + (1 - share) / rest)``, solved for ``a``. None: not reachable with
    the attention core at or below the matmul peak (the rest is too slow)."""
    room = 1 / target - (1 - share) / rest
    return share / room if room > 0 and share / room <= 1 else None


def mfu_with(share: float, attention: float, rest: float) -> float:
    """The MFU of that model with its attention at ``attention`` of the peak."""
    return 1 / (share / attention + (1 - share) / rest)


def kernels(batch: int, heads: int, n: int, hd: int, flex: bool):
    """The timed callables for one head dim, and the score count each handles."""
    q, k, v = (torch.randn(batch, heads, n, hd, dtype=torch.bfloat16) for _ in range(3))
    fns = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
    kt = k.transpose(-1, -2).contiguous()
    s = torch.empty(n, n, dtype=torch.bfloat16)
    o = torch.empty(n, hd, dtype=torch.bfloat16)

    def matmuls():
        for b in range(batch):
            for h in range(heads):
                torch.mm(q[b, h], kt[b, h], out=s)
                torch.mm(s, v[b, h], out=o)

    fns["matmuls"] = matmuls
    scores = batch * heads * n * n
    rows = max(1, (1 << 18) // n)  # a float32 tile of about 1 MiB: in cache
    tile = torch.randn(rows, n)
    buf = torch.empty_like(tile)
    reps = max(1, scores // tile.numel())

    def exp():
        for _ in range(reps):
            torch.exp(tile, out=buf)

    def softmax():
        for _ in range(reps):
            torch.softmax(tile, -1)

    fns["exp"], fns["softmax"] = exp, softmax
    counts = {"sdpa": scores, "matmuls": scores, "exp": reps * tile.numel(), "softmax": reps * tile.numel()}
    if flex:
        try:
            from torch.nn.attention.flex_attention import flex_attention

            fa = torch.compile(flex_attention)
            t0 = time.perf_counter()
            fa(q, k, v)
            print(f"    flex_attention compiled in {time.perf_counter() - t0:.1f} s", flush=True)
            fns["flex"] = lambda: fa(q, k, v)
            counts["flex"] = scores
        except Exception as e:  # noqa: BLE001  (a missing compiler is reported, not fatal)
            print(f"    flex_attention not run: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
    return fns, counts


def measure(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per callable, with the bf16 matmul peak (FLOP/s) timed in the same rounds."""
    a, b = torch.randn(2048, 2048, dtype=torch.bfloat16), torch.randn(2048, 2048, dtype=torch.bfloat16)
    fns = {"peak": lambda: torch.mm(a, b), **fns}
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            times[k].append(min(seconds(fns[k]) for _ in range(2)) if k == "peak" else seconds(fns[k]))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["peak"] = 2 * 2048**3 / out["peak"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--res", type=int, default=512, help="image side for the token count and the FLOP share")
    ap.add_argument("--head-dims", default="64,128,256")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", default="", help="comma-separated torch thread counts (default: torch's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.80, help="the MFU to solve for")
    ap.add_argument("--flex", action="store_true", help="also time torch.compile(flex_attention)")
    a = ap.parse_args(argv)
    print(platform_line())
    n = tokens(a.res)
    share = attention_share(a.res, a.width, a.depth)
    print(f"width {a.width}, depth {a.depth}, {a.res} px: {n} tokens; attention is {100 * share:.1f} % of the FLOPs")
    best = {}
    for threads in [int(t) for t in a.threads.split(",") if t] or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        print(f"# {threads} thread(s); ns per score per core, and % of the bf16 matmul peak at 4 hd FLOPs per score")
        for hd in [int(h) for h in a.head_dims.split(",")]:
            fns, counts = kernels(a.batch, a.width // hd, n, hd, a.flex)
            m = measure(fns, a.rounds)
            per_core = {k: m[k] * threads / counts[k] * 1e9 for k in counts}
            mm_ns = 4 * hd / (m["peak"] / threads) * 1e9  # ns per score per core at the peak
            with_flops = [k for k in counts if k not in ("exp", "softmax")]  # those that do the 4 hd FLOPs
            cells = "  ".join(
                f"{k} {per_core[k]:.2f} ns" + (f" ({100 * mm_ns / per_core[k]:.0f} %)" if k in with_flops else "")
                for k in counts
            )
            print(f"  hd {hd:3d}: peak {m['peak'] / 1e9:.0f} GFLOP/s; {cells}", flush=True)
            above = [k for k in with_flops if mm_ns > per_core[k]]
            if above:
                print(
                    f"    warning: {', '.join(above)} beat(s) the matmul peak timed here, so they use units "
                    "torch.mm does not (e.g. AMX while ONEDNN_MAX_CPU_ISA holds oneDNN's matmuls below it): "
                    "their fractions below compare unlike kernels",
                    flush=True,
                )
            best[threads, hd] = {
                "sdpa": mm_ns / per_core["sdpa"],
                "no overlap": mm_ns / (per_core["matmuls"] + per_core["exp"]),
                "overlap": mm_ns / max(per_core["matmuls"], per_core["exp"]),
            }
    print(f"# what {100 * a.target:.0f} % MFU at {a.res} px needs of the attention core (fraction of the peak)")
    for rest in (1.0, 0.9, 0.8):
        need = needed_fraction(share, a.target, rest)
        print(f"  everything else at {100 * rest:.0f} %: {'unreachable' if need is None else f'{100 * need:.0f} %'}")
    for (threads, hd), b in best.items():
        print(
            f"  {threads} thr, hd {hd:3d}: ATen's SDPA {100 * b['sdpa']:.0f} % "
            f"(MFU {100 * mfu_with(share, b['sdpa'], 0.9):.0f} % "
            f"with the rest at 90 %); ATen's matmuls + exp at best {100 * b['no overlap']:.0f} % "
            f"(no overlap) to {100 * b['overlap']:.0f} % (perfect overlap)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
