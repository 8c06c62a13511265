"""PHI-S feature normalisers as stored in checkpoints (inference side).

A normaliser is a (mean, tx) pair applied as ``(x - mean) @ tx.T``; PHI-S makes every output
channel unit-variance with one isotropic scale (see distill/phi_s.py for the estimator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def run_kernel(x: torch.Tensor, mean: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    if x.ndim <= 3:
        return (x - mean) @ tx.T
    # NCHW: the same map as a 1x1 convolution over channels
    x = x - mean.reshape(1, -1, 1, 1)
    return F.conv2d(x, tx[:, :, None, None])


class FeatureNormalizer(nn.Module):
    def __init__(self, embed_dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("mean", torch.zeros(embed_dim, dtype=dtype))
        self.register_buffer("tx", torch.eye(embed_dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_kernel(x, self.mean, self.tx)


class IntermediateFeatureNormalizer(nn.Module):
    """Per-layer (mean, rotation, alpha): layer i's tokens become alpha_i * R (x - mean_i)."""

    def __init__(
        self, num_layers: int, embed_dim: int, rot_per_layer: bool = False, dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        self.register_buffer("alphas", torch.ones(num_layers, dtype=dtype))
        rot = torch.eye(embed_dim, dtype=dtype)
        if rot_per_layer:
            rot = rot.unsqueeze(0).repeat(num_layers, 1, 1)
        self.register_buffer("rotation", rot)
        self.register_buffer("means", torch.zeros(num_layers, embed_dim, dtype=dtype))

    def forward(self, x: torch.Tensor, index: int, rot_index: int | None = None, skip: int | None = None):
        if rot_index is None:
            rot_index = index
        rotation = self.rotation[rot_index] if self.rotation.ndim == 3 else self.rotation
        if skip:
            prefix, body = x[:, :skip], x[:, skip:]
        else:
            prefix, body = None, x
        y = run_kernel(body, self.means[index], rotation)
        alpha = self.alphas[index]
        if prefix is not None:
            # prefix tokens pass through unchanged and are not scaled
            ones = torch.ones(skip, dtype=alpha.dtype, device=alpha.device)
            alpha = torch.cat([ones, alpha.expand(body.shape[1])]).reshape(1, -1, 1)
            y = torch.cat([prefix, y], dim=1)
        elif y.ndim == 4:
            alpha = alpha.reshape(1, 1, 1, 1)
        else:
            alpha = alpha.reshape(1, 1, 1)
        return y, alpha


class NullIntermediateFeatureNormalizer(nn.Module):
    """Identity with alpha = 1 (a 0-d tensor in the activation dtype, so sums keep that dtype)."""

    def forward(self, x: torch.Tensor, index: int, rot_index: int | None = None, skip: int | None = None):
        return x, torch.ones((), dtype=x.dtype, device=x.device)
