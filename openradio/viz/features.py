"""Run a RADIO model on images and turn its spatial features into colour pictures.

These are the model-facing steps shared by ``openradio viz``, ``openradio viz-video`` and
notebooks: resize an image to a resolution the model accepts, take the NCHW spatial features
(an adaptor's or the backbone's), and colour them with the robust PCA of :mod:`.pca`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from openradio.inputs.imageio import resize_center_crop, resize_to_multiple
from openradio.model.video import forward_frames
from openradio.runtime import autocast, model_resolution, module_device, supported_resolution
from openradio.viz.pca import PCAStats, fit_pca_on_maps, pca_rgb

__all__ = [
    "FeatureImage",
    "model_device",
    "prepare_input",
    "model_features",
    "visualize_image",
    "resolution_features",
    "colour_maps",
]


class FeatureImage(NamedTuple):
    image: Tensor  # (3, H, W) model input in [0, 1]
    features: Tensor  # (1, C, h, w) float32 spatial features
    rgb: Tensor  # (H, W, 3) PCA colours in [0, 1], at the input's size


model_device = module_device


def prepare_input(image: Tensor, model: nn.Module, resolution: int, square: bool = False) -> Tensor:
    """Resize a ``(3, H, W)`` [0, 1] image (or a ``(B, 3, H, W)`` batch) to a size the model accepts.

    ``square=False`` keeps the aspect: shorter side ``resolution``, sides rounded to
    ``model.min_resolution_step`` (the examples' ``ResizeTransform(res, min_resolution_step)``).
    ``square=True`` centre-crops to ``resolution x resolution`` (rounded to a supported size).
    """
    if square:
        res = model.get_nearest_supported_resolution(resolution, resolution)
        return resize_center_crop(image, (int(res[0]), int(res[1])))
    return resize_to_multiple(image, resolution, int(model.min_resolution_step))


def model_features(
    model: nn.Module, x: Tensor, adaptor: str | None = None, amp: bool = False, clip_frames: int = 1
) -> Tensor:
    """Spatial features ``(B, C, h, w)`` (float32) of a ``(B, 3, H, W)`` [0, 1] batch.

    With ``adaptor`` the named adaptor's features (the model must have been loaded with it),
    otherwise the backbone's. ``amp`` runs under bf16 autocast. ``clip_frames`` T > 1: the batch
    is consecutive video frames in clips of T (see :func:`openradio.model.video.forward_frames`).
    """
    device = model_device(model)
    if x.ndim == 3:
        x = x[None]
    x = x.to(device=device, dtype=torch.float32)
    with torch.inference_mode(), autocast(device, amp):
        out = (
            model(x, feature_fmt="NCHW")
            if clip_frames == 1
            else forward_frames(model, x, clip_frames, feature_fmt="NCHW")
        )
    if isinstance(out, dict):
        key = adaptor or "backbone"
        if key not in out:
            raise ValueError(
                f"the model returned no {key!r} output; it has {sorted(out)} "
                f"(load it with adaptor_names=[{key!r}] / pass --adaptor {key})"
            )
        out = out[key]
    elif adaptor is not None:
        raise ValueError(
            f"adaptor {adaptor!r} was requested but the model has no adaptors loaded; "
            f"load it with adaptor_names=[{adaptor!r}]"
        )
    feats = out.features if hasattr(out, "features") else out[1]
    if feats.ndim != 4:
        raise ValueError(f"expected NCHW spatial features from the model, got shape {tuple(feats.shape)}")
    return feats.float()


def visualize_image(
    model: nn.Module,
    image: Tensor,
    resolution: int | None = None,
    adaptor: str | None = None,
    *,
    square: bool = False,
    interpolation: str = "bilinear",
    stats: PCAStats | None = None,
    amp: bool = False,
    m: float = 2.0,
    skip: int = 0,
    seed: int = 42,
) -> FeatureImage:
    """Resize ``image`` for the model, run it, and colour the features by robust PCA.

    ``resolution`` defaults to the model's preferred one (512 if it has none). The colours are
    fitted on this image unless ``stats`` is given.
    """
    res = model_resolution(model, resolution)
    x = prepare_input(image, model, res, square=square)
    feats = model_features(model, x, adaptor=adaptor, amp=amp)
    rgb = pca_rgb(feats, x.shape[-2:], interpolation=interpolation, stats=stats, m=m, skip=skip, seed=seed)
    return FeatureImage(x, feats.cpu(), rgb.cpu())


def resolution_features(
    model: nn.Module,
    image: Tensor,
    resolutions: Sequence[int],
    adaptor: str | None = None,
    *,
    square: bool = False,
    amp: bool = False,
) -> list[tuple[int, Tensor, Tensor]]:
    """``[(resolution, input (3, H, W), features (1, C, h, w)), ...]`` for each requested resolution.

    Resolutions are rounded to supported ones; duplicates after rounding are dropped.
    """
    out, seen = [], set()
    for r in resolutions:
        r = supported_resolution(model, r)
        if r in seen:
            continue
        seen.add(r)
        x = prepare_input(image, model, r, square=square)
        out.append((r, x, model_features(model, x, adaptor=adaptor, amp=amp).cpu()))
    return out


def colour_maps(
    maps: Sequence[Tensor],
    size: Sequence[int],
    interpolation: str = "bilinear",
    shared: bool = False,
    m: float = 2.0,
    skip: int = 0,
    seed: int = 42,
) -> list[Tensor]:
    """Colour several ``(1, C, h, w)`` maps at one display ``size``: one PCA each, or one shared PCA."""
    stats = fit_pca_on_maps(list(maps), m=m, skip=skip, seed=seed) if shared else None
    return [pca_rgb(f, size, interpolation=interpolation, stats=stats, m=m, skip=skip, seed=seed) for f in maps]
