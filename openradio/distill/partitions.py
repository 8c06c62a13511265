"""Stages and partitions: which rank trains what at which step, and how teachers' losses are scaled.

Every (rank, partition) pair is a slot; teacher t's loss in a slot is scaled by world_size / n_t
(n_t = slots that see t), so DDP's gradient average equals each teacher's mean over the slots
that see it, whatever the partition layout. Pure functions of the config and the world size: the
same answer on every rank.
"""

from __future__ import annotations

from typing import Union

from openradio.distill.config import PartitionConfig, TrainConfig

__all__ = ["stage_at", "partition_teachers", "ranks_of", "rank_partitions", "loss_scales", "teacher_resolution"]


def stage_at(cfg: TrainConfig, step: int) -> int:
    """Index of the stage that global ``step`` (0-based) belongs to (the last one past the end)."""
    acc = 0
    for i, st in enumerate(cfg.stages):
        acc += st.steps
        if step < acc:
            return i
    return len(cfg.stages) - 1


def partition_teachers(cfg: TrainConfig, part: PartitionConfig) -> list[str]:
    return list(part.teachers) if part.teachers is not None else [t.name for t in cfg.teachers]


def ranks_of(part: PartitionConfig, world_size: int) -> list[int]:
    ranks = list(range(world_size)) if part.ranks is None else [int(r) for r in part.ranks]
    bad = [r for r in ranks if not 0 <= r < world_size]
    if bad:
        raise ValueError(
            f"partition {part.name!r} names ranks {bad} but the world size is {world_size}; "
            f"set stages.N.partitions.M.ranks for this world size (or null for every rank)"
        )
    return ranks


def rank_partitions(cfg: TrainConfig, stage: int, rank: int, world_size: int) -> list[PartitionConfig]:
    return [p for p in cfg.stages[stage].partitions if rank in ranks_of(p, world_size)]


def loss_scales(cfg: TrainConfig, stage: int, world_size: int) -> dict[str, float]:
    """world_size / (number of (rank, partition) slots that see teacher t), per teacher."""
    slots = {t.name: 0 for t in cfg.teachers}
    for p in cfg.stages[stage].partitions:
        for t in partition_teachers(cfg, p):
            slots[t] += len(ranks_of(p, world_size))
    return {t: world_size / n for t, n in slots.items() if n}


def teacher_resolution(
    cfg: TrainConfig,
    part: PartitionConfig,
    name: str,
    teacher_input_size: int,
    teacher_patch: int,
    student_patch: int,
    student_resolution: Union[int, None] = None,
) -> int:
    """The side at which teacher ``name`` runs in partition ``part``.

    Mosaic teachers run at their native input (the canvas); otherwise the partition's
    ``teacher_resolution`` (or the teacher's ``resolution_mode``): 'native', 'match' (the teacher's
    token grid lines up with the student's at ``student_resolution``, default the partition's), or
    a side in pixels that is a multiple of the teacher's patch.
    """
    if name in part.mosaic:
        return teacher_input_size
    mode = part.teacher_resolution.get(name, cfg.teacher(name).resolution_mode)
    if mode == "native":
        return teacher_input_size
    if mode == "match":
        res = part.resolution if student_resolution is None else student_resolution
        return res * teacher_patch // student_patch
    if isinstance(mode, int) and mode > 0 and mode % teacher_patch == 0:
        return mode
    raise ValueError(
        f"teacher {name!r} in partition {part.name!r}: resolution must be 'native', 'match' or "
        f"a multiple of the teacher's patch size {teacher_patch}, got {mode!r}"
    )
