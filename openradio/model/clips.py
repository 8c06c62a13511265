"""Clip bookkeeping shared by RADIOModel and openradio.model.video: unpacking temporally packed
clips into frames, checking lists of clip frames, and slicing / repeating batch outputs."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["clip_to_frames", "check_clip_list", "output_row", "repeat_rows"]


def clip_to_frames(clips: torch.Tensor, temporal_patch_size: Optional[int], in_chans: int = 3) -> torch.Tensor:
    """Clips (B, T, C, H, W) or packed (B, T*C, H, W) -> their frames (B*T, C, H, W)."""
    T, C = temporal_patch_size, in_chans
    if T is None:
        raise ValueError(
            f"got clips shaped {tuple(clips.shape)}, but this model has no temporal (video) patch "
            "projection: run frames as images, model(frames) with frames (N, 3, H, W) (inside "
            "model.cpe_video_mode(t) to share one position crop per clip in training)"
        )
    if clips.ndim == 5:
        if clips.shape[1] != T:
            raise ValueError(
                f"clips must hold {T} frames (the model's temporal patch size), got "
                f"{clips.shape[1]} in {tuple(clips.shape)}: split a video of N frames into "
                f"clips with frames[:N // {T} * {T}].reshape(-1, {T}, C, H, W)"
            )
        return clips.reshape(-1, *clips.shape[2:])
    if clips.ndim == 4 and clips.shape[1] == T * C:
        return clips.reshape(clips.shape[0] * T, C, *clips.shape[2:])
    raise ValueError(
        f"expected clips shaped (B, {T}, {C}, H, W) or packed (B, {T * C}, H, W), got {tuple(clips.shape)}"
    )


def check_clip_list(xs: list[torch.Tensor], t: int) -> None:
    """``xs`` (batches of one) are whole clips of ``t`` frames, each clip of one size."""
    if len(xs) % t:
        raise ValueError(
            f"in cpe_video_mode({t}) forward_images takes whole clips of {t} frames, got {len(xs)} "
            "images: pass a multiple of the clip length"
        )
    for j in range(0, len(xs), t):
        sizes = {tuple(x.shape[1:]) for x in xs[j : j + t]}
        if len(sizes) > 1:
            raise ValueError(
                f"the frames of clip {j // t} (images {j}..{j + t - 1}) differ in size {sorted(sizes)}: "
                "a clip shares one position crop, so its frames must share one size"
            )


def output_row(out, i: int):
    """Row ``i`` of a batch output (a RadioOutput, or the adaptor dict of them) as a batch of one."""
    if isinstance(out, dict):
        return {k: output_row(v, i) for k, v in out.items()}
    return type(out)(out.summary[i : i + 1], out.features[i : i + 1])


def repeat_rows(out, t: int):
    """Every row of a batch output repeated ``t`` times (one clip's output for each of its frames)."""
    if isinstance(out, dict):
        return {k: repeat_rows(v, t) for k, v in out.items()}
    return type(out)(out.summary.repeat_interleave(t, dim=0), out.features.repeat_interleave(t, dim=0))
