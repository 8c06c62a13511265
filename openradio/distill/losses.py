"""Distillation losses: summary cosine distance, feature MSE (or AM-RADIO's hybrid), grid matching.

Conventions: summaries are (B, D); spatial features are NCHW (the trainer reshapes the student
head's NLC output to NCHW before calling these).  Feature targets are expected to be already
PHI-S-normalised (``PhiSNormalizer.normalize``); these functions do not normalise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "summary_cosine_loss",
    "feature_mse_loss",
    "hybrid_feature_loss",
    "feature_loss",
    "match_grids",
    "TeacherLossWeights",
    "distill_loss",
]

FeatureLossKind = Literal["mse", "hybrid"]


def summary_cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over the batch of ``1 - cos(student, teacher)`` along the last dimension."""
    _check_same_shape(student, teacher, "summary")
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def feature_mse_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error over every element."""
    _check_same_shape(student, teacher, "features")
    return F.mse_loss(student.float(), teacher.float())


def hybrid_feature_loss(
    student: Tensor,
    teacher: Tensor,
    cos_weight: float = 0.9,
    smooth_l1_weight: float = 0.1,
    beta: float = 1.0,
    channel_dim: int = 1,
) -> Tensor:
    """AM-RADIO's feature loss: ``cos_weight * (1 - cos) + smooth_l1_weight * SmoothL1``.

    The cosine is taken over the channel dimension per spatial location and averaged; SmoothL1 is
    the element-wise mean.
    """
    _check_same_shape(student, teacher, "features")
    s, t = student.float(), teacher.float()
    cos = F.cosine_similarity(s, t, dim=channel_dim)
    return cos_weight * (1.0 - cos).mean() + smooth_l1_weight * F.smooth_l1_loss(s, t, beta=beta)


def feature_loss(student: Tensor, teacher: Tensor, kind: FeatureLossKind = "mse") -> Tensor:
    """Dispatch on ``kind``: ``'mse'`` (the v2.5 default with PHI-S targets) or ``'hybrid'``."""
    if kind == "mse":
        return feature_mse_loss(student, teacher)
    if kind == "hybrid":
        return hybrid_feature_loss(student, teacher)
    raise ValueError(f"Unknown feature loss {kind!r}; use 'mse' or 'hybrid'.")


def match_grids(
    student: Tensor, teacher: Tensor, mode: str = "bilinear", antialias: bool = True
) -> tuple[Tensor, Tensor]:
    """Bring two NCHW maps to the same grid by resampling the larger one down to the smaller.

    Applied after the student's head, so the head itself always sees the student's own grid.
    Each axis goes to the smaller of the two sizes (a map can be taller but narrower); a map that
    already has the target size is returned untouched.  Antialiasing avoids aliasing when shrinking.
    """
    if student.ndim != 4 or teacher.ndim != 4:
        raise ValueError(
            f"match_grids expects NCHW tensors, got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}."
        )
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"Batch/channel mismatch: student {tuple(student.shape[:2])} vs teacher {tuple(teacher.shape[:2])}; "
            "the student's head must output the teacher's channel count."
        )
    target = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))

    def _resize(x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) == target:
            return x
        aa = antialias and mode in ("bilinear", "bicubic")
        return F.interpolate(
            x, size=target, mode=mode, align_corners=False if mode != "nearest" else None, antialias=aa
        )

    return _resize(student), _resize(teacher)


@dataclass(frozen=True)
class TeacherLossWeights:
    """Per-teacher loss weights (SAM has no summary, so its summary weight is 0)."""

    summary: float = 1.0
    features: float = 1.0


def distill_loss(
    student: Mapping[str, tuple[Tensor | None, Tensor]],
    teachers: Mapping[str, tuple[Tensor | None, Tensor]],
    weights: Mapping[str, TeacherLossWeights | tuple[float, float]] | None = None,
    feature_loss_kind: FeatureLossKind = "mse",
    resample_mode: str = "bilinear",
) -> dict[str, Tensor]:
    """Combine the per-teacher losses.

    ``student[name]`` is the student's head output ``(summary, features_NCHW)`` for teacher ``name``
    and ``teachers[name]`` the teacher's ``(summary, features_NCHW)`` (features already normalised);
    both accept ``RadioOutput`` / ``TeacherOutput`` tuples.  Grids are matched with ``match_grids``.
    A summary term is skipped when the teacher has no summary or its weight is 0.

    Returns ``{'<name>/summary': ..., '<name>/features': ..., 'total': ...}`` with unweighted
    per-teacher losses and the weighted ``total``.
    """
    if set(student) != set(teachers):
        raise ValueError(
            f"Student heads {sorted(student)} and teacher outputs {sorted(teachers)} must name the same teachers."
        )
    weights = dict(weights or {})
    unknown = set(weights) - set(teachers)
    if unknown:
        raise ValueError(f"Loss weights given for unknown teachers {sorted(unknown)}; teachers are {sorted(teachers)}.")
    out: dict[str, Tensor] = {}
    total: Tensor | None = None
    for name in teachers:
        w = weights.get(name, TeacherLossWeights())
        if not isinstance(w, TeacherLossWeights):
            w = TeacherLossWeights(*w)
        s_sum, s_feat = student[name]
        t_sum, t_feat = teachers[name]
        terms: list[Tensor] = []
        if t_sum is not None and w.summary != 0:
            if s_sum is None:
                raise ValueError(f"Teacher {name!r} has a summary target but the student gave no summary.")
            loss = summary_cosine_loss(s_sum, t_sum)
            out[f"{name}/summary"] = loss
            terms.append(w.summary * loss)
        if w.features != 0:
            s_feat, t_feat = match_grids(s_feat, t_feat, mode=resample_mode)
            loss = feature_loss(s_feat, t_feat, feature_loss_kind)
            out[f"{name}/features"] = loss
            terms.append(w.features * loss)
        for t in terms:
            total = t if total is None else total + t
    if total is None:
        raise ValueError("Every loss weight is zero: nothing to train.")
    out["total"] = total
    return out


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"Student and teacher {what} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}. "
            "Check the head's output size (and match_grids for spatial features)."
        )
