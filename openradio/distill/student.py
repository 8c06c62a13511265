"""The student: its arguments from the training config and the teachers, and its construction.

The one place the trainer and export create a student, so that the construction (today
``openradio.model.factory.create_radio`` on a ``backbone.make_args`` namespace in the official
checkpoint layout) can be swapped for a typed model config here without touching the trainer.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping, Optional

from openradio.distill.config import TrainConfig
from openradio.model.radio import RADIOModel

__all__ = ["student_args", "build_student", "args_to_state", "args_from_state"]


def student_args(cfg: TrainConfig, teachers: Mapping[str, Any]) -> argparse.Namespace:
    """The student's ``args`` (official layout) for ``cfg``; ``teachers`` give input sizes and widths."""
    from openradio.model.backbone import make_args
    s = cfg.student
    entries = []
    for t in cfg.teachers:
        teacher = teachers[t.name]
        d = {"name": t.name, "type": t.type or t.name, "model": t.model, "pretrained": t.pretrained,
             "input_size": teacher.input_size,
             "use_summary": bool(t.summary_weight) and teacher.summary_dim is not None}
        if t.fd_upsample_factor > 1:
            d["fd_upsample_factor"] = t.fd_upsample_factor
        entries.append(d)
    return make_args(s.model, teachers=entries, model_kwargs=dict(s.model_kwargs), cpe_max_size=s.cpe_max_size,
                     register_multiple=s.register_multiple, mlp_version=s.mlp_version,
                     mlp_hidden_size=s.mlp_hidden_size, mlp_num_inner=s.mlp_num_inner,
                     drop_path=s.drop_path or None, feature_normalization="PHI_S" if cfg.phi_s.enabled else None,
                     amp_dtype="bfloat16" if cfg.amp else None)


def build_student(args: Any, head_dims: Mapping[str, tuple[Optional[int], int]]) -> RADIOModel:
    """A fresh student (new weights, drawn from the global RNG) from its ``args`` and head widths
    ``{teacher: (summary_dim, feature_dim)}``."""
    from openradio.model.factory import create_radio
    return create_radio(args, {k: (v[0], v[1]) for k, v in head_dims.items()})


def args_to_state(args: argparse.Namespace) -> dict:
    """The student's ``args`` as plain data a ``weights_only`` checkpoint can hold."""
    return dict(vars(args))


def args_from_state(state: Mapping) -> argparse.Namespace:
    """Back to the official checkpoint's ``argparse.Namespace`` (conversion at the edge)."""
    return argparse.Namespace(**dict(state))
