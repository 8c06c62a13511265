"""The teacher protocol: frozen models that turn [0, 1] images into (summary, spatial features).

Every teacher applies its own input normalisation and resizing, so the distillation loop can hand
the same [0, 1] batch to every teacher.  Spatial features are always NCHW on the teacher's token
grid (``resolution // patch_size`` per side).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from openradio.formats.safeload import CheckpointError, safe_torch_load

__all__ = ["TeacherOutput", "Teacher", "load_state_dict_file", "to_hw"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TeacherOutput(NamedTuple):
    """``summary`` (B, summary_dim) or None; ``features`` (B, feature_dim, h, w)."""

    summary: Tensor | None
    features: Tensor


def to_hw(resolution: int | Sequence[int]) -> tuple[int, int]:
    """``int`` or ``(h, w)`` -> ``(h, w)``."""
    if isinstance(resolution, int):
        return resolution, resolution
    if len(resolution) != 2:
        raise ValueError(f"A resolution is an int or a (height, width) pair, got {resolution!r}.")
    return int(resolution[0]), int(resolution[1])


class Teacher(nn.Module):
    """Base class of every teacher.

    Attributes:
        name: the teacher's name in the distillation config (e.g. ``'clip'``).
        patch_size: pixels per token side.
        input_size: native side length in pixels (used when ``resolution`` is None).
        summary_dim: width of the summary vector, None if the teacher has none (SAM).
        feature_dim: channels of the spatial features.
        multi_resolution: whether the teacher is meant to be run at many resolutions (DINOv2, SAM)
            rather than only at its native size (CLIP/SigLIP). Non-multi-resolution teachers still
            accept other resolutions (their position embeddings are resampled), but evaluations such
            as the mode-switching curve run them at ``input_size`` only.

    Subclasses implement ``_forward(x)`` on a normalised, resized batch and return
    ``(summary, features_nchw)``.  Teachers are frozen: parameters never require gradients, the
    module stays in eval mode whatever ``.train()`` is called with, and forward runs under no_grad.
    """

    multi_resolution: bool = False

    def __init__(
        self,
        name: str,
        patch_size: int,
        input_size: int,
        summary_dim: int | None,
        feature_dim: int,
        mean: Iterable[float] = IMAGENET_MEAN,
        std: Iterable[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.name = name
        self.patch_size = int(patch_size)
        self.input_size = int(input_size)
        self.summary_dim = summary_dim
        self.feature_dim = int(feature_dim)
        if self.input_size % self.patch_size:
            raise ValueError(
                f"Teacher {name!r}: input_size {self.input_size} is not a multiple of its patch size "
                f"{self.patch_size}; choose e.g. {self.input_size // self.patch_size * self.patch_size}."
            )
        # Not persistent: the state_dict holds the network's weights only, so it is interchangeable
        # with the library's own checkpoints.
        self.register_buffer(
            "pixel_mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    # -- frozen behaviour ---------------------------------------------------------------------
    def freeze(self) -> "Teacher":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "Teacher":
        # Teachers never train: dropout / drop-path must stay off even inside a student.train().
        return super().train(False)

    # -- protocol -----------------------------------------------------------------------------
    def grid_size(self, resolution: int | Sequence[int] | None = None) -> tuple[int, int]:
        """Token grid (h, w) of the features for ``resolution`` (None = ``input_size``)."""
        h, w = to_hw(self.input_size if resolution is None else resolution)
        return h // self.patch_size, w // self.patch_size

    def preprocess(self, images: Tensor, resolution: int | Sequence[int] | None = None) -> Tensor:
        """Resize [0, 1] images to ``resolution`` (bilinear, antialiased) and normalise them."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"Teacher {self.name!r} expects RGB images shaped (B, 3, H, W) in [0, 1], got {tuple(images.shape)}."
            )
        if not images.is_floating_point():
            raise TypeError(
                f"Teacher {self.name!r} expects float images in [0, 1], got {images.dtype}; divide uint8 images by 255."
            )
        h, w = to_hw(self.input_size if resolution is None else resolution)
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"Teacher {self.name!r}: resolution {h}x{w} is not a multiple of its patch size {self.patch_size}."
            )
        x = images.to(self.pixel_mean.device, torch.float32)
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std
        return x.to(self._compute_dtype())

    @torch.no_grad()
    def forward(self, images: Tensor, resolution: int | Sequence[int] | None = None) -> TeacherOutput:
        """Run the teacher on [0, 1] images at ``resolution`` (int or (h, w); None = native)."""
        x = self.preprocess(images, resolution)
        summary, features = self._forward(x)
        return TeacherOutput(summary, features)

    def _forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        raise NotImplementedError

    def _compute_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, patch_size={self.patch_size}, input_size={self.input_size}, "
            f"summary_dim={self.summary_dim}, feature_dim={self.feature_dim}, multi_resolution={self.multi_resolution}"
        )

    # -- weights ------------------------------------------------------------------------------
    def _load_into(
        self,
        module: nn.Module,
        state_dict: Mapping[str, Tensor],
        strip_prefixes: Sequence[str] = (),
        ignore_prefixes: Sequence[str] = (),
        source: str = "",
    ) -> None:
        """Strictly load ``state_dict`` into ``module`` after prefix clean-up.

        Keys of this teacher's own ``state_dict`` (prefixed ``model.``) and of the library's
        checkpoint (prefixes in ``strip_prefixes``) both work.  Keys under ``ignore_prefixes``
        belong to parts the teacher drops (a text tower, SAM's neck) and are skipped; anything else
        that does not fit is an error, so a wrong file never loads silently.
        """
        sd = dict(state_dict)
        own = list(module.state_dict())
        for prefix in ("module.", "model.", *strip_prefixes):
            own_has_prefix = bool(own) and all(k.startswith(prefix) for k in own)
            if sd and all(k.startswith(prefix) for k in sd) and not own_has_prefix:
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
        for prefix in strip_prefixes:
            # A full checkpoint (e.g. a CLIP with its text tower) has the prefix on some keys only.
            if any(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        sd = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in ignore_prefixes)}
        hint = "Check that the file is for this teacher's architecture (and the same arch_overrides / tiny setting)."
        what = (
            f"Teacher {self.name!r}: weights {source or '(state_dict)'} "
            f"do not match the model ({type(module).__name__})"
        )
        try:
            result = module.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise RuntimeError(f"{what}: {e}\n{hint}") from e
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(
                f"{what}. Missing keys: {result.missing_keys[:8]}{'...' if len(result.missing_keys) > 8 else ''}; "
                f"unexpected keys: {result.unexpected_keys[:8]}"
                f"{'...' if len(result.unexpected_keys) > 8 else ''}. {hint}"
            )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only``), unwrapping
    the usual ``{'state_dict': ...}`` / ``{'model': ...}`` containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Teacher weights file not found: {path}")

    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # a pickle or anything else under a .safetensors name: never unpickled
            raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({str(e).splitlines()[0]})") from e
    obj = safe_torch_load(path, "weights file")
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return dict(obj)
