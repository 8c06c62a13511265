"""Build the backbone ViT from a typed config and fit it with the CPE patch generator."""

from __future__ import annotations

import timm
from torch import nn

from openradio.model import vit_families
from openradio.model.config import BackboneConfig
from openradio.model.patch_generator import ViTPatchGenerator, num_registers_for


def create_backbone(cfg: BackboneConfig, *, init_weights: bool = False) -> nn.Module:
    """The ViT that ``cfg.arch`` names, with the CPE patch generator installed.

    ``init_weights=False`` skips timm's initialisation (every tensor then comes from a
    checkpoint and a missing one is an error at load time, never silent garbage).
    """
    kwargs = dict(cfg.model_kwargs or {})
    kwargs.pop("weight_init", None)
    video = cfg.video_temporal_patch_size
    optional = {"drop_rate": cfg.drop_rate, "drop_path_rate": cfg.drop_path_rate, "global_pool": cfg.global_pool}
    optional = {k: v for k, v in optional.items() if v is not None}
    weight_init = "" if init_weights else "skip"
    if cfg.cpe_max_size is None:
        raise ValueError("checkpoints without CPE (args.cpe_max_size=None) are not supported")
    if vit_families.is_dinov2_student(cfg.arch):
        model = vit_families.build_dinov2_student(
            cfg.arch,
            kwargs,
            in_chans=cfg.in_chans,
            drop_path_rate=optional.get("drop_path_rate", 0.0),
            weight_init=weight_init,
        )
        inner = model.inner
        inner.head = nn.Identity()
        enable_cpe(
            inner,
            cfg.cpe_max_size,
            num_cls_tokens=cfg.num_cls_tokens,
            register_multiple=cfg.register_multiple,
            num_registers=cfg.num_registers,
            patch_bias=True,
            # the DINOv2 wrapper compares with its patch grid: never equal
            always_cpe=True,
            temporal_patch_size=video,
        )
        inner.reg_token = None  # the DINOv2 registers are replaced by the patch generator's prefix
        return model
    kwargs = vit_families.resolve_layer_kwargs(kwargs)
    try:
        if vit_families.is_family(cfg.arch):
            model = vit_families.build_family_vit(
                cfg.arch, kwargs, in_chans=cfg.in_chans, weight_init=weight_init, **optional
            )
        else:
            model = timm.create_model(
                cfg.arch, pretrained=False, in_chans=cfg.in_chans, weight_init=weight_init, **optional, **kwargs
            )
    except RuntimeError as e:
        known = ", ".join(vit_families.FAMILIES)
        raise ValueError(
            f"cannot build backbone {cfg.arch!r} from the checkpoint args: {e} "
            f"(openradio builds timm's ViT names and the RADIO names {known})"
        ) from e
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise ValueError(f"{cfg.arch!r} is not a timm VisionTransformer; only ViT students are supported")
    if getattr(model, "norm", None) is not None and not cfg.model_norm:
        model.norm = nn.Identity()
    model.head = nn.Identity()
    enable_cpe(
        model,
        cfg.cpe_max_size,
        num_cls_tokens=cfg.num_cls_tokens,
        register_multiple=cfg.register_multiple,
        num_registers=cfg.num_registers,
        temporal_patch_size=video,
    )
    return model


def enable_cpe(
    model: nn.Module,
    max_img_size: int,
    num_cls_tokens: int,
    register_multiple: int | None,
    num_registers: int | None,
    patch_bias: bool = False,
    always_cpe: bool = False,
    temporal_patch_size: int | None = None,
) -> None:
    """Replace timm's patch_embed / cls_token / pos_embed by one ViTPatchGenerator (with a second,
    temporally packed projection for clips of ``temporal_patch_size`` frames when that is set)."""
    p = model.patch_embed.patch_size[0]
    grid = round(max_img_size / p)  # Python rounding, as the official code (512 -> 32, 2048 -> 128)
    has_cls = getattr(model, "cls_token", None) is not None
    regs = num_registers_for(num_cls_tokens, register_multiple, num_registers) if has_cls else 0
    # the official generator runs in "CPE mode" unless the largest size equals timm's own
    # img_size (families spec §5): then the grid is cropped instead of resampled
    img = tuple(model.patch_embed.img_size)
    cpe_mode = always_cpe or (grid * p, grid * p) != img
    gen = ViTPatchGenerator(
        p,
        model.embed_dim,
        grid,
        num_cls_tokens if has_cls else 0,
        regs,
        cls_token=has_cls,
        in_chans=model.patch_embed.proj.in_channels,
        patch_bias=patch_bias,
        cpe_mode=cpe_mode,
        temporal_patch_size=temporal_patch_size,
    )
    model.patch_generator = gen
    model.patch_embed = None
    model.cls_token = None
    model.pos_embed = None
    model.pos_drop = None
    model.patch_size = p
    model.num_cls_tokens = gen.num_cls_tokens
    model.num_registers = gen.num_registers
    model.num_prefix_tokens = gen.num_prefix_tokens
