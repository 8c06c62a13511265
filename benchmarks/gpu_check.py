"""One short GPU check for a machine with CUDA: correctness first, then ratios.

    python benchmarks/gpu_check.py            # about 2 minutes on one H100/H200

1. The fixture (or a random ViT-B-sized) checkpoint gives the same outputs on the GPU in float32 as
   on the CPU (max abs diff printed; TF32 off), and under bf16 autocast stays close (cosine).
2. The SDPA kernels (flash, memory-efficient, math) agree in bf16.
3. Five training steps of the tiny recipe with bf16 autocast run and stay finite.
4. Throughput ratios (bf16 vs fp32, ViTDet-16 vs global at 1024 px) measured in this process.
Prints one line per check and exits non-zero if a correctness check fails. Without CUDA it
says so and exits 0 (nothing here is part of the CPU test suite).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from openradio.runtime import platform_line  # noqa: E402


def main() -> int:
    print(platform_line("cuda" if torch.cuda.is_available() else None))
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check")
        return 0
    import openradio
    from openradio.verify.testing import make_tiny_checkpoint

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    failures = []
    tmp = Path(tempfile.mkdtemp())
    fixture = REPO.parent / "shared/fixtures/official-v2.5/tiny_radio_v25_norm.pth.tar"
    ckpt = (
        fixture
        if fixture.is_file()
        else make_tiny_checkpoint(
            tmp / "b.pth.tar", embed_dim=768, depth=12, num_heads=12, cpe_max_size=2048, head_hidden=1520
        )
    )
    names = ["clip", "siglip", "dino_v2", "sam"]
    cpu = openradio.radio_model(str(ckpt), adaptor_names=names)
    gpu = openradio.radio_model(str(ckpt), adaptor_names=names).to(dev)
    x = torch.rand(2, 3, 512, 768)
    with torch.no_grad():
        a = cpu(x)
        b = gpu(x.to(dev))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            c = gpu(x.to(dev))
    for k in a:
        d32 = (a[k].features - b[k].features.cpu()).abs().max().item()
        scale = a[k].features.abs().max().item()
        cos = (
            F.cosine_similarity(a[k].features.flatten(1).double(), c[k].features.float().cpu().flatten(1).double())
            .min()
            .item()
        )
        ok = d32 <= 1e-4 * max(scale, 1) and cos > 0.99
        print(
            f"[{'ok' if ok else 'FAIL'}] {k}: fp32 GPU vs CPU max abs diff {d32:.2e} "
            f"(|f|max {scale:.1f}); bf16 cosine {cos:.4f}"
        )
        if not ok:
            failures.append(k)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    xb = x.to(dev)
    outs = {}
    for be in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with torch.no_grad(), sdpa_kernel(be), torch.autocast("cuda", dtype=torch.bfloat16):
                outs[be.name] = gpu(xb)["backbone"].features.float()
        except RuntimeError as e:
            print(f"[skip] SDPA {be.name}: {str(e).splitlines()[0]}")
    ref = outs.get("MATH")
    for name, o in outs.items():
        cos = F.cosine_similarity(ref.flatten(1), o.flatten(1)).min().item()
        ok = cos > 0.999
        print(f"[{'ok' if ok else 'FAIL'}] SDPA {name} vs MATH (bf16): cosine {cos:.5f}")
        if not ok:
            failures.append(name)

    from PIL import Image
    from skimage import data as skd

    from openradio.distill.config import load_config
    from openradio.distill.trainer import DistEnv, Trainer

    imgs = tmp / "imgs"
    imgs.mkdir()
    for n in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(skd, n)()[..., :3]).save(imgs / f"{n}.png")
    cfg = load_config(
        REPO / "configs/tiny.yaml",
        [
            f"data.path={imgs}",
            f"out_dir={tmp / 'run'}",
            "amp=true",
            "stages.0.steps=5",
            "progress=false",
            "tensorboard=false",
        ],
    )
    t = Trainer(cfg, env=DistEnv(device=dev))
    t0 = time.perf_counter()
    last = t.train()
    ok = torch.isfinite(torch.tensor(last["loss"])).item()
    print(
        f"[{'ok' if ok else 'FAIL'}] 5 bf16 training steps on GPU: loss {last['loss']:.4f}, "
        f"{time.perf_counter() - t0:.1f}s, peak {last['peak_mem_mb']:.0f} MiB"
    )
    if not ok:
        failures.append("train")

    from openradio.eval.throughput import bench_model

    rows = bench_model(
        gpu,
        [1024],
        batch_size=8,
        baseline="global",
        vitdet_window=16,
        iters=10,
        warmup=3,
        device=dev,
        amp=True,
        progress=False,
    )
    for r in rows:
        print(f"[info] 1024 px bf16: ViTDet-16 is {r['speed_ratio']:.2f}x the speed of global attention")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
