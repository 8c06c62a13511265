"""Typed configs that build a RADIO model (the model's own constructor arguments).

The official checkpoints describe a model with an ``argparse`` namespace (``args``); converting
that namespace to and from these dataclasses happens at the edge, in :mod:`openradio.formats.official`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class BackboneConfig:
    """What builds a RADIO backbone: the official backbone name plus CPE and prefix-token settings.

    ``arch`` is the official ``args.model`` (a timm name such as ``vit_base_patch16_224`` or one of
    :data:`openradio.model.vit_families.FAMILIES`); ``model_kwargs`` overlay the name's defaults
    (for the DINOv2 students, whose official builder ignores them, the sizes read from the
    weights). Conversion from and to the official checkpoint ``args`` is in
    :mod:`openradio.formats.official`.

    ``video_temporal_patch_size=T`` adds the temporally packed video projection (clips of T frames
    stacked on the channel axis, see :mod:`openradio.model.patch_generator`); None: images only.
    ``model_kwargs`` may name layers as data (they travel in checkpoint args):
    :func:`openradio.model.vit_families.resolve_layer_kwargs`.
    """

    arch: str = "vit_base_patch16_224"
    model_kwargs: dict = field(default_factory=dict)
    cpe_max_size: int = 2048
    num_cls_tokens: int = 4
    register_multiple: Optional[int] = 8
    num_registers: Optional[int] = None
    model_norm: bool = False
    in_chans: int = 3
    video_temporal_patch_size: Optional[int] = None
    drop_rate: Optional[float] = None
    drop_path_rate: Optional[float] = None
    global_pool: Optional[str] = None
    dtype: torch.dtype = torch.float32


@dataclass
class RadioConfig:
    """A whole RADIO model: the backbone, the teachers whose adaptors it may carry, and how the
    adaptor heads are built. ``teachers`` are dicts in the official layout (``name``, ``type``,
    ``use_summary``, ``token_slot``, ``fd_upsample_factor``, ``mlp_version``,
    ``spatial_mlp_version``, ...); names may repeat (the first wins, as officially)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    teachers: list = field(default_factory=list)
    cls_token_per_teacher: bool = True
    mlp_version: str = "v2"
    spatial_mlp_version: Optional[str] = None
    mlp_hidden_size: int = 1520
    mlp_num_inner: int = 1

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    @property
    def teacher_names(self) -> list[str]:
        return [t["name"] for t in self.teachers]

    def unique_names(self) -> list[str]:
        return list(dict.fromkeys(self.teacher_names))

    def num_cls_tokens(self) -> int:
        """CLS tokens of the patch generator: one per unique teacher name, or one."""
        return len(self.unique_names()) if self.cls_token_per_teacher else 1

    def summary_indices(self) -> list[int]:
        """Sorted index of the first teacher of each name that has a summary (CLS per teacher)."""
        if not self.cls_token_per_teacher:
            return [0]
        seen, idxs = set(), []
        for i, t in enumerate(self.teachers):
            if t["name"] in seen:
                continue
            seen.add(t["name"])
            if t.get("use_summary", True):
                idxs.append(i)
        return sorted(idxs)

    def find_teacher(self, name: str) -> tuple[int, dict]:
        """(index, config) of the first teacher called ``name`` (the official error otherwise)."""
        for i, t in enumerate(self.teachers):
            if t["name"] == name:
                return i, t
        raise ValueError(f"Unable to find the specified adaptor name. Known names: {self.teacher_names}")

    def head_idx(self, name: str) -> int:
        """Which prefix token feeds this teacher's summary head (``token_slot`` if set)."""
        i, t = self.find_teacher(name)
        return t.get("token_slot", i) if self.cls_token_per_teacher else 0

    def with_backbone_tokens(self) -> "RadioConfig":
        """The same config with ``backbone.num_cls_tokens`` matching the teachers."""
        self.backbone.num_cls_tokens = self.num_cls_tokens()
        return self
