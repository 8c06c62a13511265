"""Mosaic packing: run a high-resolution teacher once for several low-resolution student views.

RADIOv2.5 trains a low-resolution partition (e.g. 432 px) against every teacher, including SAM
whose native input is 1024.  Rather than upsampling each view (which would make SAM see a blurry
image at a scale it never saw), several views are tiled onto one teacher canvas:
64 // 27 = 2 views per side on a 1024 canvas with patch 16, pitch 1024 / 2 = 512 px, each view at
its tile's top-left corner and zero padding elsewhere.  The teacher runs once per canvas and each
view's 27x27 window is sliced out of its 64x64 feature map: 4x fewer passes and no interpolation.

Views start on token boundaries (the pitch is a whole number of teacher patches), so a view's
window in the canvas feature map lines up exactly with its own patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MosaicLayout", "plan_mosaic", "pack_mosaic", "unpack_features", "mosaic_pad_value"]


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    if len(v) != 2 or any(int(x) != x or x < 1 for x in v):
        raise ValueError(f"{what} must be a positive int or a (height, width) pair, got {v!r}.")
    return int(v[0]), int(v[1])


@dataclass(frozen=True)
class MosaicLayout:
    """Where each view sits: ``positions[i] = (canvas_index, top_px, left_px)``."""

    num_views: int
    view_size: tuple[int, int]
    canvas_size: tuple[int, int]
    patch_size: int
    views_per_side: tuple[int, int]
    pitch: tuple[int, int]
    positions: tuple[tuple[int, int, int], ...]

    @property
    def views_per_canvas(self) -> int:
        return self.views_per_side[0] * self.views_per_side[1]

    @property
    def num_canvases(self) -> int:
        return -(-self.num_views // self.views_per_canvas)

    @property
    def view_tokens(self) -> tuple[int, int]:
        return self.view_size[0] // self.patch_size, self.view_size[1] // self.patch_size

    @property
    def canvas_tokens(self) -> tuple[int, int]:
        return self.canvas_size[0] // self.patch_size, self.canvas_size[1] // self.patch_size


def plan_mosaic(
    num_views: int,
    view_size: int | tuple[int, int],
    canvas_size: int | tuple[int, int],
    patch_size: int,
) -> MosaicLayout:
    """Lay ``num_views`` views of ``view_size`` px onto canvases of ``canvas_size`` px (teacher patch ``patch_size``).

    Per axis: ``k = canvas_tokens // view_tokens`` views, pitch ``(canvas_tokens // k) * patch_size``
    px; views fill a canvas row by row, and the last canvas may be partly empty.
    """
    vh, vw = _pair(view_size, "view_size")
    ch, cw = _pair(canvas_size, "canvas_size")
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}.")
    if vh % patch_size or vw % patch_size:
        raise ValueError(
            f"View size {vh}x{vw} is not a multiple of the teacher patch size {patch_size}: the views' "
            "feature windows would not line up with the teacher's patches. Pick a view size that is."
        )
    if ch % patch_size or cw % patch_size:
        raise ValueError(f"Canvas size {ch}x{cw} is not a multiple of the teacher patch size {patch_size}.")
    if vh > ch or vw > cw:
        raise ValueError(f"View size {vh}x{vw} is larger than the canvas {ch}x{cw}; no mosaic is possible.")
    vt = (vh // patch_size, vw // patch_size)
    ct = (ch // patch_size, cw // patch_size)
    k = (ct[0] // vt[0], ct[1] // vt[1])
    pitch = ((ct[0] // k[0]) * patch_size, (ct[1] // k[1]) * patch_size)
    per_canvas = k[0] * k[1]
    positions = []
    for i in range(num_views):
        canvas, slot = divmod(i, per_canvas)
        row, col = divmod(slot, k[1])
        positions.append((canvas, row * pitch[0], col * pitch[1]))
    return MosaicLayout(
        num_views=num_views,
        view_size=(vh, vw),
        canvas_size=(ch, cw),
        patch_size=patch_size,
        views_per_side=k,
        pitch=pitch,
        positions=tuple(positions),
    )


def pack_mosaic(
    views: Tensor,
    canvas_size: int | tuple[int, int],
    patch_size: int,
    pad_value: float | Tensor = 0.0,
) -> tuple[Tensor, MosaicLayout]:
    """Tile ``views`` (B, 3, h, w) onto canvases (ceil(B / k^2), 3, H, W) filled with ``pad_value``:
    a number, or one value per channel (e.g. the teacher's mean colour, which its input
    normalisation maps to zero)."""
    if views.ndim != 4:
        raise ValueError(f"pack_mosaic expects views shaped (B, C, H, W), got {tuple(views.shape)}.")
    layout = plan_mosaic(views.shape[0], tuple(views.shape[2:]), canvas_size, patch_size)
    ch, cw = layout.canvas_size
    vh, vw = layout.view_size
    shape = (layout.num_canvases, views.shape[1], ch, cw)
    if isinstance(pad_value, Tensor):
        if pad_value.numel() != views.shape[1]:
            raise ValueError(
                f"pad_value has {pad_value.numel()} values for {views.shape[1]} channels; "
                "give one per channel or a single number."
            )
        canvases = pad_value.to(views).reshape(1, -1, 1, 1).expand(shape).clone()
    else:
        canvases = views.new_full(shape, pad_value)
    for i, (c, top, left) in enumerate(layout.positions):
        canvases[c, :, top : top + vh, left : left + vw] = views[i]
    return canvases, layout


def unpack_features(canvas_feats: Tensor, layout: MosaicLayout) -> Tensor:
    """Slice each view's window out of the canvas feature maps (N, C, Ht, Wt) -> (B, C, th, tw)."""
    if canvas_feats.ndim != 4:
        raise ValueError(f"unpack_features expects NCHW canvas features, got {tuple(canvas_feats.shape)}.")
    if canvas_feats.shape[0] != layout.num_canvases or tuple(canvas_feats.shape[2:]) != layout.canvas_tokens:
        raise ValueError(
            f"Canvas features {tuple(canvas_feats.shape)} do not match the layout: expected "
            f"({layout.num_canvases}, C, {layout.canvas_tokens[0]}, {layout.canvas_tokens[1]}). "
            "Run the teacher on the packed canvases at their native size."
        )
    p = layout.patch_size
    th, tw = layout.view_tokens
    windows = [
        canvas_feats[c, :, top // p : top // p + th, left // p : left // p + tw] for c, top, left in layout.positions
    ]
    return torch.stack(windows)


def mosaic_pad_value(teacher, mode: str):
    """What fills a canvas outside its views (``TrainConfig.mosaic_pad``): ``'zero'``, or
    ``'teacher_mean'``: the teacher's mean colour, i.e. zero after its input normalisation."""
    return teacher.pixel_mean.flatten() if mode == "teacher_mean" else 0.0
