"""Build the timm ViT from a checkpoint's ``args`` and fit it with the CPE patch generator."""
from __future__ import annotations

import argparse
from typing import Any

import timm
import torch
from torch import nn

from openradio.model.patch_generator import ViTPatchGenerator, num_registers_for


def arg(args: Any, name: str, default: Any = None) -> Any:
    """Read an ``args`` field from a Namespace or a dict."""
    if isinstance(args, dict):
        return args.get(name, default)
    return getattr(args, name, default)


def parse_dtype(value: Any) -> torch.dtype:
    """``args.dtype`` may be a torch.dtype or its string form ('torch.bfloat16' / 'bfloat16')."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    name = str(value).replace("torch.", "")
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {value!r} in checkpoint args")
    return dt


def teacher_names(args: Any) -> list[str]:
    return [t["name"] for t in (arg(args, "teachers") or [])]


def unique_names(args: Any) -> list[str]:
    return list(dict.fromkeys(teacher_names(args)))


def create_backbone(args: Any, *, init_weights: bool = False) -> nn.Module:
    """timm VisionTransformer per ``args`` with the CPE patch generator installed.

    ``init_weights=False`` skips timm's initialisation (every tensor then comes from a
    checkpoint and a missing one is an error at load time, never silent garbage).
    """
    kwargs = dict(arg(args, "model_kwargs") or {})
    kwargs.pop("weight_init", None)
    optional = {
        "drop_rate": arg(args, "drop"),
        "drop_path_rate": arg(args, "drop_path"),
        "global_pool": arg(args, "gp"),
    }
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    in_chans = arg(args, "in_chans") or 3
    try:
        model = timm.create_model(arg(args, "model"), pretrained=False, in_chans=in_chans,
                                  weight_init="" if init_weights else "skip", **kwargs)
    except RuntimeError as e:
        raise ValueError(f"timm cannot build model {arg(args, 'model')!r} from the checkpoint args: {e}") from e
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise ValueError(f"{arg(args, 'model')!r} is not a timm VisionTransformer; only ViT students are supported")
    if getattr(model, "norm", None) is not None and not arg(args, "model_norm", False):
        model.norm = nn.Identity()
    model.head = nn.Identity()
    if arg(args, "cpe_max_size") is None:
        raise ValueError("checkpoints without CPE (args.cpe_max_size=None) are not supported")
    enable_cpe(model, arg(args, "cpe_max_size"),
               num_cls_tokens=len(unique_names(args)) if arg(args, "cls_token_per_teacher", True) else 1,
               register_multiple=arg(args, "register_multiple"),
               num_registers=arg(args, "cpe_num_registers"))
    return model


def enable_cpe(model: nn.Module, max_img_size: int, num_cls_tokens: int, register_multiple: int | None,
               num_registers: int | None) -> None:
    """Replace timm's patch_embed / cls_token / pos_embed by one ViTPatchGenerator."""
    p = model.patch_embed.patch_size[0]
    grid = round(max_img_size / p)  # Python rounding, as the official code (512 -> 32, 2048 -> 128)
    has_cls = getattr(model, "cls_token", None) is not None
    regs = num_registers_for(num_cls_tokens, register_multiple, num_registers) if has_cls else 0
    gen = ViTPatchGenerator(p, model.embed_dim, grid, num_cls_tokens if has_cls else 0, regs,
                            cls_token=has_cls, in_chans=model.patch_embed.proj.in_channels)
    model.patch_generator = gen
    model.patch_embed = None
    model.cls_token = None
    model.pos_embed = None
    model.pos_drop = None
    model.patch_size = p
    model.num_cls_tokens = gen.num_cls_tokens
    model.num_registers = gen.num_registers
    model.num_summary_tokens = gen.num_skip


def make_args(model: str = "vit_base_patch16_224", teachers: list[dict] | None = None, **overrides) -> argparse.Namespace:
    """``args`` in the official checkpoint layout (RADIOv2.5-b recipe by default)."""
    base = dict(
        model=model, in_chans=None, input_size=None, pretrained=False, num_classes=None, drop=0.0,
        drop_path=None, drop_block=None, gp=None, bn_momentum=None, bn_eps=None, initial_checkpoint="",
        torchscript=False, cls_token_per_teacher=True, cpe_max_size=2048, model_kwargs={},
        teachers=teachers or [], register_multiple=8, spectral_reparam=False, model_norm=False,
        mlp_version="v2", mlp_hidden_size=1520, mlp_num_inner=1, dtype=torch.float32,
    )
    base.update(overrides)
    return argparse.Namespace(**base)
