"""Videos through a RADIO model: clips of frames that share one CPE viewport, and temporally packed clips.

A video meets the model in one of two ways, and :func:`forward_frames` gives one output row per
frame for both, so callers (``openradio viz-video``, data-set extraction) treat a video as a
sequence of frames and only choose the clip length:

* **CPE video mode** (any model; the official ``model.cpe_video_mode(t)``): consecutive clips of
  ``clip_frames`` frames run as images, and in training mode the frames of a clip share one random
  crop of the position grid (one viewport) instead of one crop per frame, so the model sees the
  clip as one scene. In eval mode every frame gets the same positions anyway: outputs do not
  change, as officially.
* **Temporal packing** (a model whose checkpoint has a video patch projection, e.g. the vision
  encoder of Nemotron-3-Nano-Omni; ``model.temporal_patch_size`` T): a clip of T frames is one
  token grid of p x p x T tubes (:meth:`openradio.model.radio.RADIOModel.forward_video`); its
  output is given to each of its T frames.

A video whose length is not a multiple of the clip length: :func:`pad_to_clips` repeats the last
frame (and says how many frames were real).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from openradio.model.clips import repeat_rows
from openradio.model.radio import LOADED, RadioOutput

__all__ = ["forward_frames", "pad_to_clips", "uses_temporal_packing", "check_clip_frames"]

Output = Union[RadioOutput, dict]


def check_clip_frames(clip_frames: int) -> int:
    if isinstance(clip_frames, bool) or int(clip_frames) != clip_frames or clip_frames < 1:
        raise ValueError(f"clip_frames must be a positive number of frames, got {clip_frames!r}")
    return int(clip_frames)


def uses_temporal_packing(model: nn.Module, clip_frames: int) -> bool:
    """Whether clips of ``clip_frames`` go through the model's temporally packed video projection:
    the model has one, and it packs exactly that many frames."""
    t = getattr(model, "temporal_patch_size", None)
    return t is not None and check_clip_frames(clip_frames) == t


def pad_to_clips(frames: torch.Tensor, clip_frames: int) -> tuple[torch.Tensor, int]:
    """``frames`` (N, ...) padded by repeating the last frame to a multiple of ``clip_frames``,
    and N (the rows of :func:`forward_frames` past N belong to the padding: drop them)."""
    t = check_clip_frames(clip_frames)
    n = frames.shape[0]
    if n == 0:
        raise ValueError("no frames")
    extra = -n % t
    if extra:
        frames = torch.cat([frames, frames[-1:].expand(extra, *frames.shape[1:])])
    return frames, n


def forward_frames(
    model: nn.Module,
    frames: torch.Tensor,
    clip_frames: int = 1,
    *,
    temporal: Optional[bool] = None,
    feature_fmt: str = "NLC",
    vitdet_window=LOADED,
) -> Output:
    """The frames of one video, (N, 3, H, W) in [0, 1] and in order, -> the model's output with one
    row per frame (a ``RadioOutput``, or the adaptor dict).

    ``clip_frames`` T: consecutive T frames form a clip (N must be a multiple of T; see
    :func:`pad_to_clips`). ``temporal`` (default: when the model's temporal patch size is T) runs
    each clip through the temporally packed video projection, one output per clip repeated for its
    T frames; otherwise the frames run as images in ``model.cpe_video_mode(T)``, so the frames of a
    clip share one CPE viewport (training mode; eval positions are shared anyway)."""
    t = check_clip_frames(clip_frames)
    if frames.ndim != 4:
        raise ValueError(f"expected the frames of one video shaped (N, 3, H, W), got {tuple(frames.shape)}")
    n = frames.shape[0]
    if n % t:
        raise ValueError(
            f"{n} frames do not split into clips of {t}: pad the last clip "
            "(openradio.model.video.pad_to_clips) or pass whole clips"
        )
    if temporal is None:
        temporal = uses_temporal_packing(model, t)
    if temporal:
        size = getattr(model, "temporal_patch_size", None)
        if size is None:
            raise ValueError(
                "temporal packing needs a model with a temporal (video) patch projection; this one has "
                "no temporal projection (run with temporal=False: frames share a CPE viewport per clip)"
            )
        if size != t:
            raise ValueError(
                f"temporal packing needs clips of the model's temporal patch size ({size}), got clip_frames={t}"
            )
        out = model(frames.reshape(n // t, t, *frames.shape[1:]), feature_fmt=feature_fmt, vitdet_window=vitdet_window)
        return repeat_rows(out, t)
    if t == 1:
        return model(frames, feature_fmt=feature_fmt, vitdet_window=vitdet_window)
    with model.cpe_video_mode(t):
        return model(frames, feature_fmt=feature_fmt, vitdet_window=vitdet_window)
