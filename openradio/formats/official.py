"""The official ``.pth.tar`` checkpoint format: its reader and writer, the key mapping, and the
official ``args`` namespace <-> :class:`~openradio.model.config.RadioConfig`.

Conversion lives here, at the edge; the modules in ``openradio.model`` know nothing about the
file layout, and :mod:`openradio.formats.build` builds the model from what :func:`from_official`
returns. Format (inference spec §1): a dict with ``args`` (argparse.Namespace), ``state_dict``
(``base_model.*`` backbone, ``input_conditioner.*``, ``_heads.{i|name}.*``,
``_feature_projections.{i|name}.*``, optional ``_feature_normalizer.*`` and
``_intermediate_feature_normalizer.*``), optional ``state_dict_ema``, ``arch``, ``epoch``.
Files are read through :func:`openradio.formats.safeload.safe_torch_load`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from openradio.atomicio import atomic_path
from openradio.formats.safeload import CheckpointError, safe_torch_load
from openradio.model import vit_families
from openradio.model.conditioner import InputConditioner
from openradio.model.config import BackboneConfig, RadioConfig
from openradio.model.normalizers import FeatureNormalizer
from openradio.model.radio import RADIOModel

__all__ = [
    "load_checkpoint_file",
    "save_checkpoint",
    "official_state_dict",
    "from_official",
    "radio_config",
    "official_args",
    "make_args",
    "jsonable_args",
    "arg",
    "parse_dtype",
    "teacher_names",
    "unique_names",
    "select_state",
    "split_state",
    "prefixed",
    "clean_key",
    "materialize_parametrizations",
    "backbone_state_from_official",
    "backbone_state_to_official",
    "set_teacher_fields",
    "set_text_towers",
    "CheckpointError",
]


# -- reading -----------------------------------------------------------------------------------------
def load_checkpoint_file(path: str | os.PathLike, mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)`` with an allow-list: a pickle that asks to build any
    other object (and so could run code) is refused before anything in it runs. A file that is
    not a checkpoint at all (an image, JSON, an empty, truncated or bit-flipped file) or whose
    weights are not floating point is one line saying so (see :func:`safe_torch_load`; ``mmap``
    as there)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    chk = safe_torch_load(path, mmap=mmap)
    if not isinstance(chk, dict) or "args" not in chk or not ("state_dict" in chk or "state_dict_ema" in chk):
        keys = sorted(map(str, chk))[:8] if isinstance(chk, dict) else type(chk).__name__
        raise CheckpointError(
            f"{path} is not an official RADIO checkpoint: expected a dict with 'args' and 'state_dict', found {keys}"
        )
    for part in ("state_dict", "state_dict_ema"):
        for k, v in (chk.get(part) or {}).items():
            # integer buffers exist (a spectral norm's `_sn_version` counter); weights and biases,
            # and anything boolean or complex, must be floating point
            if (
                not torch.is_tensor(v)
                or v.dtype == torch.bool
                or v.is_complex()
                or (not v.is_floating_point() and k.rsplit(".", 1)[-1] in ("weight", "bias"))
            ):
                kind = str(v.dtype).replace("torch.", "") if torch.is_tensor(v) else type(v).__name__
                raise CheckpointError(
                    f"{path}: {part}[{k!r}] is {kind}, but RADIO weights are floating point "
                    "(float32, float16 or bfloat16): the file was written wrongly"
                )
    return chk


def clean_key(k: str) -> str:
    for pre in ("module.", "_orig_mod."):
        while k.startswith(pre):
            k = k[len(pre) :]
    return k


def select_state(chk: dict) -> tuple[dict[str, torch.Tensor], bool]:
    """EMA weights win whole when present (backbone, conditioner, heads, normalisers alike)."""
    if chk.get("state_dict_ema") is not None:
        return chk["state_dict_ema"], True
    return chk["state_dict"], False


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    backbone = {k[len("base_model.") :]: v for k, v in state.items() if k.startswith("base_model.")}
    rest = {clean_key(k): v for k, v in state.items() if not k.startswith("base_model.")}
    return backbone, rest


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix.`` (exact component match: '_heads.1' never captures '_heads.10')."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}


# -- spectral reparametrisation ----------------------------------------------------------------------
PARAM_SUFFIX = ".parametrizations.weight.original"


def _spectral_weight(
    W: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, eps: float, n_iter: int
) -> torch.Tensor:
    """Effective weight W * s / sigma after the power-iteration step(s) the official loader runs
    (it materialises in training mode). Operation order matters for bit-exactness."""
    W, u, v, scale = W.float(), u.float(), v.float(), scale.float()
    for _ in range(n_iter):
        u = F.normalize(torch.mv(W, v), dim=0, eps=eps)
        v = F.normalize(torch.mv(W.t(), u), dim=0, eps=eps)
    sigma = torch.dot(u, torch.mv(W, v)) + eps
    s = F.softplus(scale) + 0.05
    return W * (s.float() / sigma.float())


def materialize_parametrizations(
    state: dict[str, torch.Tensor], *, eps: float, n_iter: int, allow_identity: bool, where: str
) -> dict[str, torch.Tensor]:
    """Replace ``X.parametrizations.weight.*`` entries by a plain ``X.weight``."""
    out = {k: v for k, v in state.items() if ".parametrizations." not in k}
    layers = sorted({k[: -len(PARAM_SUFFIX)] for k in state if k.endswith(PARAM_SUFFIX)})
    for layer in layers:
        W = state[layer + PARAM_SUFFIX]
        base = layer + ".parametrizations.weight.0"
        if f"{base}.parts.0._sn_version" in state:
            chunks = W.float().chunk(3, dim=0)
            parts = []
            for j, Wj in enumerate(chunks):
                q = f"{base}.parts.{j}"
                parts.append(_spectral_weight(Wj, state[f"{q}._u"], state[f"{q}._v"], state[f"{q}.scale"], eps, n_iter))
            out[layer + ".weight"] = torch.cat(parts, dim=0)
        elif f"{base}._sn_version" in state:
            out[layer + ".weight"] = _spectral_weight(
                W, state[f"{base}._u"], state[f"{base}._v"], state[f"{base}.scale"], eps, n_iter
            )
        elif allow_identity and not any(k.startswith(base + ".") for k in state):
            out[layer + ".weight"] = W  # DAMP: an identity parametrisation
        else:
            raise CheckpointError(
                f"{where}: layer {layer!r} is stored as a parametrised weight without the spectral "
                "'_sn_version' entries, so its effective weight cannot be computed"
            )
    return out


# -- official args <-> typed configs ------------------------------------------------------------------
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


def make_args(
    model: str = "vit_base_patch16_224", teachers: list[dict] | None = None, **overrides
) -> argparse.Namespace:
    """``args`` in the official checkpoint layout (RADIOv2.5-b recipe by default)."""
    base = dict(
        model=model,
        in_chans=None,
        input_size=None,
        pretrained=False,
        num_classes=None,
        drop=0.0,
        drop_path=None,
        drop_block=None,
        gp=None,
        bn_momentum=None,
        bn_eps=None,
        initial_checkpoint="",
        torchscript=False,
        cls_token_per_teacher=True,
        cpe_max_size=2048,
        model_kwargs={},
        teachers=teachers or [],
        register_multiple=8,
        spectral_reparam=False,
        model_norm=False,
        mlp_version="v2",
        mlp_hidden_size=1520,
        mlp_num_inner=1,
        dtype=torch.float32,
    )
    base.update(overrides)
    return argparse.Namespace(**base)


def radio_config(args: Any, backbone_state: Optional[dict[str, torch.Tensor]] = None) -> RadioConfig:
    """The typed config an official ``args`` describes. For the DINOv2 students (whose official
    builder ignores ``model_kwargs``) the sizes come from ``backbone_state`` (openradio keys)."""
    return RadioConfig(
        backbone=_backbone_config(args, backbone_state),
        teachers=[dict(t) for t in (arg(args, "teachers") or [])],
        cls_token_per_teacher=bool(arg(args, "cls_token_per_teacher", True)),
        mlp_version=arg(args, "mlp_version") or "v2",
        spatial_mlp_version=arg(args, "spatial_mlp_version"),
        mlp_hidden_size=arg(args, "mlp_hidden_size", 1520),
        mlp_num_inner=arg(args, "mlp_num_inner", 1),
    ).with_backbone_tokens()


def official_args(cfg: RadioConfig, **extra: Any) -> argparse.Namespace:
    """The official checkpoint ``args`` for a typed config (the inverse of :func:`radio_config`);
    ``extra`` adds recipe fields the official loader ignores (e.g. ``amp_dtype``)."""
    b = cfg.backbone
    fields = dict(
        teachers=[dict(t) for t in cfg.teachers],
        model_kwargs=dict(b.model_kwargs),
        cpe_max_size=b.cpe_max_size,
        register_multiple=b.register_multiple,
        model_norm=b.model_norm,
        cls_token_per_teacher=cfg.cls_token_per_teacher,
        mlp_version=cfg.mlp_version,
        mlp_hidden_size=cfg.mlp_hidden_size,
        mlp_num_inner=cfg.mlp_num_inner,
        dtype=b.dtype,
        drop=b.drop_rate or 0.0,
        drop_path=b.drop_path_rate,
        gp=b.global_pool,
    )
    if b.in_chans != 3:
        fields["in_chans"] = b.in_chans
    if b.num_registers is not None:
        fields["cpe_num_registers"] = b.num_registers
    if cfg.spatial_mlp_version:
        fields["spatial_mlp_version"] = cfg.spatial_mlp_version
    if b.video_temporal_patch_size:
        fields["video_temporal_patch_size"] = b.video_temporal_patch_size
    fields.update(extra)
    return make_args(b.arch, **fields)


def _backbone_config(args: Any, backbone_state: Optional[dict[str, torch.Tensor]] = None) -> BackboneConfig:
    """The typed backbone config an official ``args`` describes (its CLS-token count is set from
    the teachers by :func:`radio_config`).

    For the DINOv2 students the official builder ignores ``model_kwargs`` and always builds the
    released size; their sizes are read from ``backbone_state`` (openradio keys) when given."""
    name = arg(args, "model")
    kwargs = dict(arg(args, "model_kwargs") or {})
    if vit_families.is_dinov2_student(name) and backbone_state:
        # the weights decide; without weights (a new student) model_kwargs are honoured, which
        # the official builder would not do
        kwargs = vit_families.dinov2_sizes_from_state(backbone_state)
    return BackboneConfig(
        arch=name,
        model_kwargs=kwargs,
        cpe_max_size=arg(args, "cpe_max_size"),
        register_multiple=arg(args, "register_multiple"),
        num_registers=arg(args, "cpe_num_registers"),
        model_norm=bool(arg(args, "model_norm", False)),
        in_chans=arg(args, "in_chans") or 3,
        drop_rate=arg(args, "drop"),
        drop_path_rate=arg(args, "drop_path"),
        global_pool=arg(args, "gp"),
        dtype=parse_dtype(arg(args, "dtype")),
        video_temporal_patch_size=arg(args, "video_temporal_patch_size") or _temporal_patch_size(backbone_state),
    )


def _temporal_patch_size(backbone_state: Optional[dict[str, torch.Tensor]]) -> Optional[int]:
    """Frames per token of a video patch projection (``patch_generator.video_embedder``, the name
    transformers' conversion gives Nemotron-3-Nano-Omni's), from its width over the image
    projection's. openradio writes it with ``args.video_temporal_patch_size``; the official loader
    ignores both (its backbone load is not strict: an unexpected-key warning) and runs images."""
    for key, video in (backbone_state or {}).items():
        if key.endswith("patch_generator.video_embedder.weight"):
            image = backbone_state[key.replace("video_embedder", "embedder")]
            return video.shape[1] // image.shape[1]
    return None


_DINOV2_MLP = {"mlp.w12.": "mlp.fc1.", "mlp.w3.": "mlp.fc2."}


def backbone_state_from_official(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Official backbone keys (``base_model.`` stripped) -> openradio's: LayerScale ``grandma``
    (the official LayerScale class) is timm's ``gamma``; the DINOv2 student's SwiGLU ``w12``/``w3``
    are timm's ``fc1``/``fc2`` (same [gate | value] packing)."""
    dinov2 = vit_families.is_dinov2_student(arch)
    out = {}
    for k, v in state.items():
        if k.endswith((".ls1.grandma", ".ls2.grandma")):
            k = k[: -len("grandma")] + "gamma"
        if dinov2:
            for a, b in _DINOV2_MLP.items():
                k = k.replace(a, b)
        out[k] = v
    return out


