"""Hugging Face ``transformers``' native ``RadioModel`` (``model_type="radio"``), both ways.

``transformers`` (5.x) ships its own ``RadioModel`` for the C-RADIO family: input conditioner, CPE
patch generator (patch projection, position grid resampled to the input, CLS + register tokens),
plain pre-norm ViT blocks, ``summary`` (the CLS tokens named by ``summary_idxs``) and ``features``
(the patch tokens). It also takes packed variable-resolution input (``image_grid_hw``).

What the native class does **not** carry, and where :func:`save_transformers` puts it:

* teacher adaptor heads (``clip``, ``siglip``, ``dino_v2``, ``sam`` MLPs), the PHI-S feature
  normaliser and the intermediate-layer normaliser: in ``openradio.safetensors`` next to the
  native weights (official ``.pth.tar`` key names), described by the ``openradio`` entry of
  ``config.json``. transformers ignores both; ``openradio.radio_model(folder)`` reads them back.
  With a feature normaliser the native ``features`` are the raw (un-normalised) patch tokens.
* ViTDet windowed attention: a run-time mode, not weights; load the folder with openradio
  (``vitdet_window_size=...``) to use it.
* a final LayerNorm (``args.model_norm``), qk-norm, the DINOv2 student's block layout: refused
  with a clear error (no released RADIO ViT uses them with this class).

Everything ``RadioConfig`` describes is built, both ways: SwiGLU FFNs (``use_swiglu_ffn``: timm's
``SwiGLU``, ``gate_proj``/``up_proj``/``down_proj`` = ``fc1_g``/``fc1_x``/``fc2``), layer scale
(``layer_scaleN.lambda1`` = ``lsN.gamma``), ``hidden_act``, ``layer_norm_eps``, ``qkv_bias``, CLS
and register counts, and the temporally packed video projection (``video_temporal_patch_size``:
``embeddings.video_patch_projection`` = ``patch_generator.video_embedder``, the name Nemotron-3-
Nano-Omni's checkpoint gives it; see docs/video.md).

Reading a native folder needs only safetensors (no transformers, no repository code). Both key
layouts are accepted: the checkpoint layout ``save_pretrained`` writes (``radio_model.model.blocks.N
.attn.qkv``) and the module layout (``encoder.layer.N.attention.q_proj``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import save_file
from timm.layers import GELUTanh, QuickGELU
from torch import nn

from openradio.formats.build import build_radio, finish_loaded, preferred
from openradio.formats.official import jsonable_args, make_args, official_state_dict, parse_dtype
from openradio.formats.safeload import CheckpointError, read_safetensors, read_safetensors_file
from openradio.model.conditioner import InputConditioner
from openradio.model.radio import RADIOModel
from openradio.model.vit_families import swiglu_hidden_features

EXTRAS_FILE = "openradio.safetensors"
_TIMM_LN_EPS = 1e-6  # timm's VisionTransformer LayerNorm eps (other values go to model_kwargs' norm_eps)
# transformers' hidden_act -> openradio's layer name (openradio.model.vit_families.ACT_LAYERS): the
# same expression in the same order, so outputs match bit for bit
HIDDEN_ACTS = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}
# timm's SwiGLU names -> transformers' RadioSwiGLUFFN names
_SWIGLU_NAMES = {"fc1_g": "gate_proj", "fc1_x": "up_proj", "fc2": "down_proj"}

__all__ = [
    "save_transformers",
    "load_native",
    "is_native_config",
    "is_native_folder",
    "native_config",
    "native_state_dict",
    "EXTRAS_FILE",
]


def is_native_config(config: dict) -> bool:
    """A transformers ``RadioConfig`` (native weights), as opposed to the official remote-code layout."""
    return config.get("model_type") == "radio" and "args" not in config and "hidden_size" in config


def is_native_folder(folder: str | os.PathLike) -> bool:
    """A folder whose ``config.json`` is a transformers ``RadioConfig`` (see :func:`is_native_config`)."""
    cfg_path = Path(folder) / "config.json"
    return cfg_path.is_file() and is_native_config(json.loads(cfg_path.read_text()))


def _require_transformers():
    # imported only when writing a folder for transformers (reading one needs only safetensors)
    try:
        import transformers  # optional: pip install 'openradio[hf]'
        from transformers import RadioConfig, RadioModel  # noqa: F401  (optional [hf]: checks for the native class)
    except ImportError as e:
        raise ImportError(
            "this needs Hugging Face transformers with its native RadioModel (transformers >= 5); "
            f"install it with `pip install 'openradio[hf]'` ({e})"
        ) from None
    return transformers


# -- openradio -> native -----------------------------------------------------------------------------
def _check_exportable(model: RADIOModel) -> None:
    vit = model.model
    if not isinstance(getattr(vit, "norm", nn.Identity()), nn.Identity):
        raise ValueError(
            "this model has a final LayerNorm (args.model_norm=True), which transformers' RadioModel "
            "cannot express; use save_hf or the .pth.tar format instead"
        )
    if not isinstance(model.input_conditioner, InputConditioner):
        raise ValueError(
            "the input conditioner was detached (make_preprocessor_external); save the model before detaching it"
        )
    gen = model.patch_generator
    if gen.cls_token.token is None and gen.cls_token.num_prefix_tokens:
        raise ValueError("models without CLS tokens cannot be written as a transformers RadioModel")
    if not isinstance(gen.patch_normalizer, nn.Identity):
        raise ValueError("models with a patch normaliser cannot be written as a transformers RadioModel")
    first = _mlp_kind(model.blocks[0].mlp)
    for i, blk in enumerate(model.blocks):
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        kind = _mlp_kind(mlp)
        ok = (
            type(blk).__name__ == "Block"
            and attn is not None
            and hasattr(attn, "qkv")
            and kind is not None
            and all(isinstance(getattr(attn, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm", "norm"))
        )
        if not ok:
            raise ValueError(
                f"block {i} is not a plain pre-norm ViT block (qkv attention, an MLP with a GELU, "
                "quick-GELU, SiLU or ReLU, or timm's SwiGLU; no qk-norm); transformers' RadioModel "
                "cannot express it"
            )
        if kind != first:
            raise ValueError(
                f"block {i} has a {kind} FFN but block 0 a {first}: transformers' RadioModel has one "
                "FFN kind and width for all blocks"
            )
        if blk.norm1.eps != model.blocks[0].norm1.eps or blk.norm2.eps != blk.norm1.eps:
            raise ValueError("all LayerNorms must share one eps for transformers' RadioModel")


def _hidden_act(act: nn.Module) -> Optional[str]:
    """transformers' ``hidden_act`` for an MLP activation module (None: it has none)."""
    if isinstance(act, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}.get(act.approximate)
    for cls, name in ((GELUTanh, "gelu_pytorch_tanh"), (QuickGELU, "quick_gelu"), (nn.SiLU, "silu"), (nn.ReLU, "relu")):
        if type(act) is cls:
            return name
    return "gelu" if type(act).__name__ == "GELU" and type(act).__module__.startswith("timm.") else None


