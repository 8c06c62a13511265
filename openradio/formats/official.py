"""The official ``.pth.tar`` checkpoint format: safe reading, key mapping, writing.

Conversion lives here, at the edge; the modules in ``openradio.model`` know nothing about the
file layout. Format (inference spec §1): a dict with ``args`` (argparse.Namespace),
``state_dict`` (``base_model.*`` backbone, ``input_conditioner.*``, ``_heads.{i|name}.*``,
``_feature_projections.{i|name}.*``, optional ``_feature_normalizer.*`` and
``_intermediate_feature_normalizer.*``), optional ``state_dict_ema``, ``arch``, ``epoch``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from openradio.model import vit_families
from openradio.model.adaptors import GenericAdaptor, head_versions, make_adaptor, mlp_dims_from_state
from openradio.model.backbone import create_backbone
from openradio.model.config import BackboneConfig, RadioConfig
from openradio.model.conditioner import InputConditioner
from openradio.model.normalizers import FeatureNormalizer, IntermediateFeatureNormalizer
from openradio.model.radio import RADIOModel

# What an official checkpoint's pickle may reference beyond tensors and plain containers.
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, unsafe or inconsistent."""


# -- reading ---------------------------------------------------------------------------------------
_MAGIC = [(b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
          (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"7z\xbc\xaf", "a 7-zip archive"),
          (b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"), (b"\x89HDF", "an HDF5 file (Keras/h5py)"),
          (b"\x93NUMPY", "a NumPy .npy array")]


def sniff_file(path: str | os.PathLike) -> Optional[str]:
    """What a file that cannot be a PyTorch checkpoint looks like ('a PNG image', 'a JSON
    document', ...), or None when it may be one (a zip archive or a pickle)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return None  # zip (torch.save) or a pickle (legacy torch.save)
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI ", b"WAVE"):
        return {b"WEBP": "a WebP image", b"AVI ": "an AVI video", b"WAVE": "a WAV file"}[head[8:12]]
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video or HEIF image"
    if len(head) > 8:
        n = int.from_bytes(head[:8], "little")
        if 0 < n < 100_000_000 and head[8:10] == b'{"':
            return "a safetensors file (a Hugging Face folder holds it with config.json: pass the folder)"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive (a folder packed with tar, not a torch.save file)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        return "a JSON document"
    if stripped.startswith(("<!DOCTYPE", "<html", "<HTML", "<?xml")):
        return "an HTML/XML page (a download that returned a web page?)"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return None


def verify_zip_checksums(path: str | os.PathLike) -> Optional[str]:
    """The first member of a zip-format torch file whose data does not match its stored CRC-32
    (``torch.load`` does not check them, so a flipped bit would load silently), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            if all(info.CRC == 0 for info in z.infolist() if info.file_size):
                return None  # written without checksums: nothing to verify against
            return z.testzip()
    except zipfile.BadZipFile:
        return None  # not readable as a zip here: torch.load says why


def safe_torch_load(path: str | os.PathLike, what: str = "PyTorch checkpoint", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` (allow-list :data:`SAFE_GLOBALS`) after cheap checks, with
    every failure as a one-line :class:`CheckpointError`: an empty file, a file of another kind
    (image, JSON, text...), a zip whose checksums fail, a truncated file, or a pickle that asks for
    anything beyond tensors and plain containers (refused before any of it runs). The reader's own
    message stays available as the exception's ``__cause__`` (``openradio --debug``).

    ``mmap=True`` maps the tensors from the file (copy-on-write) instead of reading them into
    memory: pages are read on first use, and a model built with ``build_radio(..., assign=True)``
    keeps them as its weights, so loading needs no second copy. Files in the pre-1.6 (non-zip)
    format cannot be mapped and are read normally."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch it again.")
    kind = sniff_file(path)
    if kind is not None:
        raise CheckpointError(f"{path} is not a {what}: looks like {kind}")
    bad = verify_zip_checksums(path)
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt: the data of {bad!r} does not match its stored checksum (a bit "
                              "changed in storage or transfer); fetch the file again")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        detail = _unsafe_detail(str(e))
        if detail is None:
            raise CheckpointError(f"cannot read {path} ({size:,} bytes): not a {what}, or a corrupt one "
                                  "(openradio --debug shows the reader's message)") from e
        raise CheckpointError(
            f"refusing to load {path}: its pickle asks for {detail}, which is not on the allow-list (it could run "
            "code); RADIO files hold only tensors, dtypes and argparse.Namespace. Load files only from sources you "
            "trust") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, IndexError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read {path} ({size:,} bytes): the file is truncated or corrupt; "
                              "delete it and fetch it again (openradio --debug shows the reader's message)") from e


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
        raise CheckpointError(f"{path} is not an official RADIO checkpoint: expected a dict with 'args' and "
                              f"'state_dict', found {keys}")
    for part in ("state_dict", "state_dict_ema"):
        for k, v in (chk.get(part) or {}).items():
            # integer buffers exist (a spectral norm's `_sn_version` counter); weights and biases,
            # and anything boolean or complex, must be floating point
            if not torch.is_tensor(v) or v.dtype == torch.bool or v.is_complex() or (
                    not v.is_floating_point() and k.rsplit(".", 1)[-1] in ("weight", "bias")):
                kind = str(v.dtype).replace("torch.", "") if torch.is_tensor(v) else type(v).__name__
                raise CheckpointError(f"{path}: {part}[{k!r}] is {kind}, but RADIO weights are floating point "
                                      "(float32, float16 or bfloat16): the file was written wrongly")
    return chk


def _unsafe_detail(msg: str) -> Optional[str]:
    """The object a refused pickle asked for (``posix.mkdir``), or None when the error is not
    about a refused object (a corrupt or foreign file)."""
    import re

    m = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"Unsupported global: ([\w.]+)", msg)
    if m:
        return m.group(1)
    for line in msg.splitlines():
        if "Unsupported global" in line:
            return line.split(":", 1)[-1].strip().rstrip(".")
    return None


def clean_key(k: str) -> str:
    for pre in ("module.", "_orig_mod."):
        while k.startswith(pre):
            k = k[len(pre):]
    return k


def select_state(chk: dict) -> tuple[dict[str, torch.Tensor], bool]:
    """EMA weights win whole when present (backbone, conditioner, heads, normalisers alike)."""
    if chk.get("state_dict_ema") is not None:
        return chk["state_dict_ema"], True
    return chk["state_dict"], False


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    backbone = {k[len("base_model."):]: v for k, v in state.items() if k.startswith("base_model.")}
    rest = {clean_key(k): v for k, v in state.items() if not k.startswith("base_model.")}
    return backbone, rest


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix.`` (exact component match: '_heads.1' never captures '_heads.10')."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


# -- spectral reparametrisation ----------------------------------------------------------------------
PARAM_SUFFIX = ".parametrizations.weight.original"


def _spectral_weight(W: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor,
                     eps: float, n_iter: int) -> torch.Tensor:
    """Effective weight W * s / sigma after the power-iteration step(s) the official loader runs
    (it materialises in training mode). Operation order matters for bit-exactness."""
    W, u, v, scale = W.float(), u.float(), v.float(), scale.float()
    for _ in range(n_iter):
        u = F.normalize(torch.mv(W, v), dim=0, eps=eps)
        v = F.normalize(torch.mv(W.t(), u), dim=0, eps=eps)
    sigma = torch.dot(u, torch.mv(W, v)) + eps
    s = F.softplus(scale) + 0.05
    return W * (s.float() / sigma.float())


def materialize_parametrizations(state: dict[str, torch.Tensor], *, eps: float, n_iter: int,
                                 allow_identity: bool, where: str) -> dict[str, torch.Tensor]:
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
            out[layer + ".weight"] = _spectral_weight(W, state[f"{base}._u"], state[f"{base}._v"],
                                                      state[f"{base}.scale"], eps, n_iter)
        elif allow_identity and not any(k.startswith(base + ".") for k in state):
            out[layer + ".weight"] = W  # DAMP: an identity parametrisation
        else:
            raise CheckpointError(
                f"{where}: layer {layer!r} is stored as a parametrised weight without the spectral "
                "'_sn_version' entries, so its effective weight cannot be computed")
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


def radio_config(args: Any, backbone_state: Optional[dict[str, torch.Tensor]] = None) -> RadioConfig:
    """The typed config an official ``args`` describes. For the DINOv2 students (whose official
    builder ignores ``model_kwargs``) the sizes come from ``backbone_state`` (openradio keys)."""
    return RadioConfig(
        backbone=_backbone_config(args, backbone_state), teachers=[dict(t) for t in (arg(args, "teachers") or [])],
        cls_token_per_teacher=bool(arg(args, "cls_token_per_teacher", True)),
        mlp_version=arg(args, "mlp_version") or "v2", spatial_mlp_version=arg(args, "spatial_mlp_version"),
        mlp_hidden_size=arg(args, "mlp_hidden_size", 1520),
        mlp_num_inner=arg(args, "mlp_num_inner", 1)).with_backbone_tokens()


def official_args(cfg: RadioConfig, **extra: Any) -> argparse.Namespace:
    """The official checkpoint ``args`` for a typed config (the inverse of :func:`radio_config`);
    ``extra`` adds recipe fields the official loader ignores (e.g. ``amp_dtype``)."""
    b = cfg.backbone
    fields = dict(teachers=[dict(t) for t in cfg.teachers], model_kwargs=dict(b.model_kwargs),
                  cpe_max_size=b.cpe_max_size, register_multiple=b.register_multiple, model_norm=b.model_norm,
                  cls_token_per_teacher=cfg.cls_token_per_teacher, mlp_version=cfg.mlp_version,
                  mlp_hidden_size=cfg.mlp_hidden_size, mlp_num_inner=cfg.mlp_num_inner, dtype=b.dtype,
                  drop=b.drop_rate or 0.0, drop_path=b.drop_path_rate, gp=b.global_pool)
    if b.in_chans != 3:
        fields["in_chans"] = b.in_chans
    if b.num_registers is not None:
        fields["cpe_num_registers"] = b.num_registers
    if cfg.spatial_mlp_version:
        fields["spatial_mlp_version"] = cfg.spatial_mlp_version
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
        arch=name, model_kwargs=kwargs, cpe_max_size=arg(args, "cpe_max_size"),
        register_multiple=arg(args, "register_multiple"), num_registers=arg(args, "cpe_num_registers"),
        model_norm=bool(arg(args, "model_norm", False)), in_chans=arg(args, "in_chans") or 3,
        drop_rate=arg(args, "drop"), drop_path_rate=arg(args, "drop_path"), global_pool=arg(args, "gp"),
        dtype=parse_dtype(arg(args, "dtype")))


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


# -- building the model ------------------------------------------------------------------------------
def _head_state(rest: dict, family: str, index: int, name: str) -> dict:
    state = prefixed(rest, f"{family}.{index}")
    state.update(prefixed(rest, f"{family}.{name}"))
    return state


def build_adaptor(cfg: RadioConfig, rest: dict, name: str, *, spectral_heads: bool,
                  mlp_version_known: bool = True) -> GenericAdaptor:
    """The adaptor ``name`` with its weights from an official state dict (sizes from the weights)."""
    tidx, tconf = cfg.find_teacher(name)
    summary_state = _head_state(rest, "_heads", tidx, name)
    feature_state = _head_state(rest, "_feature_projections", tidx, name)
    if not summary_state or not feature_state:
        raise CheckpointError(f"the checkpoint has no weights for the {name!r} adaptor "
                              f"(looked for _heads.{tidx}.*/_heads.{name}.* and _feature_projections.*)")
    if spectral_heads:
        summary_state = materialize_parametrizations(summary_state, eps=1e-6, n_iter=1, allow_identity=False,
                                                     where=f"{name} summary head")
        feature_state = materialize_parametrizations(feature_state, eps=1e-6, n_iter=1, allow_identity=False,
                                                     where=f"{name} feature head")
    upsample = int(tconf.get("fd_upsample_factor") or 1)
    if not mlp_version_known:  # old args without mlp_version: the weights tell
        cfg = replace(cfg, mlp_version=_infer_version(summary_state))
    s_version, f_version = head_versions(tconf, cfg.mlp_version, cfg.spatial_mlp_version)
    try:
        s_in, s_hidden, s_out, s_inner = mlp_dims_from_state(s_version, summary_state, 1)
        f_in, f_hidden, f_out, f_inner = mlp_dims_from_state(f_version, feature_state, upsample)
    except ValueError as e:
        raise CheckpointError(f"{name} adaptor: {e}") from None
    adaptor = make_adaptor(cfg, name, s_in, summary=(s_hidden, s_out, s_inner), features=(f_hidden, f_out, f_inner))
    _strict_load(adaptor.head_mlp, summary_state, f"{name} summary head")
    _strict_load(adaptor.feat_mlp, feature_state, f"{name} feature head")
    return adaptor


def _infer_version(state: dict) -> str:
    if "mlp.final.2.weight" in state:
        return "attn"
    return "v2" if "final.2.weight" in state else "v1"


def _strict_load(module: nn.Module, state: dict, where: str, assign: bool = False) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
        raise CheckpointError(f"{where} does not match the checkpoint: " + "; ".join(parts))
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)} in the checkpoint, "
                                  f"the model expects {tuple(own[k].shape)}")
    module.load_state_dict(state, strict=True, assign=assign)


def build_radio(args: Any, state: dict[str, torch.Tensor], *, adaptor_names: Optional[Sequence[str]] = None,
                vitdet_window_size: Optional[int] = None, is_ema: bool = False,
                patch_size: Optional[int] = None, max_resolution: Optional[int] = None,
                preferred_resolution=None, vitdet_num_windowed: Optional[int] = None,
                vitdet_num_global: Optional[int] = None, assign: bool = False) -> RADIOModel:
    """A RADIOModel (in eval mode) from ``args`` and an official-format state dict.

    ``assign=True`` builds the backbone on the meta device (no allocation, no initialisation)
    and adopts the state dict's tensors as its weights instead of copying them (converted only
    where the dtype differs): loading then peaks near the model's own size instead of twice or
    three times it (benchmarks/load_memory.py). The model then shares storage with ``state``:
    pass it only a state dict nobody else will modify (e.g. a freshly ``mmap``-loaded file)."""
    if isinstance(args, dict):
        args = argparse.Namespace(**args)
    dtype = parse_dtype(arg(args, "dtype"))
    backbone_state, rest = split_state(state)
    spectral = arg(args, "spectral_reparam", False) and not is_ema
    damp = arg(args, "damp") and not is_ema
    if spectral or damp or any(PARAM_SUFFIX in k for k in backbone_state):
        sr = arg(args, "spectral_reparam", False)
        eps, n_iter = (sr.get("eps", 1e-12), sr.get("n_power_iterations", 1)) if isinstance(sr, dict) else (1e-6, 1)
        backbone_state = materialize_parametrizations(backbone_state, eps=eps, n_iter=n_iter,
                                                      allow_identity=True, where="backbone")
    backbone_state = backbone_state_from_official(backbone_state, arg(args, "model"))
    rcfg = radio_config(args, backbone_state)
    for name in adaptor_names or []:  # fail on a bad name before building anything large
        rcfg.find_teacher(name)
    cfg = rcfg.backbone
    if assign:
        with torch.device("meta"):
            model = create_backbone(cfg)
        _strict_load(model, backbone_state, "backbone", assign=True)
        _check_materialized(model, cfg)
    else:
        model = create_backbone(cfg)
        _strict_load(model, backbone_state, "backbone")
    _check_prefix_layout(model, cfg)

    conditioner = InputConditioner()
    cond_state = prefixed(rest, "input_conditioner")
    if set(cond_state) != {"norm_mean", "norm_std"}:
        raise CheckpointError(f"input_conditioner.norm_mean/norm_std missing from the checkpoint "
                              f"(found {sorted(cond_state)})")
    conditioner.load_state_dict(cond_state, strict=True)
    model.to(dtype=dtype)
    conditioner.dtype = dtype

    adaptors = {}
    spectral_heads = bool(arg(args, "spectral_heads", False)) and not is_ema
    for name in adaptor_names or []:
        adaptors[name] = build_adaptor(rcfg, rest, name, spectral_heads=spectral_heads,
                                       mlp_version_known=bool(arg(args, "mlp_version")))
        if getattr(model, "summary_is_first_token", False):
            adaptors[name].head_idx = 0  # the DINOv2 student hands every head token 0

    feat_norm = inter_norm = None
    fn_state = prefixed(rest, "_feature_normalizer")
    if fn_state:
        feat_norm = FeatureNormalizer(fn_state["mean"].shape[0], dtype=dtype)
        _strict_load(feat_norm, fn_state, "feature normaliser")
    in_state = prefixed(rest, "_intermediate_feature_normalizer")
    if in_state:
        rot = in_state["rotation"]
        inter_norm = IntermediateFeatureNormalizer(in_state["alphas"].shape[0], in_state["means"].shape[-1],
                                                   rot_per_layer=rot.ndim == 3, dtype=dtype)
        _strict_load(inter_norm, in_state, "intermediate feature normaliser")

    radio = RADIOModel(model, conditioner, rcfg.summary_indices(), patch_size=patch_size,
                       max_resolution=max_resolution, window_size=None,
                       preferred_resolution=preferred_resolution, adaptors=adaptors,
                       feature_normalizer=feat_norm, inter_feature_normalizer=inter_norm,
                       vitdet_num_windowed=vitdet_num_windowed, vitdet_num_global=vitdet_num_global)
    radio.config = rcfg
    radio.args = args
    if vitdet_window_size is not None:
        radio.set_vitdet_window(vitdet_window_size)
    return radio.eval()


def _check_materialized(model: nn.Module, cfg: BackboneConfig) -> None:
    """Every tensor of a meta-built backbone must have come from the checkpoint (a buffer that
    is not saved, e.g. a computed table, would stay an empty meta tensor)."""
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{cfg.arch}: {left[:5]} are not in the checkpoint and cannot be built on the meta "
                              "device; load with build_radio(..., assign=False)")


def _check_prefix_layout(model: nn.Module, cfg: BackboneConfig) -> None:
    gen = model.patch_generator
    if getattr(model, "summary_is_first_token", False) and gen.num_skip != model.num_summary_tokens:
        warnings.warn(
            f"{cfg.arch}: the patch generator has {gen.num_skip} prefix tokens but the DINOv2 student "
            f"reads features from token {model.num_summary_tokens} (as the official code does): NLC features "
            "will include or lose prefix tokens and NCHW output will fail. The checkpoint's args "
            "(cls_token_per_teacher / cpe_num_registers) do not match the released layout.", stacklevel=3)


# -- writing -----------------------------------------------------------------------------------------
def official_state_dict(radio: RADIOModel, heads_by_name: bool = True) -> dict[str, torch.Tensor]:
    """The inverse mapping: RADIOModel -> official state dict keys."""
    out: dict[str, torch.Tensor] = {}
    cfg = getattr(radio, "config", None)
    args = getattr(radio, "args", None) or {}
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


def save_checkpoint(path: str | os.PathLike, args: argparse.Namespace, state_dict: dict[str, torch.Tensor],
                    *, state_dict_ema: Optional[dict] = None, epoch: int = 0, arch: Optional[str] = None) -> Path:
    """Write an official-format ``.pth.tar`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    chk = {"arch": arch or arg(args, "model"), "epoch": epoch, "state_dict": state_dict, "args": args}
    if state_dict_ema is not None:
        chk["state_dict_ema"] = state_dict_ema
    from openradio.atomicio import atomic_path
    with atomic_path(path, fsync=True) as tmp:
        torch.save(chk, tmp)
    return path
