"""int8 (``openradio.quantize_dynamic``) against float32 on the bundled photographs.

Prints, per photograph, the cosine similarity of the int8 model's summary and (mean over tokens)
of its features with the float32 model's, and the speed-up: median over interleaved call pairs
(float32, int8, int8, float32, ...) of t(float32) / t(int8), at 1 and 2 threads. ``--pca PNG``
writes the PCA pictures of both models side by side (one PCA fitted on the float32 features
and applied to both, so equal colours mean equal features).

It also times the quantised linear layers alone (one block's qkv, proj, fc1, fc2 at the token
count of the timed forward, interleaved with the float32 ``F.linear`` on the same weights): their
speed-up is the int8 kernels' own on this CPU, and with the float32 forward's share of time in
those layers gives the whole-model speed-up to expect when the rest (attention, norms, GELU)
stays float32 (Amdahl). Without VNNI (AVX2 only) int8 matrix kernels are about 1.9x float32's.

By default the weights are random (a ViT-B/16-shaped checkpoint, no download); ``--version``
takes a released name or checkpoint file for the real thing.

    python benchmarks/bench_int8.py --pca int8_pca.png
    python benchmarks/bench_int8.py --version radio_v2.5-b --resolution 512
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from openradio.runtime import platform_line


def load_photos(names: list[str], size: int) -> list[torch.Tensor]:
    from PIL import Image

    from openradio.inputs.sample_data import load_sample_image

    out = []
    for n in names:
        im = Image.fromarray(load_sample_image(n)).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--version", default="", help="released name or checkpoint file (default: random ViT-B/16)")
    ap.add_argument("--embed-dim", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--photos", default="chelsea,coffee,rocket,flower,astronaut,china")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pca", default="", help="write the PCA pictures (float32 | int8) to this PNG")
    ap.add_argument(
        "--engines",
        default="",
        help="quantised engines to compare, e.g. onednn,x86 (default: quantize_dynamic's default engine)",
    )
    a = ap.parse_args()
    print(platform_line())

    import openradio
    from openradio.verify.testing import make_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        src = a.version or str(
            make_tiny_checkpoint(
                Path(tmp) / "m.pth.tar",
                embed_dim=a.embed_dim,
                depth=a.depth,
                num_heads=a.heads,
                cpe_max_size=2048,
                arch="vit_base_patch16_224",
            )
        )
        model = openradio.radio_model(src, text_towers=False).float()
    engines = [e for e in a.engines.split(",") if e] or [None]
    qs = {}
    for e in engines:
        qm = openradio.quantize_dynamic(model, engine=e)
        qs[qm.quantized.split("(")[-1].rstrip(")")] = qm
    names = a.photos.split(",")
    photos = load_photos(names, a.resolution)
    print(
        f"model: {a.version or f'random ViT dim {a.embed_dim}, depth {a.depth}, heads {a.heads}, patch 16'}; "
        f"{a.resolution}px; int8 = torch.ao dynamic quantisation of the blocks' linear layers "
        f"(engines {', '.join(qs)}); torch {torch.__version__}"
    )
    pcs = []
    with torch.inference_mode():
        for n, x in zip(names, photos):
            f = model(x[None], feature_fmt="NCHW")
            f = f["backbone"] if isinstance(f, dict) else f
            for e, q in qs.items():
                i = q(x[None], feature_fmt="NCHW")
                i = i["backbone"] if isinstance(i, dict) else i
                cs = F.cosine_similarity(f.summary, i.summary).item()
                cf = F.cosine_similarity(f.features, i.features, dim=1).mean().item()
                print(f"  {n:12} {e:7} summary cosine {cs:.5f}   feature cosine (mean over tokens) {cf:.5f}")
                if e == next(iter(qs)):
                    pcs.append((x, f.features, i.features))
    if a.pca:
        write_pca(pcs, a.pca)
        print(f"PCA pictures (photo | float32 | int8 {next(iter(qs))}, one PCA per photo fitted on float32): {a.pca}")
    x = torch.stack(photos[:1] * a.batch_size)
    fns = {"float32": model, **qs}
    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        times = {k: [] for k in fns}
        with torch.inference_mode():
            for fn in fns.values():
                fn(x)
            for r in range(a.rounds):
                for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                    t0 = time.perf_counter()
                    fns[k](x)
                    times[k].append(time.perf_counter() - t0)
        lin = linear_times(model, qs, x, a.rounds)
        t32 = statistics.median(times["float32"])
        for e in qs:
            ratio = statistics.median(f / i for f, i in zip(times["float32"], times[e]))
            print(
                f"threads {threads} batch {a.batch_size}: int8 ({e}) x{ratio:.2f} faster than float32 "
                f"(float32 {t32 * 1e3:.0f} ms, int8 "
                f"{statistics.median(times[e]) * 1e3:.0f} ms per call)",
                flush=True,
            )
            share = lin["float32"] / t32
            amdahl = t32 / (t32 - lin["float32"] + lin[e])
            print(
                f"threads {threads} batch {a.batch_size}: int8 ({e}) "
                f"linear layers alone x{lin['float32'] / lin[e]:.2f} "
                f"over float32; they are {100 * share:.0f} % of the float32 forward, so int8 linears with the rest "
                f"float32 give x{amdahl:.2f}",
                flush=True,
            )


def _linears(model) -> dict:
    """Block 0's four linear layers (float32 ``nn.Linear`` or their int8 replacements)."""
    b0 = model.model.blocks[0]
    return {"qkv": b0.attn.qkv, "proj": b0.attn.proj, "fc1": b0.mlp.fc1, "fc2": b0.mlp.fc2}


def linear_times(model, qs: dict, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Seconds per forward spent in the blocks' qkv/proj/fc1/fc2, float32 and each int8 engine:
    block 0's four layers timed at the token count a forward of ``x`` gives them, times depth."""
    shapes = {}
    layers = _linears(model)

    def keep(k):
        def hook(module, inputs, output):
            shapes.setdefault(k, inputs[0].shape)

        return hook

    hooks = [m.register_forward_hook(keep(k)) for k, m in layers.items()]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    inputs = {k: torch.randn(shapes[k]) for k in layers}
    depth = len(model.model.blocks)

    def run_f32():
        for k, m in layers.items():
            F.linear(inputs[k], m.weight, m.bias)

    fns = {"float32": run_f32}
    for e, q in qs.items():
        fns[e] = lambda ql=_linears(q): [m(inputs[k]) for k, m in ql.items()]
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            f()
        for r in range(max(3, rounds)):
            for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t0)
    return {k: depth * min(v) for k, v in times.items()}


def write_pca(items, path: str) -> None:
    from PIL import Image

    from openradio.viz.pca import apply_pca, get_robust_pca, upsample_rgb

    rows = []
    for x, ff, fi in items:
        size = tuple(x.shape[-2:])
        stats = get_robust_pca(ff.float())
        pics = [x.permute(1, 2, 0)] + [
            upsample_rgb(apply_pca(fm.float(), stats)[0], size, "nearest") for fm in (ff, fi)
        ]
        rows.append(torch.cat(pics, dim=1))
    img = (torch.cat(rows, dim=0).clamp(0, 1) * 255).to(torch.uint8).numpy()
    Image.fromarray(img).save(path)


if __name__ == "__main__":
    main()
