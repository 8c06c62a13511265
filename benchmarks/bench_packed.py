"""Mixed resolutions: ``model.forward_images(list)`` (one packed sequence) vs a per-image loop
vs transformers' native ``RadioModel`` with packed input (``image_grid_hw``), same weights.

The three run interleaved in one process (A, B, C, then C, B, A, ...) on the same images; each
round gives per-pair time ratios, and the medians over rounds are printed. Max differences are
against the per-image loop (openradio's ``model(image[None])``).

Each round also times a 2048 x 2048 float32 matmul, the machine's matmul peak under the same
load, and the model-FLOPs utilisation (MFU) of the loop and the pack is printed against it.
Packing only makes the same FLOPs run faster, so no packed run can beat the loop by more than
``1 / MFU(loop)``: printed as the ceiling of packing on this machine.

    python benchmarks/bench_packed.py                     # ViT-B/16, 32 images, sides 224-512
    python benchmarks/bench_packed.py --threads 1,2 --rounds 5
    python benchmarks/bench_packed.py --embed-dim 192 --heads 3 --images 8   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from openradio.runtime import platform_line

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compare import seconds  # noqa: E402
from bench_vitdet import flops as block_flops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embed-dim", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--min-side", type=int, default=224)
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vitdet-window", type=int, default=0, help="also time ViTDet with this window (0: no)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=-1,
        help="also time forward_images(max_tokens=N): packs of at most N tokens, 0: all images in one "
        "pack (default -1: not timed). 'packed' is forward_images' default: on a CPU packs of at "
        "most model.cpu_chunk_tokens tokens",
    )
    a = ap.parse_args()

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
        hf = None
        try:
            import transformers

            from openradio.formats.native import save_transformers

            if hasattr(transformers, "RadioModel"):
                folder = save_transformers(model, Path(tmp) / "native")
                hf = transformers.RadioModel.from_pretrained(folder, attn_implementation="sdpa").eval()
        except ImportError:
            pass
        run(model, hf, a)


def _pack_for_hf(images: list[torch.Tensor], p: int) -> tuple[torch.Tensor, torch.Tensor]:
    patches = torch.cat(
        [
            im.reshape(3, im.shape[1] // p, p, im.shape[2] // p, p).permute(1, 3, 0, 2, 4).reshape(-1, 3 * p * p)
            for im in images
        ]
    )
    grid = torch.tensor([[im.shape[1] // p, im.shape[2] // p] for im in images])
    return patches, grid


def pack_flops(grids: list[tuple[int, int]], dim: int, depth: int, prefix: int, patch: int = 16) -> float:
    """Model FLOPs of all-global forwards over images with these token grids (patch embedding and
    blocks; multiply-add = 2), the sum of what each image costs alone."""
    total = 0.0
    for h, w in grids:
        n = h * w
        total += 2 * n * 3 * patch * patch * dim + block_flops(n, dim, depth, [False] * depth, None, prefix)
    return total


def run(model, hf, a) -> None:
    print(platform_line())
    g = torch.Generator().manual_seed(a.seed)
    step = 16 * max(a.vitdet_window, 1)
    sides = list(range(-(-a.min_side // step) * step, a.max_side + 1, step))
    images = []
    for _ in range(a.images):
        h, w = (sides[int(torch.randint(len(sides), (1,), generator=g))] for _ in range(2))
        images.append(torch.rand(3, h, w, generator=g))
    tokens = sum(im.shape[1] * im.shape[2] // 256 for im in images)
    print(
        f"model: random ViT dim {a.embed_dim}, depth {a.depth}, heads {a.heads}, patch 16; {a.images} images, "
        f"sides {sides[0]}-{sides[-1]} (step {step}), {tokens} patch tokens in all; torch {torch.__version__}; "
        f"'packed': forward_images' default packs (<= {model.cpu_chunk_tokens or 'all'} tokens on a CPU)"
    )
    p = model.patch_size
    windows = [None] + ([a.vitdet_window] if a.vitdet_window else [])
    flops = pack_flops(
        [(im.shape[1] // p, im.shape[2] // p) for im in images], a.embed_dim, a.depth, model.num_prefix_tokens, p
    )
    mm_a, mm_b = torch.randn(2048, 2048), torch.randn(2048, 2048)

    with torch.inference_mode():
        ref = [model(im[None], vitdet_window=None) for im in images]
        packed = model.forward_images(images, vitdet_window=None)
        d_s = max((o.summary - r.summary).abs().max().item() for o, r in zip(packed, ref))
        d_f = max((o.features - r.features).abs().max().item() for o, r in zip(packed, ref))
        print(f"max |packed - per image|: summary {d_s:.2e}, features {d_f:.2e}")
        if hf is not None:
            hp, grid = _pack_for_hf(images, p)
            out = hf(pixel_values=hp, image_grid_hw=grid)
            hs = out.summary
            hf_f = torch.cat([r.features[0] for r in ref])
            print(
                f"max |transformers packed - openradio per image|: summary "
                f"{(hs - torch.cat([r.summary for r in ref])).abs().max().item():.2e}, features "
                f"{(out.features.reshape(hf_f.shape) - hf_f).abs().max().item():.2e}"
            )

    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        for win in windows:
            fns = {
                "loop": lambda: [model(im[None], vitdet_window=win) for im in images],
                "packed": lambda: model.forward_images(images, vitdet_window=win),
            }
            if a.max_tokens >= 0:
                fns["packs"] = lambda: model.forward_images(images, vitdet_window=win, max_tokens=a.max_tokens)
            if hf is not None and win is None:
                fns["transformers"] = lambda: hf(pixel_values=hp, image_grid_hw=grid)
            times = {k: [] for k in fns}
            names = list(fns)
            mm: list[float] = []
            with torch.inference_mode():
                for f in fns.values():  # warm-up
                    f()
                for r in range(a.rounds):
                    mm.append(min(seconds(lambda: torch.mm(mm_a, mm_b)) for _ in range(3)))
                    for k in names if r % 2 == 0 else names[::-1]:
                        t0 = time.perf_counter()
                        fns[k]()
                        times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = lambda base: statistics.median(b / t for b, t in zip(times[base], times["packed"]))  # noqa: E731
            line = (
                f"threads {threads} {'global' if win is None else f'vitdet-{win}':9} "
                f"img/s: packed {a.images / med['packed']:6.2f}, loop {a.images / med['loop']:6.2f}"
            )
            if "transformers" in times:
                line += f", transformers packed {a.images / med['transformers']:6.2f}"
            line += f" | speed-up of packed: x{ratio('loop'):.2f} over the loop"
            if "transformers" in times:
                line += f", x{ratio('transformers'):.2f} over transformers"
            if "packs" in times:
                what = f"packs of <= {a.max_tokens} tokens" if a.max_tokens else "one pack"
                line += (
                    f"; {what}: x"
                    f"{statistics.median(b / t for b, t in zip(times['loop'], times['packs'])):.2f} over the loop"
                )
            print(line, flush=True)
            if win is None:
                peak = 2 * 2048**3 / statistics.median(mm)
                mfu = {k: flops / med[k] / peak for k in ("loop", "packed")}
                print(
                    f"threads {threads} global    matmul peak {peak / 1e9:.0f} GFLOP/s, {flops / 1e9:.0f} GFLOP per "
                    f"pass: MFU loop {100 * mfu['loop']:.1f} %, packed {100 * mfu['packed']:.1f} % | ceiling of "
                    f"packing here (1 / MFU of the loop): x{1 / mfu['loop']:.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
