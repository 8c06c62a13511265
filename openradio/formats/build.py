"""One builder: a :class:`~openradio.model.config.RadioConfig` and a state dict -> RADIOModel.

Every route that loads weights ends here: a released name or a local ``.pth.tar``
(:mod:`openradio.formats.resolve`), a Hugging Face folder (:mod:`openradio.formats.hf`), a
transformers-native folder (:mod:`openradio.formats.native`) and a trainer export (an official
``.pth.tar``). The formats convert their own key names at their edge; the state dict this module
reads is in :class:`~openradio.model.radio.RADIOModel`'s own layout (``model.*`` backbone keys
in openradio's names, ``input_conditioner.*``, ``adaptors.{name}.head_mlp|feat_mlp.*``,
``feature_normalizer.*``, ``inter_feature_normalizer.*``): see
:func:`openradio.formats.official.from_official`.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from openradio.formats.official import from_official, prefixed
from openradio.formats.safeload import CheckpointError
from openradio.model.adaptors import GenericAdaptor, head_versions, make_adaptor, mlp_dims_from_state
from openradio.model.backbone import create_backbone
from openradio.model.conditioner import InputConditioner
from openradio.model.config import BackboneConfig, RadioConfig
from openradio.model.normalizers import FeatureNormalizer, IntermediateFeatureNormalizer
from openradio.model.radio import RADIOModel, Resolution

__all__ = ["build_model", "build_radio", "build_adaptor", "strict_load", "finish_loaded"]


def strict_load(module: nn.Module, state: dict, where: str, assign: bool = False) -> None:
    """``module.load_state_dict(state, strict=True)`` with a one-line :class:`CheckpointError`
    naming the missing and unexpected keys and the first shape that differs."""
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
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(v.shape)} in the checkpoint, the model expects {tuple(own[k].shape)}"
            )
    module.load_state_dict(state, strict=True, assign=assign)


def build_adaptor(cfg: RadioConfig, state: Mapping[str, torch.Tensor], name: str) -> GenericAdaptor:
    """The adaptor ``name`` with its weights from ``state`` (``adaptors.{name}.*``; sizes from the weights)."""
    _, tconf = cfg.find_teacher(name)
    summary_state = prefixed(state, f"adaptors.{name}.head_mlp")
    feature_state = prefixed(state, f"adaptors.{name}.feat_mlp")
    if not summary_state or not feature_state:
        raise CheckpointError(
            f"the checkpoint has no weights for the {name!r} adaptor "
            f"(looked for _heads.*/_feature_projections.* under its index and its name)"
        )
    upsample = int(tconf.get("fd_upsample_factor") or 1)
    s_version, f_version = head_versions(tconf, cfg.mlp_version, cfg.spatial_mlp_version)
    try:
        s_in, s_hidden, s_out, s_inner = mlp_dims_from_state(s_version, summary_state, 1)
        f_in, f_hidden, f_out, f_inner = mlp_dims_from_state(f_version, feature_state, upsample)
    except ValueError as e:
        raise CheckpointError(f"{name} adaptor: {e}") from None
    adaptor = make_adaptor(cfg, name, s_in, summary=(s_hidden, s_out, s_inner), features=(f_hidden, f_out, f_inner))
    strict_load(adaptor.head_mlp, summary_state, f"{name} summary head")
    strict_load(adaptor.feat_mlp, feature_state, f"{name} feature head")
    return adaptor


def build_model(
    cfg: RadioConfig,
    state: Mapping[str, torch.Tensor],
    *,
    adaptor_names: Optional[Sequence[str]] = None,
    args: Any = None,
    version: Optional[str] = None,
    vitdet_window_size: Optional[int] = None,
    patch_size: Optional[int] = None,
    max_resolution: Optional[int] = None,
    preferred_resolution=None,
    vitdet_num_windowed: Optional[int] = None,
    vitdet_num_global: Optional[int] = None,
    assign: bool = False,
) -> RADIOModel:
    """A RADIOModel (in eval mode) from a typed config and a state dict in RADIOModel's layout.

    ``assign=True`` builds the backbone on the meta device (no allocation, no initialisation)
    and adopts the state dict's tensors as its weights instead of copying them (converted only
    where the dtype differs): loading then peaks near the model's own size instead of twice or
    three times it (benchmarks/load_memory.py). The model then shares storage with ``state``:
    pass it only a state dict nobody else will modify (e.g. a freshly ``mmap``-loaded file).
    ``args`` (the official namespace, kept for writing the model back) and ``version`` travel
    with the model."""
    for name in adaptor_names or []:  # fail on a bad name before building anything large
        cfg.find_teacher(name)
    dtype = cfg.dtype
    backbone_cfg = cfg.backbone
    backbone_state = prefixed(state, "model")
    if assign:
        with torch.device("meta"):
            backbone = create_backbone(backbone_cfg)
        strict_load(backbone, backbone_state, "backbone", assign=True)
        _check_materialized(backbone, backbone_cfg)
    else:
        backbone = create_backbone(backbone_cfg)
        strict_load(backbone, backbone_state, "backbone")
    _check_prefix_layout(backbone, backbone_cfg)

    conditioner = InputConditioner()
    cond_state = prefixed(state, "input_conditioner")
    if set(cond_state) != {"norm_mean", "norm_std"}:
        raise CheckpointError(
            f"input_conditioner.norm_mean/norm_std missing from the checkpoint (found {sorted(cond_state)})"
        )
    conditioner.load_state_dict(cond_state, strict=True)
    backbone.to(dtype=dtype)
    conditioner.dtype = dtype

    adaptors = {}
    for name in adaptor_names or []:
        adaptors[name] = build_adaptor(cfg, state, name)
        if getattr(backbone, "summary_is_first_token", False):
            adaptors[name].head_idx = 0  # the DINOv2 student hands every head token 0

    feat_norm = inter_norm = None
    fn_state = prefixed(state, "feature_normalizer")
    if fn_state:
        feat_norm = FeatureNormalizer(fn_state["mean"].shape[0], dtype=dtype)
        strict_load(feat_norm, fn_state, "feature normaliser")
    in_state = prefixed(state, "inter_feature_normalizer")
    if in_state:
        rot = in_state["rotation"]
        inter_norm = IntermediateFeatureNormalizer(
            in_state["alphas"].shape[0], in_state["means"].shape[-1], rot_per_layer=rot.ndim == 3, dtype=dtype
        )
        strict_load(inter_norm, in_state, "intermediate feature normaliser")

    radio = RADIOModel(
        backbone,
        conditioner,
        cfg.summary_indices(),
        patch_size=patch_size,
        max_resolution=max_resolution,
        window_size=None,
        preferred_resolution=preferred_resolution,
        adaptors=adaptors,
        feature_normalizer=feat_norm,
        inter_feature_normalizer=inter_norm,
        vitdet_num_windowed=vitdet_num_windowed,
        vitdet_num_global=vitdet_num_global,
        config=cfg,
        args=args,
        version=version,
    )
    if vitdet_window_size is not None:
        radio.set_vitdet_window(vitdet_window_size)
    return radio.eval()


def build_radio(
    args: Any,
    state: Mapping[str, torch.Tensor],
    *,
    adaptor_names: Optional[Sequence[str]] = None,
    is_ema: bool = False,
    **kwargs: Any,
) -> RADIOModel:
    """A RADIOModel (in eval mode) from official ``args`` and an official-format state dict:
    :func:`~openradio.formats.official.from_official` at the edge, then :func:`build_model`
    (``kwargs`` as there)."""
    cfg, own, args = from_official(args, state, adaptor_names=adaptor_names, is_ema=is_ema)
    return build_model(cfg, own, adaptor_names=adaptor_names, args=args, **kwargs)


def finish_loaded(
    model: RADIOModel,
    *,
    summary_idxs: Optional[torch.Tensor] = None,
    adaptor_configs: Optional[Mapping[str, Mapping]] = None,
) -> RADIOModel:
    """What a folder records beside its weights, applied to a freshly built model (the Hugging
    Face and transformers-native routes alike): its own summary-token selection (no
    de-duplication by name) and each adaptor's ``head_idx``."""
    if summary_idxs is not None:
        model.summary_idxs = summary_idxs.to(torch.int64)
    for name, conf in (adaptor_configs or {}).items():
        if name in model.adaptors and "head_idx" in conf:
            model.adaptors[name].head_idx = int(conf["head_idx"])
    return model


def preferred(value: Optional[Sequence[int]]) -> Optional[Resolution]:
    """A stored ``[height, width]`` (or nothing) as a :class:`Resolution`."""
    return Resolution(*value) if value else None


def _check_materialized(model: nn.Module, cfg: BackboneConfig) -> None:
    """Every tensor of a meta-built backbone must have come from the checkpoint (a buffer that
    is not saved, e.g. a computed table, would stay an empty meta tensor)."""
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(
            f"{cfg.arch}: {left[:5]} are not in the checkpoint and cannot be built on the meta "
            "device; load with build_radio(..., assign=False)"
        )


def _check_prefix_layout(model: nn.Module, cfg: BackboneConfig) -> None:
    gen = model.patch_generator
    if getattr(model, "summary_is_first_token", False) and gen.num_prefix_tokens != model.num_prefix_tokens:
        warnings.warn(
            f"{cfg.arch}: the patch generator has {gen.num_prefix_tokens} prefix tokens but the DINOv2 student "
            f"reads features from token {model.num_prefix_tokens} (as the official code does): NLC features "
            "will include or lose prefix tokens and NCHW output will fail. The checkpoint's args "
            "(cls_token_per_teacher / cpe_num_registers) do not match the released layout.",
            stacklevel=4,
        )
