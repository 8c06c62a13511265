"""ViTDet vs global attention: where the time goes, the measured speed-up and its FLOP bound.

For each resolution, one process, interleaved calls (global, ViTDet, ViTDet, global, ...):

* speed-up = median over call pairs of t(global) / t(ViTDet), whole model forward;
* breakdown of one ViTDet forward: the windowed blocks, the global blocks, and the layout
  changes (raster -> window order once, prefix set aside / put back at each stretch, and back
  to raster order at the end), each timed around the very calls the model makes;
* the FLOP bound: FLOPs(global) / FLOPs(ViTDet) counting the matmuls of every block (qkv,
  projection, MLP: 24*N*D^2; attention: 4*N*L*D with L the keys each query sees). Window
  attention can only remove attention FLOPs, and the global blocks (every 4th for RADIOv2.5)
  keep theirs, so the speed-up cannot exceed this bound by much.

    python benchmarks/bench_vitdet.py                       # ViT-B/16, 512 and 1024, window 16
    python benchmarks/bench_vitdet.py --resolutions 512,1024,2048 --rounds 2   # 2048: minutes per call
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from openradio.runtime import platform_line


def flops(n_tokens: int, dim: int, depth: int, schedule: list[bool], window: int | None, prefix: int) -> float:
    total = 0.0
    for windowed in schedule:
        if window and windowed:
            n, keys = n_tokens, window * window
        else:
            n, keys = n_tokens + prefix, n_tokens + prefix
        total += 24 * n * dim * dim + 4 * n * keys * dim
    return total


def breakdown(model, x: torch.Tensor, window: int) -> tuple[dict[str, float], torch.Tensor]:
    """Seconds per part of one ViTDet forward, timed around the model's own steps; and the
    tokens it produced (equal to ``model.forward_tokens``: tests/test_bench_scripts.py)."""
    from openradio.model.vitdet import WindowedRunner, WindowLayout

    t = {"windowed blocks": 0.0, "global blocks": 0.0, "layout changes": 0.0, "rest": 0.0}
    t0 = time.perf_counter()
    p = model.patch_size
    h, w = x.shape[-2] // p, x.shape[-1] // p
    tokens = model.patch_generator(model.input_conditioner(x))
    t["rest"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    runner = WindowedRunner(tokens, model.num_prefix_tokens, WindowLayout(x.shape[0], h, w, window), model._schedule())
    t["layout changes"] += time.perf_counter() - t0
    for i, block in enumerate(model.blocks):
        want = runner.schedule[i]
        t0 = time.perf_counter()
        if want and not runner.windowed:
            runner._to_windows()
        elif not want and runner.windowed:
            runner._to_global()
        t1 = time.perf_counter()
        runner.x = block(runner.x)
        t2 = time.perf_counter()
        t["layout changes"] += t1 - t0
        t["windowed blocks" if want else "global blocks"] += t2 - t1
    t0 = time.perf_counter()
    y = runner.raster()
    t["layout changes"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    y = model.model.norm(y)
    t["rest"] += time.perf_counter() - t0
    return t, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embed-dim", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--resolutions", default="512,1024")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print(platform_line())

    import openradio
    from openradio.verify.testing import make_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(
            Path(tmp) / "m.pth.tar",
            embed_dim=a.embed_dim,
            depth=a.depth,
            num_heads=a.heads,
            cpe_max_size=2048,
            arch="vit_base_patch16_224",
        )
        model = openradio.radio_model(str(ckpt), text_towers=False)
    sched = model._schedule()
    print(
        f"model: random ViT dim {a.embed_dim}, depth {a.depth}, heads {a.heads}, patch 16; window {a.window}; "
        f"{sum(sched)} windowed + {len(sched) - sum(sched)} global blocks (RADIOv2.5 schedule); batch 1; "
        f"torch {torch.__version__}"
    )
    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        for res in [int(r) for r in a.resolutions.split(",")]:
            x = torch.rand(1, 3, res, res)
            n = (res // 16) ** 2
            bound = flops(n, a.embed_dim, a.depth, sched, None, model.num_prefix_tokens) / flops(
                n, a.embed_dim, a.depth, sched, a.window, model.num_prefix_tokens
            )
            tg, tw, parts = [], [], []
            with torch.inference_mode():
                model(x, vitdet_window=None), model(x, vitdet_window=a.window)  # warm-up
                for r in range(a.rounds):
                    order = [None, a.window] if r % 2 == 0 else [a.window, None]
                    for win in order:
                        t0 = time.perf_counter()
                        model(x, vitdet_window=win)
                        (tg if win is None else tw).append(time.perf_counter() - t0)
                    parts.append(breakdown(model, x, a.window)[0])
            speed = statistics.median(g / w for g, w in zip(tg, tw))
            tot = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
            s = sum(tot.values())
            share = ", ".join(f"{k} {100 * v / s:.1f}%" for k, v in tot.items())
            print(
                f"threads {threads} {res:5d}px: ViTDet x{speed:.2f} over global (FLOP bound x{bound:.2f}); "
                f"global {statistics.median(tg) * 1e3:.0f} ms, ViTDet {statistics.median(tw) * 1e3:.0f} ms; "
                f"ViTDet time: {share}",
                flush=True,
            )


if __name__ == "__main__":
    main()
