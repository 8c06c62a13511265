"""Robust PCA of spatial features to RGB — the colour pictures of the RADIO papers.

The recipe follows the official ``visualize_features.py`` (spec/inference.md §8):

1. ``V`` = the top ``3 + skip`` right singular vectors of the (centred) token matrix from the
   randomised ``torch.pca_lowrank(q=3+skip, niter=20)``, first ``skip`` dropped. The
   randomisation is seeded so the same features always give the same picture.
2. colours ``c = F @ V`` — *uncentred*, as the official code does (the centring only affects
   the basis; the per-channel range below absorbs the offset).
3. per channel a robust range: the min/max over inliers ``|c - median| / MAD < m`` (MAD = median
   absolute deviation), so a few extreme tokens (e.g. high-norm artefact tokens) do not wash out
   the rest of the picture.
4. ``(c - min) / (max - min)`` clamped to [0, 1].

Colour order: component 0 is **red** here. The official script writes the array with
``cv2.imwrite``, which reads the channels as BGR, so its pictures show component 0 in *blue*;
that is an accident of the writer, not a choice, and we do not copy it. Swap channels 0 and 2
to match official pictures exactly.

One addition: PCA signs are arbitrary, so by default each component is flipped to make its
largest-magnitude loading positive. Pictures whose PCA is fitted separately (resolutions,
models, frames) then tend to agree in colour instead of randomly inverting a channel. Flipping a
sign only inverts that colour channel (``c -> 1 - c``); pass ``fix_signs=False`` for the raw
``pca_lowrank`` signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PCAStats", "get_robust_pca", "apply_pca", "pca_rgb", "features_to_tokens", "fit_pca_on_maps"]


@dataclass(frozen=True)
class PCAStats:
    """What it takes to colour features consistently: a projection and a per-channel range."""

    projection: Tensor  # (C, 3): feature channels -> colour components
    low: Tensor  # (3,): colour value mapped to 0
    high: Tensor  # (3,): colour value mapped to 1

    def to(self, device: torch.device | str) -> "PCAStats":
        return PCAStats(self.projection.to(device), self.low.to(device), self.high.to(device))

    @property
    def num_channels(self) -> int:
        return int(self.projection.shape[0])


def features_to_tokens(features: Tensor) -> Tensor:
    """Flatten spatial features to an ``(N, C)`` token matrix.

    Accepts ``(B, C, H, W)`` (NCHW, the model's ``feature_fmt='NCHW'``), ``(H, W, C)`` (channels
    last, as the official scripts hold one map) or an ``(N, C)`` matrix, returned as is.
    """
    if features.ndim == 4:
        return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    if features.ndim == 3:
        return features.reshape(-1, features.shape[-1])
    if features.ndim == 2:
        return features
    raise ValueError(f"expected features of shape (B, C, H, W), (H, W, C) or (N, C), got {tuple(features.shape)}")


def _seeded_pca_lowrank(tokens: Tensor, q: int, seed: int) -> Tensor:
    """``torch.pca_lowrank(tokens, q, niter=20)[2]`` with its random projection seeded.

    ``pca_lowrank`` draws from the global generator of the tensor's device and takes no
    generator argument, so we fork that one generator, seed it, and restore it afterwards —
    callers' random streams are left untouched.
    """
    dev = tokens.device
    if dev.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.pca_lowrank(tokens, q=q, niter=20)[2]
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            torch.cuda.manual_seed(seed)  # this device only; other GPUs' streams are untouched
            return torch.pca_lowrank(tokens, q=q, niter=20)[2]
    # Other backends: forking their generators is not uniformly supported; the basis is small.
    return _seeded_pca_lowrank(tokens.cpu(), q, seed).to(dev)


def _robust_range(colours: Tensor, m: float) -> tuple[Tensor, Tensor]:
    """Per-column min/max over inliers ``|c - median| / MAD < m``."""
    med = colours.median(dim=0).values
    dev = (colours - med).abs()
    mad = dev.median(dim=0).values
    lows, highs = [], []
    for k in range(colours.shape[1]):
        c = colours[:, k]
        if mad[k] > 0:
            inl = c[dev[:, k] / mad[k] < m]
        else:
            # More than half the values sit exactly on the median: the MAD cannot scale
            # deviations, so every value counts as an inlier.
            inl = c
        lows.append(inl.min())
        highs.append(inl.max())
    return torch.stack(lows), torch.stack(highs)


def get_robust_pca(features: Tensor, m: float = 2.0, skip: int = 0, seed: int = 42, fix_signs: bool = True) -> PCAStats:
    """Fit a 3-component PCA colouring with robust per-channel ranges.

    Args:
        features: ``(N, C)`` tokens, or spatial maps ``(B, C, H, W)`` / ``(H, W, C)``.
        m: inlier threshold in MADs for the colour range (official default 2).
        skip: leading principal components to drop (``skip=1`` shows components 2-4, useful when
            the first component is a global brightness gradient).
        seed: seed of the randomised ``pca_lowrank`` (official: 42 + rank).
        fix_signs: flip components so their largest loading is positive (see module docstring).
    """
    if m <= 0:
        raise ValueError(f"m (inlier threshold in MADs) must be positive, got {m}")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    tokens = features_to_tokens(features).float()
    q = 3 + skip
    n, c = tokens.shape
    if c < q or n < q:
        raise ValueError(
            f"robust PCA needs at least {q} tokens and {q} channels (3 colours + skip={skip}); "
            f"got {n} tokens with {c} channels"
        )
    if not torch.isfinite(tokens).all():
        raise ValueError("features contain NaN or Inf; cannot colour them (check the model/input, or --amp)")
    v = _seeded_pca_lowrank(tokens, q, seed)[:, skip:]
    if fix_signs:
        idx = v.abs().argmax(dim=0)
        signs = torch.sign(v[idx, torch.arange(v.shape[1], device=v.device)])
        v = v * torch.where(signs == 0, torch.ones_like(signs), signs)
    low, high = _robust_range(tokens @ v, m)
    return PCAStats(projection=v.contiguous(), low=low, high=high)


def apply_pca(features: Tensor, stats: PCAStats) -> Tensor:
    """Colour features with fitted :class:`PCAStats`; values in [0, 1], channels RGB.

    ``(B, C, H, W)`` → ``(B, H, W, 3)``; ``(H, W, C)`` → ``(H, W, 3)``; ``(N, C)`` → ``(N, 3)``.
    """
    if features.shape[-1 if features.ndim != 4 else 1] != stats.num_channels:
        raise ValueError(
            f"features have {features.shape[-1 if features.ndim != 4 else 1]} channels but the PCA "
            f"was fitted on {stats.num_channels}; fit it on features from the same model/adaptor"
        )
    s = stats.to(features.device)
    if features.ndim == 4:
        x = features.permute(0, 2, 3, 1)
    elif features.ndim in (2, 3):
        x = features
    else:
        raise ValueError(f"expected features of shape (B, C, H, W), (H, W, C) or (N, C), got {tuple(features.shape)}")
    colours = x.float() @ s.projection
    # A constant channel would divide by zero; it maps to 0 instead.
    span = (s.high - s.low).clamp_min(1e-12)
    return ((colours - s.low) / span).clamp_(0.0, 1.0)


def _to_nchw(feature_map: Tensor) -> Tensor:
    if feature_map.ndim == 4:
        if feature_map.shape[0] != 1:
            raise ValueError(
                f"pca_rgb colours one feature map; got a batch of {feature_map.shape[0]} "
                "(use get_robust_pca + apply_pca for batches)"
            )
        return feature_map
    if feature_map.ndim == 3:
        return feature_map.permute(2, 0, 1)[None]
    raise ValueError(f"expected a (1, C, H, W) or (H, W, C) feature map, got shape {tuple(feature_map.shape)}")


def upsample_rgb(rgb: Tensor, size: Sequence[int], interpolation: str = "bilinear") -> Tensor:
    """Resize ``(..., H, W, 3)`` colour maps to ``size = (height, width)``; values stay in [0, 1]."""
    squeeze = rgb.ndim == 3
    x = (rgb[None] if squeeze else rgb).permute(0, 3, 1, 2)
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) != size:
        kw = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=size, mode=interpolation, **kw).clamp_(0.0, 1.0)
    x = x.permute(0, 2, 3, 1)
    return x[0] if squeeze else x


def pca_rgb(
    feature_map: Tensor,
    image_size: Sequence[int],
    interpolation: str = "bilinear",
    stats: PCAStats | None = None,
    m: float = 2.0,
    skip: int = 0,
    seed: int = 42,
) -> Tensor:
    """One feature map coloured by robust PCA and upsampled to ``image_size = (height, width)``.

    ``feature_map`` is ``(1, C, h, w)`` or ``(h, w, C)``. The PCA is fitted on this map unless
    ``stats`` is given (to share colours across maps). Returns ``(height, width, 3)`` RGB in [0, 1].
    Interpolation as in ``F.interpolate``: ``'bilinear'`` (smooth) or ``'nearest'`` (shows tokens).
    """
    fm = _to_nchw(feature_map)
    if stats is None:
        stats = get_robust_pca(fm, m=m, skip=skip, seed=seed)
    rgb = apply_pca(fm, stats)[0]
    return upsample_rgb(rgb, image_size, interpolation)


def fit_pca_on_maps(
    maps: Sequence[Tensor], m: float = 2.0, skip: int = 0, seed: int = 42, max_tokens_per_map: int | None = None
) -> PCAStats:
    """One PCA shared by several feature maps (e.g. one image at several resolutions).

    Each map contributes at most as many tokens as the smallest one (an evenly strided subset),
    so a high-resolution map does not dominate the colours of the others.
    """
    if not maps:
        raise ValueError("fit_pca_on_maps needs at least one feature map")
    toks = [features_to_tokens(x).float() for x in maps]
    chans = {t.shape[1] for t in toks}
    if len(chans) != 1:
        raise ValueError(f"feature maps have different channel counts {sorted(chans)}; cannot share one PCA")
    budget = min(t.shape[0] for t in toks)
    if max_tokens_per_map is not None:
        budget = min(budget, max_tokens_per_map)
    picked = []
    for t in toks:
        if t.shape[0] > budget:
            idx = torch.linspace(0, t.shape[0] - 1, budget, device=t.device).round().long()
            t = t[idx]
        picked.append(t)
    return get_robust_pca(torch.cat([p.to(picked[0].device) for p in picked]), m=m, skip=skip, seed=seed)
