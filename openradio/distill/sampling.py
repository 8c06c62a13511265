"""Seeds and seeded transforms shared by the folder/list datasets (``data.py``) and the tar shards
(``shards.py``): every sample's randomness is a function of (seed, epoch, index), so a resumed or
re-sharded run draws the same crops."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["sample_seed", "apply_transform"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # A well-mixed 64-bit hash step: nearby inputs (index 7 vs 8) give unrelated outputs.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. ``sample_seed(seed, epoch, index)``.

    Hashing (rather than ``seed + epoch``) keeps streams apart: ``(seed=1, epoch=0)`` and
    ``(seed=0, epoch=1)`` get unrelated seeds.
    """
    h = 0x6A09E667F3BCC908
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


def apply_transform(transform: Optional[Callable], img: Tensor, seed: int) -> Tensor:
    """Run ``transform(img)`` with randomness fixed by ``seed``.

    Transforms that declare ``accepts_generator`` get their own ``torch.Generator``; any other
    callable (e.g. a ``torchvision.transforms.v2.Compose``) runs under a forked global torch RNG
    seeded with ``seed``, which leaves the caller's RNG untouched.
    """
    if transform is None:
        return img
    if getattr(transform, "accepts_generator", False):
        return transform(img, generator=torch.Generator().manual_seed(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(img)