def backbone_state_to_official(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The inverse of :func:`backbone_state_from_official` (``gamma`` stays: the official loader
    accepts it)."""
    if not vit_families.is_dinov2_student(arch):
        return dict(state)
    out = {}
    for k, v in state.items():
        for a, b in _DINOV2_MLP.items():
            k = k.replace(b, a)
        out[k] = v
    return out


# -- official layout -> RADIOModel's layout (what openradio.formats.build reads) ---------------------
_NORMALIZERS = [
    ("_feature_normalizer", "feature_normalizer"),
    ("_intermediate_feature_normalizer", "inter_feature_normalizer"),
]


def from_official(
    args: Any, state: dict[str, torch.Tensor], *, adaptor_names: Optional[list[str]] = None, is_ema: bool = False
) -> tuple[RadioConfig, dict[str, torch.Tensor], argparse.Namespace]:
    """Official ``args`` and an official-format state dict -> the typed config, the state dict in
    :class:`RADIOModel`'s own layout (only the adaptors named; spectral parametrisations folded
    into plain weights, official backbone names made openradio's) and ``args`` as a Namespace.
    No tensor is copied except those the folding computes."""
    if isinstance(args, dict):
        args = argparse.Namespace(**args)
    backbone_state, rest = split_state(state)
    spectral = arg(args, "spectral_reparam", False) and not is_ema
    damp = arg(args, "damp") and not is_ema
    if spectral or damp or any(PARAM_SUFFIX in k for k in backbone_state):
        sr = arg(args, "spectral_reparam", False)
        eps, n_iter = (sr.get("eps", 1e-12), sr.get("n_power_iterations", 1)) if isinstance(sr, dict) else (1e-6, 1)
        backbone_state = materialize_parametrizations(
            backbone_state, eps=eps, n_iter=n_iter, allow_identity=True, where="backbone"
        )
    backbone_state = backbone_state_from_official(backbone_state, arg(args, "model"))
    cfg = radio_config(args, backbone_state)
    own = {f"model.{k}": v for k, v in backbone_state.items()}
    own.update({f"input_conditioner.{k}": v for k, v in prefixed(rest, "input_conditioner").items()})
    spectral_heads = bool(arg(args, "spectral_heads", False)) and not is_ema
    for name in adaptor_names or []:
        tidx, _ = cfg.find_teacher(name)
        for family, part, what in (("_heads", "head_mlp", "summary"), ("_feature_projections", "feat_mlp", "feature")):
            head = prefixed(rest, f"{family}.{tidx}")
            head.update(prefixed(rest, f"{family}.{name}"))
            if spectral_heads and head:
                head = materialize_parametrizations(
                    head, eps=1e-6, n_iter=1, allow_identity=False, where=f"{name} {what} head"
                )
            if part == "head_mlp" and head and not arg(args, "mlp_version"):
                cfg.mlp_version = _infer_mlp_version(head)  # old args without mlp_version: the weights tell
            own.update({f"adaptors.{name}.{part}.{k}": v for k, v in head.items()})
    for src, dst in _NORMALIZERS:
        own.update({f"{dst}.{k}": v for k, v in prefixed(rest, src).items()})
    return cfg, own, args


def _infer_mlp_version(summary_head: dict[str, torch.Tensor]) -> str:
    if "mlp.final.2.weight" in summary_head:
        return "attn"
    return "v2" if "final.2.weight" in summary_head else "v1"


def jsonable_args(args: Any) -> dict:
    """Checkpoint ``args`` (a Namespace or dict) as JSON-ready data: dtypes by name (the form the
    Hugging Face and transformers-native folders store)."""
    a = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    for field in ("dtype", "amp_dtype"):
        if a.get(field) is not None:
            a[field] = str(a[field]).split(".")[-1]
    return json.loads(json.dumps(a, default=str))


# -- writing -----------------------------------------------------------------------------------------
def official_state_dict(radio: RADIOModel, heads_by_name: bool = True) -> dict[str, torch.Tensor]:
    """The inverse mapping: RADIOModel -> official state dict keys."""
    out: dict[str, torch.Tensor] = {}
    cfg = radio.config
    args = radio.args or {}
    arch = cfg.backbone.arch if cfg is not None else (arg(args, "model") or "")
    for k, v in backbone_state_to_official(radio.model.state_dict(), arch).items():
        out[f"base_model.{k}"] = v
    cond = radio.input_conditioner
    if isinstance(cond, InputConditioner):
        out["input_conditioner.norm_mean"] = cond.norm_mean
        out["input_conditioner.norm_std"] = cond.norm_std
    names = cfg.teacher_names if cfg is not None else teacher_names(args)
    for name, ad in radio.adaptors.items():
        key = name if heads_by_name or name not in names else str(names.index(name))
        for k, v in ad.head_mlp.state_dict().items():
            out[f"_heads.{key}.{k}"] = v
        for k, v in ad.feat_mlp.state_dict().items():
            out[f"_feature_projections.{key}.{k}"] = v
    if isinstance(radio.feature_normalizer, FeatureNormalizer):
        for k, v in radio.feature_normalizer.state_dict().items():
            out[f"_feature_normalizer.{k}"] = v
    if radio.inter_feature_normalizer is not None:
        for k, v in radio.inter_feature_normalizer.state_dict().items():
            out[f"_intermediate_feature_normalizer.{k}"] = v
    return {k: v.detach().cpu().clone() for k, v in out.items()}


def save_checkpoint(
    path: str | os.PathLike,
    args: argparse.Namespace,
    state_dict: dict[str, torch.Tensor],
    *,
    state_dict_ema: Optional[dict] = None,
    epoch: int = 0,
    arch: Optional[str] = None,
) -> Path:
    """Write an official-format ``.pth.tar`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    chk = {"arch": arch or arg(args, "model"), "epoch": epoch, "state_dict": state_dict, "args": args}
    if state_dict_ema is not None:
        chk["state_dict_ema"] = state_dict_ema
    with atomic_path(path, fsync=True) as tmp:
        torch.save(chk, tmp)
    return path


def set_teacher_fields(path: str | os.PathLike, fields: dict[str, dict[str, Any]]) -> Path:
    """Rewrite an official checkpoint (atomically) with ``fields[name]`` added to the entry of each
    named teacher in ``args.teachers`` (e.g. the ``text_model``/``text_weights`` of its text tower)."""
    chk = load_checkpoint_file(path)
    for entry in chk["args"].teachers:
        entry.update(fields.get(entry.get("name"), {}))
    return save_checkpoint(
        path,
        chk["args"],
        chk["state_dict"],
        state_dict_ema=chk.get("state_dict_ema"),
        epoch=chk.get("epoch", 0),
        arch=chk.get("arch"),
    )


def set_text_towers(path: str | os.PathLike, towers: dict[str, tuple[str | os.PathLike, str | os.PathLike]]) -> Path:
    """Name each teacher's text tower (``{teacher: (open_clip config JSON, weights)}``) in its entry of the
    checkpoint's ``args.teachers`` (``text_model``/``text_weights``, relative to the checkpoint's folder,
    which is how :func:`openradio.model.text.text_tower_source` resolves them)."""
    folder = Path(path).parent
    fields = {
        name: {"text_model": os.path.relpath(cfg, folder), "text_weights": os.path.relpath(weights, folder)}
        for name, (cfg, weights) in towers.items()
    }
    return set_teacher_fields(path, fields)
