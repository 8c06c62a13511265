"""The recipe's teachers, built once: what the trainer and the teacher-feature cache both run."""

from __future__ import annotations

import torch

from openradio.distill.config import TrainConfig
from openradio.teachers import build_teacher

__all__ = ["build_teachers"]


def build_teachers(cfg: TrainConfig, device: torch.device) -> dict:
    """The recipe's teachers, ``{name: teacher}`` on ``device``. Randomly initialised teachers
    (tests, demo) draw their weights from ``cfg.seed`` whatever the caller's RNG, so they are the
    same on every rank, in every restart and in ``openradio data cache-teachers``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return {t.name: build_teacher(t.build_kwargs()).to(device) for t in cfg.teachers}
