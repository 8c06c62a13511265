"""Pictures for docs/dense.md: pyramid levels, a segmentation overlay, upsampled features.

    python tools/make_dense_pictures.py                       # small random model (no download)
    python tools/make_dense_pictures.py --version radio_v2.5-b --prompts "cat,grass,wall"

Writes docs/images/dense_pyramid.png, dense_segment_overlay.png (+ its label PNG and scores) and
dense_upsample.png. Without --version the model and text tower are small and random: the
pictures then show the shapes and the mechanics (which maps, which resolutions), not semantics.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def _photo(size: int) -> torch.Tensor:
    from openradio.inputs.sample_data import load_sample_image

    img = torch.from_numpy(load_sample_image("chelsea")).permute(2, 0, 1).float() / 255
    h, w = img.shape[-2:]
    s = size / max(h, w)
    return F.interpolate(img[None], size=(round(h * s) // 16 * 16, round(w * s) // 16 * 16), mode="area")[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default=None)
    ap.add_argument("--prompts", default="cat,grass,wall")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default=str(REPO / "docs" / "images"))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import openradio
    from openradio.dense.segment import segment, write_segmentation
    from openradio.dense.upsample import upsample_features
    from openradio.inputs.imageio import tensor_to_uint8
    from openradio.model.text import attach_text_tower
    from openradio.viz.pca import get_robust_pca, pca_rgb

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.version:
            model = openradio.radio_model(args.version, adaptor_names=["clip"])
            label = args.version
        else:
            from openradio.model.text import write_random_text_tower
            from openradio.verify.testing import make_tiny_checkpoint

            path = make_tiny_checkpoint(Path(tmp) / "tiny.pth.tar")
            model = openradio.radio_model(str(path), adaptor_names=["clip"], text_towers=False)
            cfg, weights = write_random_text_tower(Path(tmp) / "text", "tiny-text", embed_dim=32)
            from openradio.model.text import load_text_tower

            attach_text_tower(model.adaptors["clip"], {}, model=load_text_tower(str(cfg), weights=weights))
            label = "small random model"
        model.eval()
        img = _photo(args.size)
        H, W = img.shape[-2:]

        # 1. pyramid levels
        bb = openradio.backbone(model, out_channels=64).eval()
        with torch.no_grad():
            levels = bb(img[None])
        fig, axes = plt.subplots(1, len(levels) + 1, figsize=(2.2 * (len(levels) + 1), 2.2 * H / W + 0.4))
        axes[0].imshow(tensor_to_uint8(img))
        axes[0].set_title("image", fontsize=8)
        for ax, (name, f) in zip(axes[1:], levels.items()):
            ax.imshow(pca_rgb(f, f.shape[-2:], interpolation="nearest").numpy())
            ax.set_title(f"'{name}': stride {bb.strides[name]}, {f.shape[-2]}x{f.shape[-1]}", fontsize=7)
        for ax in axes:
            ax.set_axis_off()
        fig.suptitle(f"openradio.backbone pyramid levels (PCA), {label}", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "dense_pyramid.png", dpi=80)
        plt.close(fig)

        # 2. open-vocabulary segmentation overlay
        r = segment(model, img, args.prompts, resolution=min(H, W), templates="simple")
        write_segmentation(r, img, out, "dense_segment")

        # 3. upsampled features
        with torch.no_grad():
            f = model(img[None], feature_fmt="NCHW")["backbone"].features
        stats = get_robust_pca(f)
        fig, axes = plt.subplots(1, 4, figsize=(9, 2.4 * H / W + 0.4))
        axes[0].imshow(tensor_to_uint8(img))
        axes[0].set_title("image", fontsize=8)
        axes[1].imshow(pca_rgb(f, (H, W), interpolation="nearest", stats=stats).numpy())
        axes[1].set_title(f"1/16 features ({f.shape[-2]}x{f.shape[-1]})", fontsize=8)
        for ax, m in zip(axes[2:], ("bilinear", "bilateral")):
            up = upsample_features(f, img[None], m)
            ax.imshow(pca_rgb(up, (H, W), stats=stats).numpy())
            ax.set_title(f"{m} to {H}x{W}", fontsize=8)
        for ax in axes:
            ax.set_axis_off()
        fig.suptitle(f"per-pixel features (one PCA for all), {label}", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "dense_upsample.png", dpi=80)
        plt.close(fig)
    for name in ("dense_pyramid.png", "dense_segment_overlay.png", "dense_segment_labels.png", "dense_upsample.png"):
        print(f"wrote {out / name} ({(out / name).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
