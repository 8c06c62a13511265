"""Image-guided upsampling of RADIO's 1/16-resolution feature maps to pixel resolution.

Joint bilateral upsampling (Kopf et al., 2007): the value at pixel p is a weighted mean of the
low-resolution features f(q) of the grid cells q around p,

    F(p) = sum_q f(q) w_s(p, q) w_r(p, q) / sum_q w_s(p, q) w_r(p, q),
    w_s = exp(-|p - q|^2 / (2 sigma_spatial^2))      (distance in feature-grid cells)
    w_r = exp(-|I(p) - I_q|^2 / (2 sigma_range^2))    (I(p): the pixel's colour, I_q: the cell's
                                                      mean colour, the image area-pooled to the grid)

so a pixel takes its features from the neighbouring cells that look like it, and feature edges
follow the image's edges instead of the 16-pixel grid. The cells within ``radius`` of the
pixel's nearest cell take part. Plain torch ops (differentiable), computed in chunks of output
rows to bound memory; the weights sum to one, so affine heads (a linear probe) commute with it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["joint_bilateral_upsample", "upsample_features", "METHODS"]

METHODS = ("bilateral", "bilinear")


def _batched(features: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    squeeze = features.ndim == 3
    if squeeze:
        features = features[None]
    if image.ndim == 3:
        image = image[None]
    if features.ndim != 4 or image.ndim != 4:
        raise ValueError(
            f"expected features (B, C, h, w) and images (B, 3, H, W), got {tuple(features.shape)} "
            f"and {tuple(image.shape)}"
        )
    if image.shape[0] != features.shape[0]:
        if image.shape[0] == 1:
            image = image.expand(features.shape[0], -1, -1, -1)
        else:
            raise ValueError(f"{features.shape[0]} feature maps for {image.shape[0]} images")
    return features, image, squeeze


def joint_bilateral_upsample(
    features: torch.Tensor,
    image: torch.Tensor,
    *,
    radius: int = 2,
    sigma_spatial: float = 1.0,
    sigma_range: float = 0.1,
    max_elements: int = 1 << 24,
    size: Optional[tuple[int, int]] = None,
) -> torch.Tensor:
    """(B, C, h, w) features -> (B, C, H, W) guided by ``image`` (B, 3, H, W) in [0, 1].

    ``radius``: cells each side of the nearest one (2: a 5 x 5 neighbourhood);
    ``sigma_spatial`` in cells; ``sigma_range`` in colour units of [0, 1] images;
    ``max_elements``: about how many float values one chunk of output rows may hold per
    neighbour (memory bound); ``size``: output size (default: the image's).
    """
    features, image, squeeze = _batched(features, image)
    if radius < 0 or sigma_spatial <= 0 or sigma_range <= 0:
        raise ValueError("radius must be >= 0 and sigma_spatial, sigma_range > 0")
    B, C, h, w = features.shape
    if size is not None and tuple(size) != tuple(image.shape[-2:]):
        image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    H, W = image.shape[-2:]
    dtype = torch.promote_types(features.dtype, torch.float32)
    feats = features.to(dtype)
    img = image.to(device=features.device, dtype=dtype)
    guide = F.adaptive_avg_pool2d(img, (h, w))  # (B, 3, h, w): each cell's mean colour
    # continuous grid coordinates of the pixel centres (align_corners=False convention)
    u_all = (torch.arange(H, device=feats.device, dtype=dtype) + 0.5) * (h / H) - 0.5
    v = (torch.arange(W, device=feats.device, dtype=dtype) + 0.5) * (w / W) - 0.5
    k0 = torch.floor(v + 0.5).long()
    inv_s = 1.0 / (2 * sigma_spatial**2)
    inv_r = 1.0 / (2 * sigma_range**2)
    rows = max(1, min(H, max_elements // max(B * max(C, 3) * W, 1)))
    out = torch.empty(B, C, H, W, device=feats.device, dtype=dtype)
    offsets = range(-radius, radius + 1)
    for y0 in range(0, H, rows):
        y1 = min(H, y0 + rows)
        u = u_all[y0:y1]
        j0 = torch.floor(u + 0.5).long()
        pix = img[:, :, y0:y1]  # (B, 3, R, W)
        acc = torch.zeros(B, C, y1 - y0, W, device=feats.device, dtype=dtype)
        wsum = torch.zeros(B, 1, y1 - y0, W, device=feats.device, dtype=dtype)
        for dy in offsets:
            j = j0 + dy
            jv = (j >= 0) & (j < h)
            jc = j.clamp(0, h - 1)
            f_rows = feats.index_select(2, jc)  # (B, C, R, w)
            g_rows = guide.index_select(2, jc)
            for dx in offsets:
                k = k0 + dx
                kv = (k >= 0) & (k < w)
                kc = k.clamp(0, w - 1)
                ws = torch.exp(-((u - j.to(dtype)) ** 2)[:, None] * inv_s - ((v - k.to(dtype)) ** 2)[None, :] * inv_s)
                ws = ws * (jv[:, None] & kv[None, :]).to(dtype)  # (R, W)
                g = g_rows.index_select(3, kc)  # (B, 3, R, W)
                wr = torch.exp(-((pix - g) ** 2).sum(1, keepdim=True) * inv_r)
                # a tiny floor keeps the spatial weights when no neighbour looks like the pixel
                wgt = ws * (wr + 1e-8)
                acc += wgt * f_rows.index_select(3, kc)
                wsum += wgt
        out[:, :, y0:y1] = acc / wsum.clamp_min(1e-30)
    out = out.to(features.dtype) if features.dtype != dtype else out
    return out[0] if squeeze else out


def upsample_features(features: torch.Tensor, image: torch.Tensor, method: str = "bilateral", **kwargs) -> torch.Tensor:
    """Features (B, C, h, w) or (C, h, w) at the resolution of ``image`` (B, 3, H, W) or (3, H, W)
    in [0, 1]: ``'bilateral'`` (:func:`joint_bilateral_upsample`, ``kwargs`` its options) or
    ``'bilinear'`` (``F.interpolate``, align_corners=False)."""
    if method == "bilateral":
        return joint_bilateral_upsample(features, image, **kwargs)
    if method == "bilinear":
        f, img, squeeze = _batched(features, image)
        out = F.interpolate(f, size=kwargs.get("size") or tuple(img.shape[-2:]), mode="bilinear", align_corners=False)
        return out[0] if squeeze else out
    raise ValueError(f"unknown upsampling method {method!r}; use one of {list(METHODS)}")
