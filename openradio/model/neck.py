"""ViTDet's simple feature pyramid: multi-scale maps from a plain (single-scale) ViT.

Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection" (ViTDet): a plain
ViT's stride-16 map is enough for detection when a small neck resamples it to strides 4, 8, 16
and 32 (scales 4, 2, 1, 1/2 of the map): two 2x2 stride-2 transposed convolutions (with a
channel LayerNorm and GELU between them) for x4, one for x2, the map as it is for x1 and a 2x2
max-pool for x1/2; then at every level a 1x1 projection to ``out_channels`` and a 3x3
convolution, each followed by a channel LayerNorm. ViTDet's optional extra level (a stride-2
max-pool of the coarsest level, detectron2's ``LastLevelMaxPool``) is the ``'pool'`` output,
the name torchvision's ``resnet_fpn_backbone`` gives it, so torchvision's detection models with
their default anchor generator (five sizes) take the outputs as they are.

Inputs may come from one block (ViTDet) or from one block per level (the multi-level variant
BEiT/mmseg use with UperNet: e.g. blocks 3, 5, 7, 11 for x4, x2, x1, x1/2).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

__all__ = ["SimpleFeaturePyramid", "LayerNorm2d"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ViTDet's / ConvNeXt's channel norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "LN":
        return LayerNorm2d(channels, eps=1e-6)
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    if kind in ("GN", "group"):
        return nn.GroupNorm(min(32, channels), channels)
    if kind in ("", "none", None):
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use 'LN' (ViTDet), 'BN', 'GN' or 'none'")


def _resample(scale: float, dim: int, norm: str) -> tuple[nn.Module, int]:
    """The resampling stage of one level and its output width (ViTDet halves the width per x2)."""
    if scale == 4.0:
        return nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            _norm(norm, dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        ), dim // 4
    if scale == 2.0:
        return nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), dim // 2
    if scale == 1.0:
        return nn.Identity(), dim
    if scale == 0.5:
        return nn.MaxPool2d(2, stride=2, ceil_mode=True), dim  # odd grids keep their last row
    raise ValueError(f"pyramid scale {scale} is not supported; use scales from (4, 2, 1, 0.5)")


class SimpleFeaturePyramid(nn.Module):
    """Maps (B, C, h, w) block outputs at stride ``in_stride`` to an OrderedDict of
    ``out_channels``-wide maps named '0', '1', ... (finest first), plus ``'pool'`` with
    ``extra_pool``.

    Args:
        in_channels: width of the block outputs (the ViT's embedding width).
        out_channels: width of every level (256 as in ViTDet and torchvision).
        scales: resampling factor of each level relative to the input map (ViTDet: 4, 2, 1, 0.5).
        in_stride: stride of the input map in pixels (the patch size).
        num_inputs: 1 (every level from one map, ViTDet) or ``len(scales)`` (one map per level).
        norm: 'LN' (channel LayerNorm, ViTDet), 'BN', 'GN' or 'none'.
        extra_pool: add the stride-2 max-pool of the coarsest level as ``'pool'``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        in_stride: int = 16,
        num_inputs: int = 1,
        norm: str = "LN",
        extra_pool: bool = True,
    ):
        super().__init__()
        scales = [float(s) for s in scales]
        if not scales:
            raise ValueError("a feature pyramid needs at least one scale")
        if num_inputs not in (1, len(scales)):
            raise ValueError(
                f"{num_inputs} input maps for {len(scales)} pyramid levels: pass one map (ViTDet) or one per level"
            )
        if in_channels % 4:
            raise ValueError(f"in_channels={in_channels} must be divisible by 4 (the x4 level quarters it)")
        strides = []
        for s in scales:
            stride = in_stride / s
            if stride != int(stride):
                raise ValueError(
                    f"scale {s} of a stride-{in_stride} map gives a fractional stride {stride}; "
                    "use a patch size divisible by the largest scale"
                )
            strides.append(int(stride))
        self.scales = scales
        self.num_inputs = num_inputs
        self.extra_pool = extra_pool
        self.out_channels = out_channels
        self.stages = nn.ModuleList()
        for s in scales:
            resample, width = _resample(s, in_channels, norm)
            self.stages.append(
                nn.Sequential(
                    OrderedDict(
                        resample=resample,
                        lateral=nn.Conv2d(width, out_channels, 1, bias=norm in ("", "none", None)),
                        lateral_norm=_norm(norm, out_channels),
                        output=nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm in ("", "none", None)),
                        output_norm=_norm(norm, out_channels),
                    )
                )
            )
        names = [str(i) for i in range(len(scales))]
        if extra_pool:
            names.append("pool")
            strides.append(strides[-1] * 2)
        self.strides: dict[str, int] = dict(zip(names, strides))

    @property
    def names(self) -> list[str]:
        return list(self.strides)

    def forward(self, features: torch.Tensor | Sequence[torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        maps = [features] if isinstance(features, torch.Tensor) else list(features)
        if len(maps) not in (1, len(self.stages)) or (
            self.num_inputs == len(self.stages) and len(maps) == 1 and len(self.stages) > 1
        ):
            raise ValueError(f"the pyramid takes {self.num_inputs} map(s), got {len(maps)}")
        if len(maps) == 1:
            maps = maps * len(self.stages)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, (stage, x) in enumerate(zip(self.stages, maps)):
            out[str(i)] = stage(x)
        if self.extra_pool:
            out["pool"] = nn.functional.max_pool2d(out[str(len(self.stages) - 1)], kernel_size=1, stride=2)
        return out
