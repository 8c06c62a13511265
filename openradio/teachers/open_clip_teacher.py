"""CLIP-family teachers through open_clip: DFN CLIP (native open_clip ViT) and SigLIP (timm trunk).

Targets (training.md §2):
* summary: the projected image embedding, i.e. what ``encode_image`` returns (DFN ViT-H: 1024,
  SigLIP SO400M: 1152), so the student's clip head lands in the text tower's space;
* features: last-layer patch tokens before the projection / pooling (ViT-H: 1280, SO400M: 1152).
  For the native open_clip ViT these are the tokens after ``ln_post``; for the timm trunk the
  output of ``forward_features`` (after the trunk's final norm), prefix tokens dropped.

Only the image tower is kept; the text tower is discarded after loading.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from openradio.teachers.base import Teacher, load_state_dict_file

__all__ = ["OpenCLIPTeacher"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Small settings for tests: same architecture family, a few thousand parameters.
_TINY_NATIVE = {"width": 32, "layers": 2, "head_width": 16}
_TINY_TIMM = {"embed_dim": 32, "depth": 2, "num_heads": 2}
_TINY_EMBED_DIM = 24
_TINY_GRID = 4  # tokens per side of the tiny model's native input


class _TimmTower(nn.Module):
    """Same layout (``trunk`` + ``head``) as open_clip's ``TimmModel``, so state dicts are
    interchangeable, but built from explicit timm kwargs (which ``TimmModel`` cannot take)."""

    def __init__(
        self, model_name: str, embed_dim: int, pool: str, proj: str, proj_bias: bool, timm_kwargs: Mapping[str, Any]
    ) -> None:
        super().__init__()
        # lazy: config validation imports openradio.teachers; timm costs 2 s
        import timm

        if pool in ("abs_attn", "rot_attn") or proj not in ("none", "linear", ""):
            raise NotImplementedError(
                f"timm tower with pool={pool!r}, proj={proj!r} is not supported here; "
                "use pretrained=<tag> to build it through open_clip."
            )
        if proj in ("none", ""):
            self.trunk = timm.create_model(
                model_name,
                pretrained=False,
                num_classes=0 if proj == "none" else embed_dim,
                global_pool=pool,
                **timm_kwargs,
            )
            self.head = nn.Sequential()
        else:
            self.trunk = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool=pool, **timm_kwargs)
            self.head = nn.Sequential()
            self.head.add_module("drop", nn.Dropout(0.0))
            self.head.add_module("proj", nn.Linear(self.trunk.num_features, embed_dim, bias=proj_bias))


def _enable_dynamic_size(vit: nn.Module) -> None:
    """Let a timm VisionTransformer run at any size that is a multiple of its patch (position
    embeddings resampled on the fly), exactly as ``dynamic_img_size=True`` at construction does."""
    # lazy: config validation imports openradio.teachers; timm costs 2 s
    from timm.layers import Format

    vit.dynamic_img_size = True
    pe = vit.patch_embed
    pe.strict_img_size = False
    pe.flatten = False
    pe.output_fmt = Format.NHWC


class OpenCLIPTeacher(Teacher):
    """An open_clip image tower as a teacher.

    Args:
        model: open_clip model name (``'ViT-H-14-378-quickgelu'``, ``'ViT-SO400M-14-SigLIP-384'``).
        pretrained: open_clip pretrained tag (``'dfn5b'``, ``'webli'``), True for the model's first
            tag, or False/None for random weights. Downloads through open_clip's own cache.
        input_size: native side in pixels (default: the model's image size, rounded down to a
            multiple of the patch: SigLIP-384 -> 378 as in RADIO).
        weights: a local file (this teacher's ``state_dict``, an open_clip CLIP checkpoint, or the
            image tower's state dict); takes precedence over ``pretrained``.
        tiny: build a small random configuration of the same architecture (tests).
        arch_overrides: vision config overrides (native: width/layers/head_width/...; timm:
            embed_dim/depth/num_heads/...); the key ``'embed_dim'`` of a native tower (or
            ``'proj_dim'`` for either) sets the projection width.
    """

    multi_resolution = False

    def __init__(
        self,
        model: str = "ViT-H-14-378-quickgelu",
        pretrained: str | bool | None = "dfn5b",
        input_size: int | None = None,
        weights: str | None = None,
        tiny: bool = False,
        arch_overrides: Mapping[str, Any] | None = None,
        name: str = "clip",
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        # lazy: config validation imports openradio.teachers; open_clip costs 2 s
        import open_clip

        cfg = open_clip.get_model_config(model)
        if cfg is None:
            raise ValueError(f"Unknown open_clip model {model!r}; see open_clip.list_models() for the names.")
        cfg = copy.deepcopy(cfg)
        vision_cfg = dict(cfg["vision_cfg"])
        embed_dim = int(cfg["embed_dim"])
        quick_gelu = bool(cfg.get("quick_gelu", False))
        overrides = dict(arch_overrides or {})
        tag = self._resolve_tag(open_clip, model, pretrained)
        is_timm = bool(vision_cfg.get("timm_model_name"))

        download = tag is not None and weights is None and not tiny and not overrides
        if download:
            oc = open_clip.create_model(model, pretrained=tag, cache_dir=cache_dir)
            visual = oc.visual
            pp = getattr(visual, "preprocess_cfg", {}) or {}
            mean = mean or tuple(pp.get("mean", OPENAI_MEAN))
            std = std or tuple(pp.get("std", OPENAI_STD))
            del oc  # drop the text tower
        else:
            proj_dim = overrides.pop("proj_dim", None)
            if is_timm:
                timm_kwargs = dict(_TINY_TIMM) if tiny else {}
                if proj_dim is None and not tiny:
                    proj_dim = embed_dim
                timm_kwargs.update(overrides)
                visual = _TimmTower(
                    vision_cfg["timm_model_name"],
                    embed_dim=proj_dim or timm_kwargs.get("embed_dim", embed_dim),
                    pool=vision_cfg.get("timm_pool", "avg"),
                    proj=vision_cfg.get("timm_proj", "linear"),
                    proj_bias=vision_cfg.get("timm_proj_bias", False),
                    timm_kwargs=timm_kwargs,
                )
                if tiny and "img_size" not in timm_kwargs:
                    patch = int(visual.trunk.patch_embed.patch_size[0])
                    visual.trunk.set_input_size(img_size=(patch * _TINY_GRID, patch * _TINY_GRID))
            else:
                # lazy: config validation imports openradio.teachers; open_clip costs 2 s
                from open_clip.model import _build_vision_tower

                if tiny:
                    vision_cfg.update(_TINY_NATIVE)
                    vision_cfg["image_size"] = int(vision_cfg.get("patch_size", 16)) * _TINY_GRID
                    embed_dim = _TINY_EMBED_DIM
                if "embed_dim" in overrides:
                    embed_dim = int(overrides.pop("embed_dim"))
                if proj_dim is not None:
                    embed_dim = int(proj_dim)
                vision_cfg.update(overrides)
                if vision_cfg.get("attentional_pool"):
                    raise NotImplementedError(
                        f"{model}: towers with an attentional pooler have no patch tokens to distil."
                    )
                visual = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)
            if tag is not None and (mean is None or std is None):
                pcfg = open_clip.get_pretrained_cfg(model, tag) or {}
                mean = mean or tuple(pcfg.get("mean", OPENAI_MEAN))
                std = std or tuple(pcfg.get("std", OPENAI_STD))
            if mean is None or std is None:
                siglip = "siglip" in model.lower()
                mean = mean or ((0.5, 0.5, 0.5) if siglip else OPENAI_MEAN)
                std = std or ((0.5, 0.5, 0.5) if siglip else OPENAI_STD)

        self._is_timm = hasattr(visual, "trunk")
        if self._is_timm:
            trunk = visual.trunk
            patch = int(trunk.patch_embed.patch_size[0])
            native = int(trunk.patch_embed.img_size[0])
            feature_dim = int(trunk.embed_dim)
            _enable_dynamic_size(trunk)
        else:
            patch = int(visual.patch_size[0])
            native = int(visual.image_size[0])
            feature_dim = int(visual.conv1.out_channels)
        if input_size is None:
            input_size = native // patch * patch
        super().__init__(name, patch, input_size, None, feature_dim, mean=mean, std=std)
        self.model = visual
        if weights is not None:
            self._load_into(
                self.model,
                load_state_dict_file(weights),
                strip_prefixes=("visual.",),
                source=str(weights),
            )
        self.freeze()
        self.summary_dim = self._summary_width()
        self.model_name = model
        self.pretrained_tag = tag

    @staticmethod
    def _resolve_tag(open_clip: Any, model: str, pretrained: str | bool | None) -> str | None:
        if pretrained in (None, False, "", "none"):
            return None
        if pretrained is True:
            tags = open_clip.list_pretrained_tags_by_model(model)
            if not tags:
                raise ValueError(
                    f"open_clip has no pretrained weights for {model!r}; pass pretrained=False or weights=PATH."
                )
            return tags[0]
        return str(pretrained)

    def _summary_width(self) -> int:
        """Width of what ``encode_image`` emits: the projection if any, else the pooled tokens."""
        if self._is_timm:
            for layer in reversed(list(self.model.head.modules())):
                if isinstance(layer, nn.Linear):
                    return int(layer.out_features)
            trunk = self.model.trunk
            return int(trunk.num_classes) if trunk.num_classes else int(trunk.num_features)
        v = self.model
        return int(v.proj.shape[1]) if v.proj is not None else self.feature_dim

    # -- forward ------------------------------------------------------------------------------
    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._is_timm:
            return self._forward_timm(x)
        return self._forward_native(x)

    def _forward_timm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        trunk = self.model.trunk
        tokens = trunk.forward_features(x)
        summary = self.model.head(trunk.forward_head(tokens))
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = tokens[:, trunk.num_prefix_tokens :]
        return summary, patches.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()

    def _forward_native(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # The steps of open_clip's VisionTransformer.forward, with the position embedding resampled
        # when the grid differs from the native one (the stock forward only runs at image_size).
        # lazy: config validation imports openradio.teachers; timm costs 2 s
        from timm.layers import resample_abs_pos_embed

        v = self.model
        tok = v.conv1(x)
        b, c, h, w = tok.shape
        tok = tok.reshape(b, c, h * w).permute(0, 2, 1)
        cls = v.class_embedding.to(tok.dtype).view(1, 1, -1).expand(b, -1, -1)
        tok = torch.cat([cls, tok], dim=1)
        pos = v.positional_embedding
        if (h, w) != tuple(v.grid_size):
            pos = resample_abs_pos_embed(
                pos.unsqueeze(0), new_size=(h, w), old_size=tuple(v.grid_size), num_prefix_tokens=1
            )[0]
        tok = tok + pos.to(tok.dtype)
        tok = v.patch_dropout(tok)
        tok = v.ln_pre(tok)
        tok = v.transformer(tok)
        pooled, patches = v._pool(tok)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled, patches.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
