"""Training-image transforms: the random resized crop + flip augmentation, the deterministic
resize + centre crop (what a teacher-feature cache needs), and the square resize the trainer and
the cache apply to a batch for each student or teacher resolution.

Every transform takes a float ``[0, 1]`` (or uint8) ``(C, H, W)`` tensor and, when it draws
randomness, the per-sample ``torch.Generator`` of :func:`openradio.distill.sampling.apply_transform`.
torchvision is imported with this module, not at the first call: DataLoader workers are forked
from the process that built the transforms, and a first import in every worker costs seconds each.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "RandomResizedCropFlip",
    "make_train_transform",
    "ResizeCenterCrop",
    "make_partition_transform",
    "resize_square",
]

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


class RandomResizedCropFlip:
    """Random resized crop to ``size`` then a random horizontal flip, on float ``(3, H, W)`` tensors.

    The crop box follows the usual Inception-style recipe: a target area uniform in
    ``scale * H * W`` and a log-uniform aspect ratio in ``ratio``, up to ten tries, then a
    centred crop clamped to the ratio range. All randomness comes from the ``generator`` passed
    to :meth:`__call__` (global RNG when ``None``), which is what makes samples reproducible.
    """

    accepts_generator = True  # apply_transform passes a per-sample generator

    def __init__(
        self,
        size: Union[int, Sequence[int]],
        scale: Sequence[float] = (0.35, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = True,
        interpolation: str = "bilinear",
    ):
        if isinstance(size, int):
            size = (size, size)
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"crop size must be a positive int or (height, width), got {size}")
        scale = tuple(float(s) for s in scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be (min, max) area fractions with 0 < min <= max <= 1, got {scale}")
        ratio = tuple(float(r) for r in ratio)
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (min, max) aspect ratios with 0 < min <= max, got {ratio}")
        _check_interpolation(interpolation)
        self.size, self.scale, self.ratio = size, scale, ratio
        self.flip, self.interpolation = bool(flip), interpolation

    def __repr__(self) -> str:
        return (
            f"RandomResizedCropFlip(size={self.size}, scale={self.scale}, ratio="
            f"({self.ratio[0]:.3f}, {self.ratio[1]:.3f}), flip={self.flip}, interpolation={self.interpolation!r})"
        )

    def get_params(
        self, height: int, width: int, generator: Optional[torch.Generator] = None
    ) -> tuple[int, int, int, int]:
        """``(top, left, crop_height, crop_width)`` of a random crop box in a ``height x width`` image."""
        area = height * width
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
            aspect = math.exp(lo + (hi - lo) * u[1])
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= width and 0 < ch <= height:
                top = int(torch.randint(0, height - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - cw + 1, (1,), generator=generator))
                return top, left, ch, cw
        # Very elongated images: fall back to the largest centred box within the ratio range.
        aspect = width / height
        if aspect < self.ratio[0]:
            cw, ch = width, int(round(width / self.ratio[0]))
        elif aspect > self.ratio[1]:
            ch, cw = height, int(round(height * self.ratio[1]))
        else:
            ch, cw = height, width
        ch, cw = max(1, min(ch, height)), max(1, min(cw, width))
        return (height - ch) // 2, (width - cw) // 2, ch, cw

    def __call__(self, img: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        _check_image(img)
        top, left, ch, cw = self.get_params(img.shape[-2], img.shape[-1], generator)
        out = TF.resized_crop(
            img, top, left, ch, cw, list(self.size), interpolation=InterpolationMode(self.interpolation), antialias=True
        )
        out = _clamp_bicubic(out, self.interpolation)
        # Draw the flip coin even when flipping is off, so turning flips on or off leaves the
        # crop boxes of later samples (drawn from their own generators anyway) unchanged.
        coin = float(torch.rand(1, generator=generator))
        if self.flip and coin < 0.5:
            out = TF.horizontal_flip(out)
        return out.contiguous()


def make_train_transform(
    size: Union[int, Sequence[int]],
    scale: Sequence[float] = (0.35, 1.0),
    flip: bool = True,
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    interpolation: str = "bilinear",
) -> RandomResizedCropFlip:
    """The training augmentation for one partition: random resized crop to ``size`` + horizontal flip.

    ``scale`` is the range of the crop's area as a fraction of the image (RADIO: 0.35 to 1).
    """
    return RandomResizedCropFlip(size, scale=scale, ratio=ratio, flip=flip, interpolation=interpolation)


class ResizeCenterCrop:
    """The deterministic input (``data.augment: false``): resize so the shorter side is ``size``
    (antialiased), then the centred ``size x size`` crop; no flip. A function of the image alone,
    which is what a teacher-feature cache needs (one target per image and resolution)."""

    accepts_generator = True  # takes (and ignores) the per-sample generator of apply_transform

    def __init__(self, size: int, interpolation: str = "bilinear"):
        if int(size) < 1:
            raise ValueError(f"crop size must be a positive int, got {size}")
        _check_interpolation(interpolation)
        self.size, self.interpolation = int(size), interpolation

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(size={self.size}, interpolation={self.interpolation!r})"

    def __call__(self, img: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        _check_image(img)
        out = TF.resize(img, [self.size], interpolation=InterpolationMode(self.interpolation), antialias=True)
        out = TF.center_crop(out, [self.size, self.size])
        return _clamp_bicubic(out, self.interpolation).contiguous()


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")


def _check_image(img) -> None:
    if not isinstance(img, Tensor) or img.ndim != 3:
        raise TypeError(
            f"expected a (C, H, W) image tensor, got {type(img).__name__}"
            f"{'' if not isinstance(img, Tensor) else ' of shape ' + str(tuple(img.shape))}"
        )


def _clamp_bicubic(out: Tensor, interpolation: str) -> Tensor:
    """Bicubic overshoots; the inputs are [0, 1] float images (uint8 saturates by itself)."""
    if out.is_floating_point() and interpolation == "bicubic":
        out = out.clamp_(0.0, 1.0)
    return out


def make_partition_transform(
    size: int, augment: bool = True, scale: Sequence[float] = (0.35, 1.0), flip: bool = True
) -> Callable:
    """A partition's input transform: the training augmentation, or with ``augment=False`` the
    deterministic :class:`ResizeCenterCrop` (``scale`` and ``flip`` unused)."""
    if not augment:
        return ResizeCenterCrop(size)
    return make_train_transform(size, scale=scale, flip=flip)


def resize_square(images: Tensor, side: int) -> Tensor:
    """A batch of square crops at ``side`` pixels (antialiased bilinear; unchanged when it already is)."""
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    return torch.nn.functional.interpolate(
        images, size=(side, side), mode="bilinear", align_corners=False, antialias=True
    )
