"""Joint bilateral against bilinear upsampling of the 1/16 feature map, on a synthetic linear probe.

Scenes: flat-colour discs and boxes of ``--classes`` classes on a background, placed at random
(their edges cross the 16-px patch grid). A linear probe (BatchNorm + 1x1 conv, the
``probe seg`` head) is trained on the frozen model's features of the training scenes; on the
validation scenes its low-resolution logits are brought to pixel resolution by each method
(the head is affine and both upsamplers' weights sum to one, so upsampling the logits equals
upsampling the features first). Printed per method:

* mIoU over all pixels;
* boundary IoU (Cheng et al., 2021): per class the IoU of the mask pixels within ``--band`` px
  of that mask's contour, ground truth against prediction, averaged over classes;
* edge alignment: the share of predicted label edges within 1 px of an image edge (precision)
  and of image edges within 1 px of a predicted label edge (recall);
* time per image and its ratio to bilinear (median of interleaved runs, this process).

By default the model is a small random checkpoint (no download); ``--version`` takes a
released name or a checkpoint file.

    python benchmarks/bench_upsample.py
    python benchmarks/bench_upsample.py --version radio_v2.5-b --size 512 --train 32 --val 16
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

PALETTE = [
    (0.15, 0.15, 0.15),
    (0.9, 0.2, 0.2),
    (0.2, 0.8, 0.3),
    (0.2, 0.3, 0.9),
    (0.95, 0.85, 0.2),
    (0.8, 0.3, 0.9),
    (0.2, 0.85, 0.9),
    (0.95, 0.6, 0.3),
]


def scenes(n: int, size: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, S, S) images in [0, 1] and (n, S, S) labels; class 0 is the background."""
    if classes + 1 > len(PALETTE):
        raise ValueError(f"at most {len(PALETTE) - 1} classes")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    labs = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for _ in range(rng.integers(3, 7)):
            c = rng.integers(1, classes + 1)
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(0.08, 0.25) * size
            if rng.random() < 0.5:
                m = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            else:
                m = (abs(yy - cy) < r) & (abs(xx - cx) < r * rng.uniform(0.5, 1.5))
            labs[i][m] = c
    pal = np.array(PALETTE[: classes + 1], np.float32)
    imgs = torch.from_numpy(pal[labs]).permute(0, 3, 1, 2).contiguous()
    return imgs, torch.from_numpy(labs)


