"""Input normalisation: (x - mean) / std in float32, cast to the backbone dtype."""

from __future__ import annotations

import torch
from torch import nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class InputConditioner(nn.Module):
    def __init__(self, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, dtype: torch.dtype | None = None):
        super().__init__()
        self.register_buffer("norm_mean", torch.tensor(mean, dtype=torch.float32).reshape(3, 1, 1))
        self.register_buffer("norm_std", torch.tensor(std, dtype=torch.float32).reshape(3, 1, 1))
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x - self.norm_mean) / self.norm_std
        if self.dtype is not None:
            y = y.to(self.dtype)
        return y
