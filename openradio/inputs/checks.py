"""Checks on the images handed to a RADIO model: a clear error instead of a silent wrong answer.

``RADIOModel`` expects float images in [0, 1], shaped (B, 3, H, W) (one channel is taken as grey
and broadcast, as the official code does). Integer tensors (0..255), other channel counts, and on
CPU NaN/Inf values or values that look like 0..255 are refused with a message saying what to do.
On GPUs (and while tracing for export or compilation) the value checks are skipped: they would
force a device synchronisation on every call, or a data-dependent branch into the graph (NaN/Inf
inputs then show as NaN outputs).
"""

from __future__ import annotations

import torch

from openradio.runtime import capturing

__all__ = ["check_image_values"]

# A float input whose largest magnitude exceeds this is not in [0, 1] (a bicubic resize overshoots
# by a few percent; mean/std-normalised inputs stay within ~3): it looks like 0..255 values.
MAX_ABS = 10.0


def check_image_values(x: torch.Tensor) -> None:
    """Raise ``ValueError`` for images the model would turn into a silently wrong answer."""
    if not torch.is_floating_point(x):
        hint = " (x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise ValueError(
            f"expected float images with values in [0, 1], got a {str(x.dtype).replace('torch.', '')} "
            f"tensor: convert it first{hint}"
        )
    c = x.shape[1]
    if c not in (1, 3):
        hint = ": drop the alpha channel (x[:, :3])" if c == 4 else ""
        raise ValueError(f"expected RGB images with 3 channels (or 1 for grey), got {c} channels{hint}")
    if x.device.type != "cpu" or x.numel() == 0 or capturing():
        return
    peak = x.detach().abs().amax()
    if not torch.isfinite(peak):
        raise ValueError("the images contain NaN or Inf values; the model's outputs would be NaN")
    if float(peak) > MAX_ABS:
        raise ValueError(
            f"the images have values up to {float(peak):.4g}, but the model expects [0, 1]: divide 0..255 images by 255"
        )
