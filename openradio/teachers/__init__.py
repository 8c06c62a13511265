"""Frozen teachers for distillation: one protocol, built from configuration.

teacher = build_teacher({"name": "clip", "type": "open_clip", "model": "ViT-H-14-378-quickgelu",
                         "pretrained": "dfn5b", "input_size": 378})
out = teacher(images_0_1, resolution=378)   # TeacherOutput(summary (B, 1024), features (B, 1280, 27, 27))
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from openradio.teachers.base import Teacher, TeacherOutput, load_state_dict_file
from openradio.teachers.equivariant import TranslationEquivariantTeacher
from openradio.teachers.open_clip_teacher import OpenCLIPTeacher
from openradio.teachers.timm_teachers import DINOV2_HUB_TO_TIMM, DINOv2Teacher, SAMTeacher

__all__ = [
    "Teacher",
    "TeacherOutput",
    "OpenCLIPTeacher",
    "DINOv2Teacher",
    "SAMTeacher",
    "TranslationEquivariantTeacher",
    "TEACHER_TYPES",
    "build_teacher",
    "load_state_dict_file",
    "DINOV2_HUB_TO_TIMM",
]

TEACHER_TYPES: dict[str, type[Teacher]] = {
    "open_clip": OpenCLIPTeacher,
    "clip": OpenCLIPTeacher,
    "siglip": OpenCLIPTeacher,
    "dino_v2": DINOv2Teacher,
    "dinov2": DINOv2Teacher,
    "sam": SAMTeacher,
    "equivariant": TranslationEquivariantTeacher,
}


def build_teacher(cfg: Mapping[str, Any]) -> Teacher:
    """Build a frozen teacher from a config mapping.

    Keys: ``name`` (required), ``type`` (``'open_clip'`` | ``'dino_v2'`` | ``'sam'`` |
    ``'equivariant'``; defaults to ``name`` when that is a known type), ``model``, ``pretrained``
    (tag or bool), ``input_size``, ``weights`` (local file), ``tiny`` (bool), ``overrides`` /
    ``arch_overrides`` (architecture kwargs), plus type-specific keys (``pad_to_input`` for SAM,
    ``mean``/``std``, ``cache_dir`` for open_clip, ...).  Unknown keys are an error.
    """
    cfg = dict(cfg)
    if "name" not in cfg:
        raise ValueError(f"Teacher config needs a 'name'; got keys {sorted(cfg)}.")
    kind = cfg.pop("type", None) or cfg["name"]
    if kind not in TEACHER_TYPES:
        raise ValueError(
            f"Unknown teacher type {kind!r} for teacher {cfg['name']!r}; known types: {sorted(TEACHER_TYPES)}."
        )
    cls = TEACHER_TYPES[kind]
    if "overrides" in cfg:
        if "arch_overrides" in cfg:
            raise ValueError("Give either 'overrides' or 'arch_overrides' in a teacher config, not both.")
        cfg["arch_overrides"] = cfg.pop("overrides")
    for key in ("mean", "std"):
        if cfg.get(key) is not None:
            cfg[key] = tuple(cfg[key])
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = set(cfg) - accepted
    if unknown:
        raise ValueError(
            f"Teacher {cfg['name']!r} (type {kind!r}, {cls.__name__}) does not take {sorted(unknown)}; "
            f"accepted keys: {sorted(accepted | {'type', 'overrides'})}."
        )
    return cls(**cfg)
