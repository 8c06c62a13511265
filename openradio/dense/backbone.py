"""A RADIO model as the backbone of dense heads: named NCHW maps with ``out_channels`` and
``strides``, the interface torchvision's detection models, ``torchvision.ops.FeaturePyramidNetwork``
and detectron2-style heads take.

    bb = openradio.backbone("radio_v2.5-b")             # ViTDet simple pyramid, strides 4..64
    feats = bb(images)                                   # OrderedDict '0', '1', '2', '3', 'pool'
    detector = torchvision.models.detection.FasterRCNN(bb, num_classes=91,
                                                       image_mean=[0, 0, 0], image_std=[1, 1, 1])

Images are (B, 3, H, W) in [0, 1] (the RADIO model normalises them itself; tell torchvision's
transform not to: ``image_mean=[0, 0, 0], image_std=[1, 1, 1]``). Sides that are not multiples of
the model's step (the patch size, times the ViTDet window) are padded on the bottom/right and the
outputs cropped back to ``ceil(side / stride)``, so any size works.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from openradio.formats.resolve import radio_model
from openradio.model.arguments import take_indices
from openradio.model.neck import SimpleFeaturePyramid
from openradio.model.radio import LOADED, RADIOModel

__all__ = ["RadioBackbone", "backbone", "dinov2_block_indices", "call_window", "resolution_step"]


def call_window(model: RADIOModel, vitdet_window=LOADED) -> Optional[int]:
    """The ViTDet window a call with ``vitdet_window`` uses (``LOADED``: the model's own)."""
    return model.window_size if vitdet_window is LOADED else vitdet_window


def resolution_step(model: RADIOModel, vitdet_window=LOADED) -> int:
    """Input sides must be multiples of this in such a call: the patch size times the window."""
    return model.patch_size * (call_window(model, vitdet_window) or 1)


def dinov2_block_indices(depth: int) -> list[int]:
    """The four blocks DINOv2's linear4 heads read: 2/5/8/11 of 12, 4/11/17/23 of 24, otherwise
    the last block of each quarter of the depth."""
    if depth == 24:
        return [4, 11, 17, 23]
    if depth < 4:
        return list(range(depth))
    return [round((k + 1) * depth / 4) - 1 for k in range(4)]


class RadioBackbone(nn.Module):
    """``RADIOModel`` -> ``OrderedDict`` of NCHW maps (finest first).

    Args:
        model: the RADIO model (its weights are this module's ``model``; trainable).
        out_indices: blocks to read (timm's convention: an int n = the last n blocks, negatives
            wrap). Default: the last block (ViTDet). With ``pyramid`` give one block or one per
            level (4, or 4 + 'pool' levels from 4 blocks).
        pyramid: put ViTDet's :class:`~openradio.model.neck.SimpleFeaturePyramid` on top; without
            it the outputs are the blocks' maps themselves (stride = patch size), named
            ``block<i>``.
        out_channels, scales, norm, extra_pool: the pyramid's (see ``SimpleFeaturePyramid``).
        vitdet_window: ViTDet window for every call (default: the one the model was loaded with).
        cpe_augment: let the CPE position crop jitter in training mode, as in RADIO's own
            training; off by default so a fine-tuned model sees the positions it sees at inference.
    """

    def __init__(
        self,
        model: RADIOModel,
        out_indices: Optional[Union[int, Sequence[int]]] = None,
        pyramid: bool = True,
        out_channels: int = 256,
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        norm: str = "LN",
        extra_pool: bool = True,
        vitdet_window=LOADED,
        cpe_augment: bool = False,
    ):
        super().__init__()
        if not isinstance(model, RADIOModel):
            raise TypeError(f"expected a RADIOModel (openradio.radio_model(...)), got {type(model).__name__}")
        self.model = model
        depth = len(model.blocks)
        self.out_indices = take_indices(depth, [-1] if out_indices is None else out_indices)
        self.vitdet_window = vitdet_window
        self.cpe_augment = cpe_augment
        p = model.patch_size
        if pyramid:
            self.neck = SimpleFeaturePyramid(
                model.embed_dim,
                out_channels,
                scales=scales,
                in_stride=p,
                num_inputs=len(self.out_indices),
                norm=norm,
                extra_pool=extra_pool,
            )
            self.strides: dict[str, int] = dict(self.neck.strides)
            self.channels: dict[str, int] = {n: out_channels for n in self.strides}
        else:
            self.neck = None
            self.strides = {f"block{i}": p for i in self.out_indices}
            self.channels = {n: model.embed_dim for n in self.strides}
        # torchvision's detection models read one int
        self.out_channels: int = next(iter(self.channels.values()))

    @property
    def feature_info(self) -> list[dict]:
        """timm-style: per output its name, width (``num_chs``) and stride (``reduction``)."""
        return [dict(name=n, num_chs=self.channels[n], reduction=s) for n, s in self.strides.items()]

    def train(self, mode: bool = True) -> "RadioBackbone":
        super().train(mode)
        if not self.cpe_augment:
            self.model.patch_generator.eval()
        return self

    def block_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The chosen blocks' (B, C, h, w) maps of ``x``, padded to the model's step as needed."""
        model = self.model
        step = resolution_step(model, self.vitdet_window)
        H, W = x.shape[-2:]
        ph, pw = -H % step, -W % step
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return model.forward_intermediates(
            x,
            indices=self.out_indices,
            intermediates_only=True,
            output_fmt="NCHW",
            stop_early=True,
            vitdet_window=self.vitdet_window,
        )

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        H, W = x.shape[-2:]
        maps = self.block_maps(x)
        out = self.neck(maps) if self.neck is not None else OrderedDict(zip(self.strides, maps))
        for name, s in self.strides.items():  # crop what the padding added
            h, w = math.ceil(H / s), math.ceil(W / s)
            if out[name].shape[-2:] != (h, w):
                out[name] = out[name][..., :h, :w]
        return out


def backbone(
    version_or_path: Union[str, RADIOModel] = "",
    out_indices: Optional[Union[int, Sequence[int]]] = None,
    pyramid: bool = True,
    out_channels: int = 256,
    *,
    vitdet_window: Optional[int] = None,
    progress: bool = True,
    **kwargs,
) -> RadioBackbone:
    """A released version, a checkpoint file, a Hugging Face / transformers folder or a loaded
    ``RADIOModel`` as a :class:`RadioBackbone` (``kwargs`` go to ``RadioBackbone``: scales,
    norm, extra_pool, cpe_augment). In training mode after ``.train()``; call ``.eval()`` for
    inference."""
    if isinstance(version_or_path, RADIOModel):
        model = version_or_path
        if vitdet_window is not None:
            kwargs.setdefault("vitdet_window", vitdet_window)
    else:
        model = radio_model(version_or_path, vitdet_window_size=vitdet_window, text_towers=False, progress=progress)
    return RadioBackbone(model, out_indices=out_indices, pyramid=pyramid, out_channels=out_channels, **kwargs)
