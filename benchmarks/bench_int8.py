"""int8 (``openradio.quantize_dynamic``) against float32 on the bundled photographs.

Prints, per photograph, the cosine similarity of the int8 model's summary and (mean over tokens)
of its features with the float32 model's, and the speed-up: median over interleaved call pairs
(float32, int8, int8, float32, ...) of t(float32) / t(int8), at 1 and 2 threads. ``--pca PNG``
writes the PCA pictures of both models side by side (one PCA fitted on the float32 features
and applied to both, so equal colours mean equal features).

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


def load_photos(names: list[str], size: int) -> list[torch.Tensor]:
    from PIL import Image

    from openradio.sample_data import load_sample_image
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
    a = ap.parse_args()

    import openradio
    from openradio.testing import make_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        src = a.version or str(make_tiny_checkpoint(Path(tmp) / "m.pth.tar", embed_dim=a.embed_dim, depth=a.depth,
                                                    num_heads=a.heads, cpe_max_size=2048,
                                                    arch="vit_base_patch16_224"))
        model = openradio.radio_model(src, text_towers=False).float()
    q = openradio.quantize_dynamic(model)
    names = a.photos.split(",")
    photos = load_photos(names, a.resolution)
    print(f"model: {a.version or f'random ViT dim {a.embed_dim}, depth {a.depth}, heads {a.heads}, patch 16'}; "
          f"{a.resolution}px; int8 = torch.ao dynamic quantisation of the blocks' linear layers "
          f"(engine {torch.backends.quantized.engine}); torch {torch.__version__}")
    pcs = []
    with torch.inference_mode():
        for n, x in zip(names, photos):
            f, i = model(x[None], feature_fmt="NCHW"), q(x[None], feature_fmt="NCHW")
            f, i = (f["backbone"], i["backbone"]) if isinstance(f, dict) else (f, i)
            cs = F.cosine_similarity(f.summary, i.summary).item()
            cf = F.cosine_similarity(f.features, i.features, dim=1).mean().item()
            print(f"  {n:12} summary cosine {cs:.5f}   feature cosine (mean over tokens) {cf:.5f}")
            pcs.append((x, f.features, i.features))
    if a.pca:
        write_pca(pcs, a.pca)
        print(f"PCA pictures (photo | float32 | int8, one PCA per photo fitted on float32): {a.pca}")
    x = torch.stack(photos[:1] * a.batch_size)
    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        tf, ti = [], []
        with torch.inference_mode():
            model(x), q(x)
            for r in range(a.rounds):
                for which in (("f", "i") if r % 2 == 0 else ("i", "f")):
                    t0 = time.perf_counter()
                    (model if which == "f" else q)(x)
                    (tf if which == "f" else ti).append(time.perf_counter() - t0)
        print(f"threads {threads} batch {a.batch_size}: int8 x{statistics.median(f / i for f, i in zip(tf, ti)):.2f} "
              f"faster than float32 (float32 {statistics.median(tf) * 1e3:.0f} ms, int8 "
              f"{statistics.median(ti) * 1e3:.0f} ms per call)", flush=True)


def write_pca(items, path: str) -> None:
    from PIL import Image

    from openradio.viz.pca import apply_pca, get_robust_pca, upsample_rgb
    rows = []
    for x, ff, fi in items:
        size = tuple(x.shape[-2:])
        stats = get_robust_pca(ff.float())
        pics = [x.permute(1, 2, 0)] + [upsample_rgb(apply_pca(fm.float(), stats)[0], size, "nearest")
                                       for fm in (ff, fi)]
        rows.append(torch.cat(pics, dim=1))
    img = (torch.cat(rows, dim=0).clamp(0, 1) * 255).to(torch.uint8).numpy()
    Image.fromarray(img).save(path)


if __name__ == "__main__":
    main()
