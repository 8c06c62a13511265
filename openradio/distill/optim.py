"""AdamW with decoupled weight decay on matrices only, and linear warmup + cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from openradio.distill.config import OptimConfig

__all__ = ["build_optimizer", "lr_factor", "build_scheduler"]


def build_optimizer(model: nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; norms, biases, the position grid and the prefix tokens are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "pos_embed" in name or "cls_token" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr,
        betas=tuple(o.betas),
        eps=o.eps,
    )


def lr_factor(step: int, o: OptimConfig, total_steps: int) -> float:
    """Multiplier of ``o.lr`` at ``step``: linear warmup, then cosine down to ``o.min_lr``."""
    total = max(total_steps, 1)
    if step < o.warmup_steps:
        return (step + 1) / max(o.warmup_steps, 1)
    t = min((step - o.warmup_steps) / max(total - o.warmup_steps, 1), 1.0)
    floor = o.min_lr / o.lr if o.lr else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, o, total_steps))