def _mlp_kind(mlp: Optional[nn.Module]) -> Optional[tuple]:
    """("swiglu", width) for timm's SwiGLU, (hidden_act, width) for timm's Mlp, None otherwise."""
    if mlp is None or not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        return None
    if type(mlp).__name__ == "SwiGLU" and type(mlp.act) is nn.SiLU:
        return ("swiglu", mlp.fc1_g.out_features)
    if type(mlp).__name__ == "Mlp" and hasattr(mlp, "fc1"):
        act = _hidden_act(mlp.act)
        return None if act is None else (act, mlp.fc1.out_features)
    return None


def _swiglu_ratio(d: int, hidden: int, hint: Any) -> float:
    """An ``mlp_ratio`` from which transformers sizes this SwiGLU width (the recorded one if it does)."""
    candidates = (
        ([float(hint)] if hint else [])
        + [4.0]
        + [h0 / d for h0 in range(max(1, hidden * 3 // 2 - 16), hidden * 3 // 2 + 17)]
    )
    for r in candidates:
        if int(d * r) and swiglu_hidden_features(d, r) == hidden:
            return r
    raise ValueError(
        f"SwiGLU width {hidden} is not what transformers' RadioModel makes of any mlp_ratio "
        "((int(int(D * ratio) * 2 / 3) + 7) // 8 * 8: a multiple of 8)"
    )


def native_config(model: RADIOModel) -> dict[str, Any]:
    """``RadioConfig`` keyword arguments describing ``model``'s backbone."""
    _check_exportable(model)
    gen = model.patch_generator
    blk = model.blocks[0]
    d = model.embed_dim
    act, hidden = _mlp_kind(blk.mlp)
    kwargs = (getattr(model.args, "model_kwargs", None) if model.args is not None else None) or {}
    if act == "swiglu":  # transformers' SwiGLU ignores hidden_act (always SiLU): keep its default
        act, mlp_ratio = "gelu", _swiglu_ratio(d, hidden, kwargs.get("mlp_ratio"))
    else:
        mlp_ratio = hidden / d
        if int(d * mlp_ratio) != hidden:
            raise ValueError(f"MLP width {hidden} is not int(hidden_size * mlp_ratio) for any float ratio")
    has_ls = any(hasattr(getattr(b, f"ls{j}"), "gamma") for b in model.blocks for j in (1, 2))
    cond = model.input_conditioner
    return dict(
        hidden_size=d,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=blk.attn.num_heads,
        mlp_ratio=mlp_ratio,
        hidden_act=act,
        layer_norm_eps=float(blk.norm1.eps),
        use_swiglu_ffn=type(blk.mlp).__name__ == "SwiGLU",
        video_temporal_patch_size=getattr(gen, "temporal_patch_size", None),
        qkv_bias=blk.attn.qkv.bias is not None,
        num_channels=gen.embedder.in_features // gen.patch_size**2,
        patch_size=model.patch_size,
        image_size=(model.preferred_resolution.height if model.preferred_resolution else 224),
        # the native class sizes its grid as max_img_size // patch_size: use the exact grid side
        max_img_size=gen.grid_size * gen.patch_size,
        num_cls_tokens=gen.num_cls_tokens,
        num_registers=gen.num_registers,
        summary_idxs=[int(i) for i in model.summary_idxs.tolist()],
        norm_mean=[float(v) for v in cond.norm_mean.flatten()],
        norm_std=[float(v) for v in cond.norm_std.flatten()],
        # only transformers' initial value (the weights carry the scales): the ViT's own init if it had one
        layerscale_value=float(kwargs.get("init_values") or 1.0) if has_ls else 1.0,
    )


def native_state_dict(model: RADIOModel) -> dict[str, torch.Tensor]:
    """``model``'s backbone under transformers ``RadioModel`` module names."""
    _check_exportable(model)
    gen = model.patch_generator
    d = model.embed_dim
    ones = torch.ones(d, dtype=model.dtype)
    out = {
        "input_conditioner.norm_mean": model.input_conditioner.norm_mean,
        "input_conditioner.norm_std": model.input_conditioner.norm_std,
        "embeddings.patch_projection.weight": gen.embedder.weight,
        "embeddings.position_embedding": gen.pos_embed,
        # no prefix at all (0 CLS, 0 registers): transformers keeps an empty (0, D) table
        "embeddings.cls_register_token": (
            gen.cls_token.token if gen.cls_token.token is not None else torch.zeros(0, d, dtype=model.dtype)
        ),
        "summary_idxs": model.summary_idxs,
    }
    if getattr(gen, "video_embedder", None) is not None:
        out["embeddings.video_patch_projection.weight"] = gen.video_embedder.weight
    for i, blk in enumerate(model.blocks):
        p = f"encoder.layer.{i}."
        q, k, v = blk.attn.qkv.weight.chunk(3, dim=0)
        out.update(
            {p + "attention.q_proj.weight": q, p + "attention.k_proj.weight": k, p + "attention.v_proj.weight": v}
        )
        if blk.attn.qkv.bias is not None:
            qb, kb, vb = blk.attn.qkv.bias.chunk(3, dim=0)
            out.update(
                {p + "attention.q_proj.bias": qb, p + "attention.k_proj.bias": kb, p + "attention.v_proj.bias": vb}
            )
        out[p + "attention.o_proj.weight"] = blk.attn.proj.weight
        out[p + "attention.o_proj.bias"] = (
            blk.attn.proj.bias if blk.attn.proj.bias is not None else torch.zeros(d, dtype=model.dtype)
        )
        for j in (1, 2):
            ls = getattr(blk, f"ls{j}")
            out[p + f"layer_scale{j}.lambda1"] = ls.gamma if hasattr(ls, "gamma") else ones
            for kind in ("weight", "bias"):
                out[p + f"norm{j}.{kind}"] = getattr(getattr(blk, f"norm{j}"), kind)
        names = _SWIGLU_NAMES if type(blk.mlp).__name__ == "SwiGLU" else {"fc1": "fc1", "fc2": "fc2"}
        for ours, theirs in names.items():
            layer = getattr(blk.mlp, ours)
            out[p + f"mlp.{theirs}.weight"] = layer.weight
            # transformers' FFN layers always have biases: a zero bias adds exactly nothing
            out[p + f"mlp.{theirs}.bias"] = (
                layer.bias if layer.bias is not None else torch.zeros(layer.out_features, dtype=model.dtype)
            )
    return {k: t.detach().cpu().clone() for k, t in out.items()}  # clones: no shared storage


def save_transformers(model: RADIOModel, folder: str | os.PathLike, version: Optional[str] = None) -> Path:
    """Write ``model`` as a folder that ``transformers.RadioModel.from_pretrained(folder)`` loads natively
    (no ``trust_remote_code``) and that ``openradio.radio_model(folder)`` loads completely.

    The native weights come from transformers' own ``save_pretrained``; adaptor heads and PHI-S
    normalisers (which the native class has no place for) go to ``openradio.safetensors``.
    """
    transformers = _require_transformers()
    RadioConfig, HFRadioModel = transformers.RadioConfig, transformers.RadioModel
    kwargs = native_config(model)
    state = native_state_dict(model)
    args = model.args
    meta: dict[str, Any] = {
        "format": 1,
        "version": version or model.version,
        "args": jsonable_args(args) if args is not None else None,
        "patch_size": model.patch_size,
        "max_resolution": model.max_resolution,
        "preferred_resolution": list(model.preferred_resolution) if model.preferred_resolution else None,
        "vitdet_num_windowed": model.vitdet_num_windowed,
        "vitdet_num_global": model.vitdet_num_global,
        "adaptor_names": list(model.adaptors),
        "adaptor_configs": {
            n: {"head_idx": a.head_idx, "upsample_factor": a.upsample_factor} for n, a in model.adaptors.items()
        },
        "not_in_native_model": [],
    }
    extras = {
        k: v for k, v in official_state_dict(model).items() if not k.startswith(("base_model.", "input_conditioner."))
    }
    if any(k.startswith("_feature_normalizer.") for k in extras):
        meta["not_in_native_model"].append("feature_normalizer")
    if any(k.startswith("_intermediate_feature_normalizer.") for k in extras):
        meta["not_in_native_model"].append("intermediate_feature_normalizer")
    if model.adaptors:
        meta["not_in_native_model"].append("adaptors")
    config = RadioConfig(**kwargs, openradio=meta)
    config.architectures = ["RadioModel"]
    with torch.device("meta"):
        hf = HFRadioModel(config)
    hf.load_state_dict(state, strict=True, assign=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(folder)
    extras_path = folder / EXTRAS_FILE
    if extras:
        save_file({k: v.contiguous() for k, v in extras.items()}, str(extras_path), metadata={"format": "pt"})
    elif extras_path.exists():
        extras_path.unlink()
    return folder


# -- native -> openradio -----------------------------------------------------------------------------
def _read_safetensors(folder: Path, exclude: Sequence[str] = (EXTRAS_FILE,)) -> dict[str, torch.Tensor]:
    return read_safetensors(folder, [p.name for p in sorted(folder.glob("*.safetensors")) if p.name not in exclude])


_MODULE_TO_OFFICIAL = [
    ("embeddings.patch_projection.", "base_model.patch_generator.embedder."),
    ("embeddings.video_patch_projection.", "base_model.patch_generator.video_embedder."),
    ("embeddings.position_embedding", "base_model.patch_generator.pos_embed"),
    ("embeddings.cls_register_token", "base_model.patch_generator.cls_token.token"),
    ("encoder.layer.", "base_model.blocks."),
    ("input_conditioner.", "input_conditioner."),
]
_CKPT_TO_OFFICIAL = [
    ("radio_model.model.", "base_model."),
    ("radio_model.input_conditioner.", "input_conditioner."),
]


def native_to_official(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor], dict[str, torch.Tensor]]:
    """Native weights (either key layout) -> official ``.pth.tar`` keys, the summary_idxs buffer, and
    the layer-scale vectors (``base_model.blocks.N.lsJ.gamma``) kept apart."""
    out: dict[str, torch.Tensor] = {}
    summary_idxs = None
    layer_scales: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if k in ("summary_idxs", "radio_model.summary_idxs"):
            summary_idxs = v
            continue
        if k.endswith("cls_register_token" if k.startswith("embeddings.") else "cls_token.token") and not v.numel():
            continue  # no CLS tokens and no registers: openradio keeps no empty table
        for src, dst in _CKPT_TO_OFFICIAL + _MODULE_TO_OFFICIAL:
            if k.startswith(src):
                k2 = dst + k[len(src) :]
                break
        else:
            raise CheckpointError(f"unexpected key {k!r} in a transformers RADIO folder")
        for ours, theirs in _SWIGLU_NAMES.items():
            k2 = k2.replace(f".mlp.{theirs}.", f".mlp.{ours}.")
        k2 = k2.replace(".attention.o_proj.", ".attn.proj.")
        if ".attention." in k2 and "_proj." in k2:  # q/k/v projections -> one qkv
            head, rest = k2.split(".attention.", 1)
            which, kind = rest.split("_proj.")
            qkv.setdefault(f"{head}.attn.qkv.{kind}", {})[which] = v
            continue
        if ".layer_scale" in k2:
            head, rest = k2.split(".layer_scale", 1)
            layer_scales[f"{head}.ls{rest[0]}.gamma"] = v
            continue
        out[k2] = v
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{key}: expected q, k and v projections, found {sorted(parts)}")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, summary_idxs, layer_scales


def _args_from_native(config: dict, use_layer_scale: bool) -> argparse.Namespace:
    """Checkpoint ``args`` for the ViT a ``RadioConfig`` describes (layers named as data in
    ``model_kwargs``: :func:`openradio.model.vit_families.resolve_layer_kwargs`)."""
    p = int(config.get("patch_size", 16))
    n_cls = int(config.get("num_cls_tokens", 3))
    if int(config.get("num_channels", 3)) != 3:
        raise ValueError(
            f"num_channels={config['num_channels']} is not supported: openradio's input conditioner "
            "and input checks take RGB images (3 channels)"
        )
    d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    if config.get("head_dim") not in (None, d // heads) or d % heads:
        raise ValueError(
            f"head_dim={config.get('head_dim')} with hidden_size={d} and {heads} heads is not "
            "supported (openradio's ViT uses hidden_size / num_attention_heads)"
        )
    summary_idxs = list(config.get("summary_idxs") or [0, 1])
    ratio = float(config.get("mlp_ratio", 4.0))
    kwargs = dict(
        embed_dim=d,
        depth=int(config["num_hidden_layers"]),
        num_heads=heads,
        mlp_ratio=ratio,
        patch_size=p,
        qkv_bias=bool(config.get("qkv_bias", True)),
    )
    if config.get("use_swiglu_ffn"):  # transformers' SwiGLU gates with SiLU whatever hidden_act says
        kwargs.update(mlp_layer="swiglu", mlp_hidden_features=swiglu_hidden_features(d, ratio))
    else:
        act = config.get("hidden_act", "gelu")
        if act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act={act!r} is not supported (openradio builds {', '.join(HIDDEN_ACTS)})")
        if act != "gelu":
            kwargs["act_layer"] = HIDDEN_ACTS[act]
    eps = float(config.get("layer_norm_eps", _TIMM_LN_EPS))
    if eps != _TIMM_LN_EPS:
        kwargs["norm_eps"] = eps
    if use_layer_scale:
        kwargs["init_values"] = float(config.get("layerscale_value") or 1.0)
    video = config.get("video_temporal_patch_size")
    if video is not None and int(video) < 2:
        raise ValueError(
            f"video_temporal_patch_size={video} is not supported: clips are told from images by "
            "their channel count, so a video patch needs at least 2 frames (as transformers checks)"
        )
    # one summary "teacher" per CLS token, so the token count and summary selection come out right
    teachers = [dict(name=f"cls{i}", use_summary=i in summary_idxs) for i in range(n_cls)]
    return make_args(
        "vit_base_patch16_224",
        teachers=teachers,
        model_kwargs=kwargs,
        cpe_max_size=(int(config.get("max_img_size", 2048)) // p) * p,
        register_multiple=None,
        cpe_num_registers=int(config.get("num_registers", 0)),
        in_chans=int(config.get("num_channels", 3)),
        dtype=parse_dtype(config.get("dtype") or config.get("torch_dtype") or "float32"),
        source="transformers",
        **({"video_temporal_patch_size": int(video)} if video else {}),
    )


def load_native(
    folder: str | os.PathLike,
    config: Optional[dict] = None,
    adaptor_names: Optional[Sequence[str]] = None,
    vitdet_window_size: Optional[int] = None,
    version: Optional[str] = None,
) -> RADIOModel:
    """A RADIOModel from a transformers-native RADIO folder (config.json + safetensors); its
    ``version`` is ``version``, else the one the folder records, else the folder's path."""
    folder = Path(folder)
    if config is None:
        config = json.loads((folder / "config.json").read_text())
    if not is_native_config(config):
        raise CheckpointError(f"{folder / 'config.json'} is not a transformers RadioConfig (model_type='radio')")
    state, summary_idxs, layer_scales = native_to_official(_read_safetensors(folder))
    meta = config.get("openradio") or {}
    extras_path = folder / EXTRAS_FILE
    if extras_path.is_file():
        state.update(read_safetensors_file(extras_path))
    if adaptor_names and not meta.get("adaptor_names"):
        raise ValueError(
            f"{folder} holds no adaptor heads (a plain transformers RADIO folder); load it without adaptor_names"
        )
    use_ls = any(not torch.all(v == 1) for v in layer_scales.values())
    if meta.get("args"):
        args = argparse.Namespace(**meta["args"])
        args.dtype = parse_dtype(getattr(args, "dtype", None))
        has_ls = (getattr(args, "model_kwargs", None) or {}).get("init_values") is not None
        if use_ls and not has_ls:
            raise CheckpointError(f"{folder}: the weights have layer scales but the stored args build a ViT without")
    else:
        args = _args_from_native(config, use_ls)
        has_ls = use_ls
    if has_ls:
        state.update(layer_scales)
    model = build_radio(
        args,
        state,
        adaptor_names=adaptor_names,
        vitdet_window_size=vitdet_window_size,
        version=version or meta.get("version") or str(folder),
        patch_size=meta.get("patch_size"),
        max_resolution=meta.get("max_resolution"),
        preferred_resolution=preferred(meta.get("preferred_resolution")),
        vitdet_num_windowed=meta.get("vitdet_num_windowed"),
        vitdet_num_global=meta.get("vitdet_num_global"),
    )
    return finish_loaded(model, summary_idxs=summary_idxs, adaptor_configs=meta.get("adaptor_configs"))
