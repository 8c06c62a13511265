"""Fresh (randomly initialised) RADIO students: what training starts from."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from openradio.model.adaptors import GenericAdaptor, create_mlp, head_versions
from openradio.model.backbone import arg, create_backbone, parse_dtype
from openradio.model.conditioner import InputConditioner
from openradio.model.radio import RADIOModel


def create_radio(args: Any, head_dims: Mapping[str, tuple[Optional[int], int]], *,
                 adaptor_names: Optional[list[str]] = None) -> RADIOModel:
    """A RADIOModel built from ``args`` (official layout, see ``backbone.make_args``) with new
    weights and one adaptor per teacher name.

    ``head_dims[name] = (summary_dim, feature_dim)``: output widths of that teacher's summary and
    feature heads (summary_dim None -> same as feature_dim; such a head is kept so the official
    layout stays complete, and its loss weight is what turns it off).
    """
    from openradio.checkpoint import backbone_config, summary_indices

    dtype = parse_dtype(arg(args, "dtype"))
    model = create_backbone(backbone_config(args), init_weights=True)
    cond = InputConditioner(dtype=dtype)
    hidden = arg(args, "mlp_hidden_size", 1520)
    n_inner = arg(args, "mlp_num_inner", 1)
    version = arg(args, "mlp_version", "v2")
    adaptors = {}
    teachers = arg(args, "teachers") or []
    first = {}
    for i, t in enumerate(teachers):
        first.setdefault(t["name"], (i, t))
    for name in adaptor_names or list(first):
        if name not in first:
            raise ValueError(f"no teacher named {name!r} in args.teachers ({list(first)})")
        if name not in head_dims:
            raise ValueError(f"head_dims has no entry for teacher {name!r}")
        tidx, t = first[name]
        s_dim, f_dim = head_dims[name]
        s_dim = s_dim or f_dim
        u = int(t.get("fd_upsample_factor") or 1)
        s_version, f_version = head_versions(t, version, arg(args, "spatial_mlp_version"))
        head = create_mlp(s_version, model.embed_dim, hidden, s_dim, n_inner)
        feat = create_mlp(f_version, model.embed_dim, hidden, f_dim, n_inner, upsample_factor=u)
        head_idx = t.get("token_slot", tidx) if arg(args, "cls_token_per_teacher", True) else 0
        adaptors[name] = GenericAdaptor(name, head, feat, head_idx=head_idx, upsample_factor=u, teacher_conf=t)
    model.to(dtype=dtype)
    radio = RADIOModel(model, cond, summary_indices(args), adaptors=adaptors)
    radio.args = args
    return radio