@torch.no_grad()
def features(model, imgs: torch.Tensor, resolution: int) -> torch.Tensor:
    x = F.interpolate(imgs, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return torch.cat(
        [model(x[i : i + 8].clamp(0, 1), feature_fmt="NCHW").features.float() for i in range(0, len(x), 8)]
    )


def train_probe(feats: torch.Tensor, labels: torch.Tensor, classes: int, epochs: int, seed: int):
    from openradio.eval.probe import LinearSegHead

    torch.manual_seed(seed)
    head = LinearSegHead(feats.shape[1], classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    target = F.interpolate(labels[:, None].float(), size=[4 * s for s in feats.shape[-2:]], mode="nearest")[:, 0].long()
    for _ in range(epochs):
        for idx in torch.randperm(len(feats)).split(8):
            up = F.interpolate(head(feats[idx]), size=target.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(up, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def _edges(lab: torch.Tensor) -> torch.Tensor:
    """(S, S) bool: pixels whose right or lower neighbour has another label."""
    e = torch.zeros_like(lab, dtype=torch.bool)
    e[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    e[:-1] |= lab[:-1] != lab[1:]
    return e


def _dilate(mask: torch.Tensor, d: int) -> torch.Tensor:
    return F.max_pool2d(mask[None, None].float(), 2 * d + 1, stride=1, padding=d)[0, 0] > 0


def _inner_band(mask: torch.Tensor, d: int) -> torch.Tensor:
    """Pixels of ``mask`` within ``d`` px of its contour (mask minus its erosion)."""
    eroded = ~_dilate(~mask, d)
    return mask & ~eroded


def metrics(pred: torch.Tensor, gt: torch.Tensor, classes: int, band: int) -> dict:
    conf = torch.bincount(gt.flatten() * classes + pred.flatten(), minlength=classes**2).reshape(classes, classes)
    tp = conf.diag().double()
    union = conf.sum(0) + conf.sum(1) - conf.diag()
    miou = (tp[union > 0] / union[union > 0]).mean().item()
    inter = torch.zeros(classes, dtype=torch.float64)
    uni = torch.zeros(classes, dtype=torch.float64)
    prec_hit = prec_all = rec_hit = rec_all = 0
    for p, g in zip(pred, gt):
        for c in range(classes):
            gb, pb = _inner_band(g == c, band), _inner_band(p == c, band)
            inter[c] += (gb & pb).sum()
            uni[c] += (gb | pb).sum()
        pe, ge = _edges(p), _edges(g)
        prec_hit += (pe & _dilate(ge, 1)).sum().item()
        prec_all += pe.sum().item()
        rec_hit += (ge & _dilate(pe, 1)).sum().item()
        rec_all += ge.sum().item()
    biou = (inter[uni > 0] / uni[uni > 0]).mean().item()
    return {
        "miou": miou,
        "boundary_iou": biou,
        "edge_precision": prec_hit / max(prec_all, 1),
        "edge_recall": rec_hit / max(rec_all, 1),
    }


def compare(
    model,
    *,
    size: int = 128,
    resolution: int = 128,
    classes: int = 4,
    n_train: int = 16,
    n_val: int = 8,
    epochs: int = 30,
    band: int = 2,
    seed: int = 0,
    repeats: int = 3,
    **jbu,
) -> dict:
    """{method: metrics + seconds per image}; the probe is trained once and shared."""
    from openradio.dense.upsample import upsample_features

    k = classes + 1
    xtr, ytr = scenes(n_train, size, classes, seed)
    xva, yva = scenes(n_val, size, classes, seed + 1)
    head = train_probe(features(model, xtr, resolution), ytr, k, epochs, seed)
    with torch.no_grad():
        logits = head(features(model, xva, resolution))
    out = {}
    times: dict[str, list[float]] = {"bilinear": [], "bilateral": []}
    preds = {}
    for r in range(repeats):
        order = ("bilinear", "bilateral") if r % 2 == 0 else ("bilateral", "bilinear")
        for m in order:
            t0 = time.perf_counter()
            with torch.no_grad():
                up = upsample_features(logits, xva, m, **(jbu if m == "bilateral" else {}))
            times[m].append((time.perf_counter() - t0) / len(xva))
            preds[m] = up.argmax(1)
    for m in ("bilinear", "bilateral"):
        out[m] = metrics(preds[m], yva, k, band)
        out[m]["seconds_per_image"] = statistics.median(times[m])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default=None, help="released version or checkpoint (default: a small random one)")
    ap.add_argument("--size", type=int, default=128, help="scene side in pixels (default 128)")
    ap.add_argument("--resolution", type=int, default=None, help="model input side (default: --size)")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--train", type=int, default=16)
    ap.add_argument("--val", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--band", type=int, default=2, help="boundary IoU band in pixels (default 2)")
    ap.add_argument("--sigma-range", type=float, default=0.1)
    ap.add_argument("--sigma-spatial", type=float, default=1.0)
    ap.add_argument("--radius", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import openradio
    from openradio.verify import parity

    torch.set_num_threads(args.threads)
    print(platform_line())
    print(parity.platform_line(parity.platform_info()))  # and what decides float32 kernel results
    with tempfile.TemporaryDirectory() as tmp:
        if args.version:
            model, label = openradio.radio_model(args.version, text_towers=False), args.version
        else:
            from openradio.verify.testing import make_tiny_checkpoint

            path = make_tiny_checkpoint(Path(tmp) / "tiny.pth.tar", embed_dim=128, depth=4, num_heads=4)
            model, label = openradio.radio_model(str(path), text_towers=False), "random ViT (128 wide, 4 blocks)"
    res = args.resolution or args.size
    res = model.get_nearest_supported_resolution(res, res).height
    print(
        f"model: {label}; scenes {args.size} px, model input {res} px, {args.classes} classes + background, "
        f"{args.train} train / {args.val} val; boundary band {args.band} px"
    )
    r = compare(
        model.eval(),
        size=args.size,
        resolution=res,
        classes=args.classes,
        n_train=args.train,
        n_val=args.val,
        epochs=args.epochs,
        band=args.band,
        seed=args.seed,
        radius=args.radius,
        sigma_spatial=args.sigma_spatial,
        sigma_range=args.sigma_range,
    )
    base = r["bilinear"]["seconds_per_image"]
    print(f"{'method':<10} {'mIoU':>7} {'bIoU':>7} {'edge P':>7} {'edge R':>7} {'ms/img':>8} {'time ratio':>10}")
    for m, v in r.items():
        print(
            f"{m:<10} {v['miou']:7.4f} {v['boundary_iou']:7.4f} {v['edge_precision']:7.4f} {v['edge_recall']:7.4f} "
            f"{1e3 * v['seconds_per_image']:8.2f} {v['seconds_per_image'] / base:9.1f}x"
        )
    b, j = r["bilinear"], r["bilateral"]
    print(
        f"bilateral / bilinear: mIoU x{j['miou'] / b['miou']:.3f}, "
        f"boundary IoU x{j['boundary_iou'] / b['boundary_iou']:.3f}"
    )


if __name__ == "__main__":
    main()
