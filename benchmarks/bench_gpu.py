"""One CUDA GPU: bf16 inference (global and ViTDet-16) and a training step, images/s and MFU.

Called by benchmarks/gpu.sh; runs alone too:

    python benchmarks/bench_gpu.py --shape b16 --resolutions 224,512,1024 --batch 16 [--compile]

Random weights of the released shapes (no download). Attention runs through SDPA restricted to
the flash kernel (falls back to SDPA's default choice where flash cannot run, and says so). MFU
= model FLOPs (matmuls, counted from the shape as in bench_compare.py; training = 3x forward) /
time / the card's dense bf16 peak (a table of known cards; otherwise a measured bf16 matmul
peak, marked 'measured'). NOT RUN YET on a GPU (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

from openradio.runtime import platform_line

sys.path.insert(0, str(Path(__file__).resolve().parent))

# dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets
CARD_PEAKS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def card_peak() -> tuple[float, str]:
    name = torch.cuda.get_device_name()
    for key, peak in CARD_PEAKS.items():
        if key in name:
            return peak, f"{name} (data-sheet dense bf16 {peak / 1e12:.0f} TFLOP/s)"
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    best = min(_cuda_time(lambda: a @ a) for _ in range(5))
    return 2 * n**3 / best, f"{name} (measured bf16 matmul {2 * n**3 / best / 1e12:.0f} TFLOP/s)"


def _cuda_time(fn, reps: int = 1) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def flash_only():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])
    except ImportError:
        return contextlib.nullcontext()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=["b16", "l16"], default="b16")
    ap.add_argument("--resolutions", default="224,512,1024")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    print(platform_line("cuda" if torch.cuda.is_available() else None))
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing to run")
        return 0
    from bench_compare import SHAPES, model_flops

    import openradio
    from openradio.verify.testing import make_tiny_checkpoint

    dim, depth, heads = SHAPES[a.shape]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(
            Path(tmp) / "m.pth.tar",
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            cpe_max_size=2048,
            arch="vit_base_patch16_224",
        )
        model = openradio.radio_model(str(ckpt), text_towers=False).cuda().eval()
    peak, card = card_peak()
    print(
        f"{a.shape} (dim {dim}, depth {depth}); {card}; torch {torch.__version__}; "
        f"{'torch.compile' if a.compile else 'eager'}; bf16 autocast; SDPA flash/mem-efficient"
    )
    fwd = torch.compile(model, dynamic=False) if a.compile else model
    for res in [int(r) for r in a.resolutions.split(",")]:
        x = torch.rand(a.batch, 3, res, res, device="cuda")
        for window in (None, 16):
            if window and res % (16 * window):
                continue
            fl = model_flops(dim, depth, 16, res, a.batch, model.num_prefix_tokens, model._schedule(), window)
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16), flash_only():
                for _ in range(3):
                    fwd(x, vitdet_window=window)
                t = _cuda_time(lambda: fwd(x, vitdet_window=window), a.iters)
            mode = "global" if window is None else f"vitdet-{window}"
            print(
                f"  inference {res:5d}px batch {a.batch:3d} {mode:9}: {a.batch / t:8.1f} img/s, "
                f"MFU {100 * fl / t / peak:5.1f}%",
                flush=True,
            )
        # one training step: forward + backward + AdamW on the student, MSE to random targets
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        step_model = torch.compile(model, dynamic=False) if a.compile else model

        def step(opt=opt):
            with torch.autocast("cuda", dtype=torch.bfloat16), flash_only():
                out = step_model(x)
                out = out["backbone"] if isinstance(out, dict) else out
                loss = out.features.float().pow(2).mean() + out.summary.float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        t = _cuda_time(step, max(a.iters // 2, 3))
        fl = 3 * model_flops(dim, depth, 16, res, a.batch, model.num_prefix_tokens, model._schedule(), None)
        print(
            f"  train step {res:5d}px batch {a.batch:3d} global   : {a.batch / t:8.1f} img/s, "
            f"MFU {100 * fl / t / peak:5.1f}%  (max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)",
            flush=True,
        )
        model.eval()
        del opt
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
