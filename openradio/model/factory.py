"""Fresh (randomly initialised) RADIO students: what training starts from."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from openradio.model.adaptors import make_adaptor
from openradio.model.backbone import create_backbone
from openradio.model.conditioner import InputConditioner
from openradio.model.config import RadioConfig
from openradio.model.radio import RADIOModel


def create_radio(
    cfg: RadioConfig,
    head_dims: Mapping[str, tuple[Optional[int], int]],
    *,
    adaptor_names: Optional[list[str]] = None,
    args: Any = None,
) -> RADIOModel:
    """A RADIOModel built from a typed config with new weights and one adaptor per teacher name.

    ``head_dims[name] = (summary_dim, feature_dim)``: output widths of that teacher's summary and
    feature heads (summary_dim None -> same as feature_dim; such a head is kept so the official
    layout stays complete, and its loss weight is what turns it off). The official checkpoint
    ``args`` for the result are :func:`openradio.formats.official.official_args` of ``cfg``
    (``args``: those to keep on the model, when the caller has them).
    """
    cfg.with_backbone_tokens()
    model = create_backbone(cfg.backbone, init_weights=True)
    adaptors = {}
    for name in adaptor_names or cfg.unique_names():
        cfg.find_teacher(name)
        if name not in head_dims:
            raise ValueError(f"head_dims has no entry for teacher {name!r}")
        s_dim, f_dim = head_dims[name]
        dims = (cfg.mlp_hidden_size, cfg.mlp_num_inner)
        adaptors[name] = make_adaptor(
            cfg, name, model.embed_dim, summary=(dims[0], s_dim or f_dim, dims[1]), features=(dims[0], f_dim, dims[1])
        )
    model.to(dtype=cfg.dtype)
    return RADIOModel(
        model, InputConditioner(dtype=cfg.dtype), cfg.summary_indices(), adaptors=adaptors, config=cfg, args=args
    )
