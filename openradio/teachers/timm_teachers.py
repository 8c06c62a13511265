"""Teachers built on timm ViTs: DINOv2 (with or without registers) and the SAM image encoder.

Both are multi-resolution: their position embeddings are resampled to whatever grid the input
gives (DINOv2 through ``dynamic_img_size``, SAM natively), which is what the mode-switching
evaluation and the high-resolution partitions need.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from openradio.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher, load_state_dict_file

__all__ = ["DINOv2Teacher", "SAMTeacher", "DINOV2_HUB_TO_TIMM"]

# torch.hub names (as stored in RADIO checkpoints' teacher configs) -> timm model names.
DINOV2_HUB_TO_TIMM = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2",
}

_TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
_TINY_GRID = 4


def _timm_name(model: str, pretrained: str | bool | None) -> tuple[str, bool]:
    """``pretrained`` may be a timm pretrained tag (``'lvd142m'``): it becomes ``model.tag``."""
    if isinstance(pretrained, str) and pretrained not in ("", "none"):
        return (model if "." in model else f"{model}.{pretrained}"), True
    return model, bool(pretrained)


def _mean_std(model: nn.Module, mean: Any, std: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(mean or cfg.get("mean", IMAGENET_MEAN)), tuple(std or cfg.get("std", IMAGENET_STD))


class DINOv2Teacher(Teacher):
    """DINOv2 through timm: summary = normed CLS token, features = normed patch tokens.

    Register tokens (``*_reg4_*`` models) are skipped.  Accepts timm names
    (``'vit_giant_patch14_reg4_dinov2'``) or torch.hub names (``'dinov2_vitg14_reg'``).

    Args:
        pretrained: True (timm's default tag), a timm tag (``'lvd142m'``), or False.
        weights: local file: this teacher's ``state_dict``, a timm checkpoint, or an official
            DINOv2 checkpoint (converted by timm's checkpoint filter).
        input_size: native side (default 378 as in RADIO; the model's img_size for tiny models).
        tiny / arch_overrides: small random configurations (timm kwargs such as embed_dim, depth,
            num_heads, img_size).
    """

    multi_resolution = True

    def __init__(
        self,
        model: str = "vit_giant_patch14_reg4_dinov2",
        pretrained: str | bool | None = True,
        input_size: int | None = None,
        weights: str | None = None,
        tiny: bool = False,
        arch_overrides: Mapping[str, Any] | None = None,
        name: str = "dino_v2",
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> None:
        # lazy: config validation imports openradio.teachers; timm costs 2 s
        import timm

        model = DINOV2_HUB_TO_TIMM.get(model, model)
        kwargs: dict[str, Any] = dict(_TINY_VIT) if tiny else {}
        kwargs.update(arch_overrides or {})
        name_tag, download = _timm_name(model, pretrained)
        download = download and weights is None and not tiny and not arch_overrides
        net = timm.create_model(
            name_tag if download else model, pretrained=download, num_classes=0, dynamic_img_size=True, **kwargs
        )
        if tiny and "img_size" not in kwargs:
            p = int(net.patch_embed.patch_size[0])
            net.set_input_size(img_size=(p * _TINY_GRID, p * _TINY_GRID))
        patch = int(net.patch_embed.patch_size[0])
        if input_size is None:
            # RADIO runs DINOv2 at 378 (27 tokens, matching a 432 px student), not timm's 518.
            input_size = int(net.patch_embed.img_size[0]) if (tiny or "img_size" in kwargs) else 378
        mean, std = _mean_std(net, mean, std)
        super().__init__(name, patch, input_size, int(net.embed_dim), int(net.embed_dim), mean=mean, std=std)
        self.model = net
        if weights is not None:
            # lazy: config validation imports openradio.teachers; timm costs 2 s
            from timm.models.vision_transformer import checkpoint_filter_fn

            sd = load_state_dict_file(weights)
            if "mask_token" in sd:  # official DINOv2 layout: let timm convert it
                sd = checkpoint_filter_fn(sd, net)
            self._load_into(net, sd, ignore_prefixes=("head.",), source=str(weights))
        self.freeze()
        self.num_registers = int(getattr(net, "num_reg_tokens", 0))
        self.model_name = model

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net = self.model
        tokens = net.forward_features(x)  # the final norm is applied to every token
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        summary = tokens[:, 0]
        patches = tokens[:, net.num_prefix_tokens :]
        return summary, patches.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


class SAMTeacher(Teacher):
    """SAM image encoder through timm (``samvit_*``): features before the neck, no summary.

    Args:
        pad_to_input: run the way SAM itself does: an image smaller than ``input_size`` (1024) is
            normalised, zero-padded at the bottom/right to ``input_size``, and the top-left grid of
            the image's own size is cropped out of the feature map (inference.md §8,
            mode_switching). Without it the encoder runs on the image's own size (position
            embeddings resampled).
        weights: this teacher's ``state_dict``, a timm samvit checkpoint or an official
            segment_anything checkpoint (``image_encoder.*`` keys; prompt encoder, mask decoder and
            neck are dropped).
    """

    multi_resolution = True

    def __init__(
        self,
        model: str = "samvit_huge_patch16",
        pretrained: str | bool | None = True,
        input_size: int | None = None,
        weights: str | None = None,
        tiny: bool = False,
        arch_overrides: Mapping[str, Any] | None = None,
        name: str = "sam",
        pad_to_input: bool = False,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
    ) -> None:
        # lazy: config validation imports openradio.teachers; timm costs 2 s
        import timm

        kwargs: dict[str, Any] = {}
        if tiny:
            kwargs.update(_TINY_VIT, window_size=2, global_attn_indexes=(1,), neck_chans=16)
        kwargs.update(arch_overrides or {})
        name_tag, download = _timm_name(model, pretrained)
        download = download and weights is None and not tiny and not arch_overrides
        if tiny and "img_size" not in kwargs:
            kwargs["img_size"] = 16 * _TINY_GRID
        net = timm.create_model(name_tag if download else model, pretrained=download, **kwargs)
        patch = int(net.patch_embed.patch_size[0])
        if input_size is None:
            input_size = int(net.patch_embed.img_size[0])  # 1024 for the released encoders
        mean, std = _mean_std(net, mean, std)
        super().__init__(name, patch, input_size, None, int(net.embed_dim), mean=mean, std=std)
        # The RADIO target is the encoder's last block output, before SAM's conv neck.
        net.neck = nn.Identity()
        self.model = net
        self.pad_to_input = bool(pad_to_input)
        if weights is not None:
            # lazy: config validation imports openradio.teachers; timm costs 2 s
            from timm.models.vision_transformer_sam import checkpoint_filter_fn

            sd = checkpoint_filter_fn(load_state_dict_file(weights), net)
            self._load_into(net, sd, ignore_prefixes=("neck.", "head."), source=str(weights))
        self.freeze()
        self.model_name = model

    def _encode(self, x: Tensor) -> Tensor:
        net = self.model
        return net.forward_features(x)  # NCHW, neck replaced by identity

    def _forward(self, x: Tensor) -> tuple[None, Tensor]:
        h, w = x.shape[-2:]
        gh, gw = h // self.patch_size, w // self.patch_size
        if self.pad_to_input and (h < self.input_size or w < self.input_size):
            pad_h, pad_w = max(self.input_size - h, 0), max(self.input_size - w, 0)
            # Padding after normalisation, as SAM's own preprocessing does (zeros = mean colour).
            feats = self._encode(F.pad(x, (0, pad_w, 0, pad_h)))
            feats = feats[:, :, :gh, :gw]
        else:
            feats = self._encode(x)
        return None, feats.contiguous()
