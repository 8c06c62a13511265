"""PHI-S: PCA-Hadamard isotropic standardisation of teacher features (arXiv 2410.01680).

For features x in R^C with mean mu and covariance Sigma = U diag(lambda) U^T:

    forward   y = alpha * H U^T (x - mu)           alpha = mean(lambda)^(-1/2)
    inverse   x = (1 / alpha) * U H^T y + mu

H is a normalised Hadamard matrix (entries +-1/sqrt(C)), so channel i of y has variance
alpha^2 * sum_k H_ik^2 lambda_k = alpha^2 * mean(lambda) = 1 for every i: one scale per teacher
balances the teachers' losses without blowing up dead directions the way full whitening does.

In code the transform is stored as ``(mean, tx)`` with ``y = (x - mean) @ tx.T`` (the official
``FeatureNormalizer`` convention), and ``inv_tx`` with ``x = y @ inv_tx.T + mean``.
"""

from __future__ import annotations

import warnings
from typing import Literal, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from openradio.distill.hadamard import get_hadamard_matrix

__all__ = [
    "phi_s_matrix",
    "align_eigenbasis",
    "phi_s_inverse",
    "apply_transform",
    "PhiSEstimator",
    "PhiSNormalizer",
    "fold_inverse_into_linear",
]

FeatureFormat = Literal["NLC", "NCHW"]


AlignMode = Literal["procrustes", "sign", "none"]


def align_eigenbasis(
    eigvals: Tensor, eigvecs: Tensor, prev: Optional[Tensor], mode: AlignMode = "procrustes", tol: float = 0.05
) -> Tensor:
    """The eigenbasis ``eigvecs`` (columns, for ascending ``eigvals``) turned as close to ``prev``
    as the new covariance allows.

    An eigendecomposition fixes each eigenvector only up to its sign, and a group of (near-)equal
    eigenvalues only up to a rotation inside the group; ``eigh`` picks among them arbitrarily, so
    two recomputes on almost the same statistics can give very different PHI-S targets. Here:

    * ``'sign'``: each vector gets the sign that points it along its predecessor (column i of
      ``prev``);
    * ``'procrustes'``: the eigenvalues are cut into groups whose spread is at most
      ``tol * mean(eigvals)``, and each group's vectors are rotated by the orthogonal Procrustes
      solution ``R = argmin ||V R - P||`` (``V`` the group's new vectors, ``P`` the same columns of
      ``prev``; ``R = A B^T`` from the SVD ``V^T P = A S B^T``). A group of one is the sign rule.
      Inside a group the rotated basis diagonalises the covariance up to the group's spread, so
      every PHI-S channel keeps unit variance to within ``tol`` (the deviation of channel i is
      ``sum_G h_G^T E_G h_G / mean(eigvals)`` with ``||E_G|| <= spread_G`` and
      ``sum_G ||h_G||^2 = 1``), while the isotropic scale and the exact inverse are untouched;
    * ``'none'``: ``eigvecs`` as ``eigh`` returned them.

    With no ``prev`` (a first computation) each vector's largest entry is made positive, so the
    result does not depend on the sign ``eigh`` happened to choose either.
    """
    if mode not in ("procrustes", "sign", "none"):
        raise ValueError(f"PHI-S basis alignment must be 'procrustes', 'sign' or 'none', got {mode!r}.")
    if mode == "none":
        return eigvecs
    if prev is None:
        idx = eigvecs.abs().argmax(dim=0, keepdim=True)
        signs = torch.sign(torch.gather(eigvecs, 0, idx))
        return eigvecs * torch.where(signs == 0, torch.ones_like(signs), signs)
    prev = prev.to(eigvecs)
    if mode == "sign":
        dots = (eigvecs * prev).sum(dim=0)
        return eigvecs * torch.where(dots < 0, -1.0, 1.0).to(eigvecs)
    out = eigvecs.clone()
    width = float(tol) * float(eigvals.clamp_min(0).mean())
    start = 0
    n = eigvals.shape[0]
    while start < n:
        stop = start + 1
        while stop < n and float(eigvals[stop] - eigvals[start]) <= width:
            stop += 1
        v, p = eigvecs[:, start:stop], prev[:, start:stop]
        a, _, bt = torch.linalg.svd(v.T @ p)
        out[:, start:stop] = v @ (a @ bt)
        start = stop
    return out


def phi_s_matrix(
    mean: Tensor,
    cov: Tensor,
    hadamard_seed: int = 0,
    *,
    prev_tx: Optional[Tensor] = None,
    align: AlignMode = "procrustes",
    align_tol: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """PHI-S transform ``(mean, tx)`` from a mean (C,) and covariance (C, C); both float64.

    ``(x - mean) @ tx.T`` has unit variance in every channel. ``prev_tx``: the transform this one
    replaces; the new eigenbasis is aligned to the one inside it (``align_eigenbasis``) so that
    the normalised targets move only as much as the statistics changed.
    """
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or mean.shape != cov.shape[:1]:
        raise ValueError(
            f"phi_s_matrix expects mean (C,) and cov (C, C); got mean {tuple(mean.shape)}, cov {tuple(cov.shape)}."
        )
    cov = cov.to(torch.float64)
    cov = 0.5 * (cov + cov.T)  # eigh assumes symmetry; summation order can break it slightly
    eigvals, eigvecs = torch.linalg.eigh(cov)
    eigvals = eigvals.clamp_min(0.0)
    mean_eig = eigvals.mean()
    if not torch.isfinite(mean_eig) or mean_eig <= 0:
        # Constant features (e.g. a teacher that has not produced anything yet): no scale can make
        # them unit-variance, so keep the scale 1 rather than divide by zero.
        warnings.warn("PHI-S: the features have zero (or non-finite) total variance; using scale 1.", stacklevel=2)
        alpha = torch.ones((), dtype=torch.float64)
    else:
        alpha = mean_eig.rsqrt()
    h = get_hadamard_matrix(cov.shape[0], seed=hadamard_seed).to(cov.device)
    prev_u = None
    if prev_tx is not None:
        # prev_tx = alpha' H U'^T with orthogonal H U'^T: every row has norm alpha'
        prev = prev_tx.to(device=cov.device, dtype=torch.float64)
        prev_u = (prev.T @ h) / prev[0].norm()
    eigvecs = align_eigenbasis(eigvals, eigvecs, prev_u, align, align_tol)
    tx = alpha * (h @ eigvecs.T)
    return mean.to(torch.float64), tx


def phi_s_inverse(tx: Tensor) -> Tensor:
    """Inverse of a PHI-S (or any invertible) transform matrix, computed in float64."""
    return torch.linalg.inv(tx.to(torch.float64))


def _channel_last(x: Tensor, fmt: FeatureFormat) -> Tensor:
    if fmt == "NCHW":
        if x.ndim != 4:
            raise ValueError(f"fmt='NCHW' needs a 4-D tensor, got shape {tuple(x.shape)}.")
        return x.permute(0, 2, 3, 1)
    if fmt != "NLC":
        raise ValueError(f"Unknown feature format {fmt!r}; use 'NLC' (channels last) or 'NCHW'.")
    return x


def apply_transform(x: Tensor, mean: Tensor, tx: Tensor, fmt: FeatureFormat = "NLC", add_mean: bool = False) -> Tensor:
    """``(x - mean) @ tx.T`` (or ``x @ tx.T + mean`` with ``add_mean``) on channels-last or NCHW input.

    Computed in at least float32: teacher targets may come out of bf16 autocast and the transform
    mixes every channel, so low-precision rounding would be amplified.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    xl = _channel_last(x, fmt).to(dtype)
    mean = mean.to(device=x.device, dtype=dtype)
    tx = tx.to(device=x.device, dtype=dtype)
    if xl.shape[-1] != tx.shape[1]:
        raise ValueError(f"Feature channels ({xl.shape[-1]}) do not match the transform ({tx.shape[1]}).")
    y = xl @ tx.T + mean if add_mean else (xl - mean) @ tx.T
    if fmt == "NCHW":
        y = y.permute(0, 3, 1, 2)
    return y


class PhiSEstimator(nn.Module):
    """Running float64 sums of x and x x^T, for the PHI-S mean and covariance.

    Sums are split in two: ``pending_*`` (local, since the last synchronisation) and ``total_*``
    (already summed over all ranks).  ``all_reduce_()`` sums the pending part over the process group
    and moves it into the totals, so calling it repeatedly never double-counts.  All buffers are in
    the ``state_dict``, so the statistics resume with the training state.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"PhiSEstimator dim must be positive, got {dim}.")
        self.dim = dim
        for prefix in ("pending", "total"):
            self.register_buffer(f"{prefix}_count", torch.zeros((), dtype=torch.float64))
            self.register_buffer(f"{prefix}_sum", torch.zeros(dim, dtype=torch.float64))
            self.register_buffer(f"{prefix}_sum_sq", torch.zeros(dim, dim, dtype=torch.float64))

    @property
    def count(self) -> float:
        return float(self.pending_count + self.total_count)

    @torch.no_grad()
    def update(self, x: Tensor, fmt: FeatureFormat = "NLC") -> None:
        """Add samples: ``x`` is (..., C) channels last (``fmt='NLC'``) or (B, C, H, W) (``fmt='NCHW'``)."""
        x = _channel_last(x, fmt)
        if x.shape[-1] != self.dim:
            raise ValueError(f"PhiSEstimator expects {self.dim} channels, got {x.shape[-1]} (shape {tuple(x.shape)}).")
        x = x.reshape(-1, self.dim).to(device=self.pending_sum.device, dtype=torch.float64)
        self.pending_count += x.shape[0]
        self.pending_sum += x.sum(dim=0)
        self.pending_sum_sq += x.T @ x

    @torch.no_grad()
    def all_reduce_(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum the pending statistics over ``group`` (if torch.distributed is initialised) into the totals."""
        pending = [self.pending_count, self.pending_sum, self.pending_sum_sq]
        if dist.is_available() and dist.is_initialized():
            # One flat buffer: a single collective instead of three.
            flat = torch.cat([p.reshape(-1) for p in pending])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            offset = 0
            for p in pending:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        self.total_count += self.pending_count
        self.total_sum += self.pending_sum
        self.total_sum_sq += self.pending_sum_sq
        for p in pending:
            p.zero_()

    @torch.no_grad()
    def mean_cov(self) -> tuple[Tensor, Tensor]:
        """Mean (C,) and unbiased covariance (C, C) of everything seen (totals plus local pending)."""
        n = self.total_count + self.pending_count
        if n < 2:
            raise RuntimeError(
                f"PHI-S needs at least 2 samples to estimate a covariance, has {int(n)}; call update() first."
            )
        s = self.total_sum + self.pending_sum
        ss = self.total_sum_sq + self.pending_sum_sq
        mean = s / n
        cov = (ss - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov

    @torch.no_grad()
    def compute(self, hadamard_seed: int = 0, **align) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean, tx, inv_tx)`` in float64 from the statistics so far (``align``: the
        ``prev_tx`` / ``align`` / ``align_tol`` options of ``phi_s_matrix``)."""
        mean, cov = self.mean_cov()
        mean, tx = phi_s_matrix(mean, cov, hadamard_seed=hadamard_seed, **align)
        return mean, tx, phi_s_inverse(tx)


class PhiSNormalizer(nn.Module):
    """PHI-S state for one teacher (at one teacher resolution) during training.

    Its schedule counts *its own* steps: the optimiser steps in which it saw a batch, not the
    global step. A teacher resolution that enters in a later stage of a recipe therefore gets the
    same ``update_every`` / ``freeze_after`` schedule as one that was there from the start (with a
    global count it would be frozen after its very first batch).

    Use: ``update(features)`` with every batch of raw teacher features it normalises;
    ``initialize()`` once, before its first loss (the trainer does this on the batches of the step
    in which the normaliser first appears, so no loss is ever taken against raw targets); and
    ``step()`` once at the end of every step in which it saw data. ``step()`` all-reduces the
    statistics and recomputes the transform at its own steps 0, ``update_every``,
    ``2 * update_every``, ... (step 0 only if ``initialize()`` was not called), and freezes the
    transform after ``freeze_after`` own steps (later updates are ignored), so the student's
    targets stop moving. Before the first computation the transform is the identity.

    ``initialize()`` and the recomputing ``step()`` calls hold a collective: when running
    distributed every rank must call them for the same normalisers in the same order. The whole
    state (statistics, transform, own step count) is in ``state_dict``.
    """

    def __init__(
        self,
        dim: int,
        update_every: int = 100,
        freeze_after: int = 3000,
        hadamard_seed: int = 0,
        align: AlignMode = "procrustes",
        align_tol: float = 0.05,
    ) -> None:
        super().__init__()
        if align not in ("procrustes", "sign", "none"):
            raise ValueError(f"align must be 'procrustes', 'sign' or 'none', got {align!r}.")
        if align_tol < 0:
            raise ValueError(f"align_tol must be >= 0, got {align_tol}.")
        self.align, self.align_tol = align, float(align_tol)
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}.")
        if freeze_after < 0:
            raise ValueError(f"freeze_after must be >= 0, got {freeze_after}.")
        self.dim = dim
        self.update_every = update_every
        self.freeze_after = freeze_after
        self.hadamard_seed = hadamard_seed
        self.estimator = PhiSEstimator(dim)
        # Transforms kept in float64 so that the inverse folded at export is exact.
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("tx", torch.eye(dim, dtype=torch.float64))
        self.register_buffer("inv_tx", torch.eye(dim, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # own steps (batches seen)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def frozen(self) -> bool:
        return int(self.steps) >= self.freeze_after and bool(self.initialized)

    @torch.no_grad()
    def update(self, x: Tensor, fmt: FeatureFormat = "NLC") -> None:
        """Accumulate raw teacher features (ignored once frozen)."""
        if not self.frozen:
            self.estimator.update(x, fmt)

    @torch.no_grad()
    def initialize(self, group: dist.ProcessGroup | None = None) -> None:
        """All-reduce what was seen so far and compute the first transform (a collective)."""
        self.estimator.all_reduce_(group)
        if self.estimator.count < 2:
            raise RuntimeError(
                f"PHI-S normaliser ({self.dim} channels) cannot be initialised from {int(self.estimator.count)} "
                "feature vectors; it needs at least 2 (update() it with a batch of teacher features first)."
            )
        self.recompute()

    @torch.no_grad()
    def step(self, group: dist.ProcessGroup | None = None) -> bool:
        """Advance one of this normaliser's own steps; returns True if the transform was recomputed."""
        if self.frozen:
            return False
        own = int(self.steps)
        recompute = (not bool(self.initialized)) or (own % self.update_every == 0 and own > 0)
        self.steps += 1
        if not recompute:
            return False
        self.estimator.all_reduce_(group)
        if self.estimator.count < 2:
            return False
        self.recompute()
        return True

    @torch.no_grad()
    def recompute(self) -> None:
        """Recompute the transform now from the statistics gathered so far."""
        # each recompute continues the previous basis (align_eigenbasis), so targets move only as
        # much as the statistics did
        prev = self.tx.clone() if bool(self.initialized) else None
        mean, tx, inv = self.estimator.compute(
            self.hadamard_seed, prev_tx=prev, align=self.align, align_tol=self.align_tol
        )
        self.mean.copy_(mean)
        self.tx.copy_(tx)
        self.inv_tx.copy_(inv)
        self.initialized.fill_(True)

    def normalize(self, x: Tensor, fmt: FeatureFormat = "NLC") -> Tensor:
        """Raw teacher space -> PHI-S space."""
        return apply_transform(x, self.mean, self.tx, fmt)

    def denormalize(self, y: Tensor, fmt: FeatureFormat = "NLC") -> Tensor:
        """PHI-S space -> raw teacher space."""
        return apply_transform(y, self.mean, self.inv_tx, fmt, add_mean=True)

    def forward(self, x: Tensor, fmt: FeatureFormat = "NLC") -> Tensor:
        return self.normalize(x, fmt)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, update_every={self.update_every}, freeze_after={self.freeze_after}, "
            f"align={self.align!r}, align_tol={self.align_tol}"
        )


@torch.no_grad()
def fold_inverse_into_linear(
    linear: nn.Linear,
    mean: Tensor,
    tx: Tensor | None = None,
    *,
    inv_tx: Tensor | None = None,
    upsample_factor: int = 1,
) -> nn.Linear:
    """A new Linear whose output equals ``denormalize(linear(x))`` for the PHI-S ``(mean, tx)``.

    ``W' = T^-1 W`` and ``b' = T^-1 b + mean``.  Pass ``inv_tx`` to skip the matrix inversion.
    With a pixel-shuffle feature head (``upsample_factor`` u > 1) the Linear emits u*u*C channels
    laid out as ``(u1 u2 c)``; the inverse is then applied to each of the u*u groups of C.
    The fold is done in float64 and cast back to the Linear's dtype.
    """
    if (tx is None) == (inv_tx is None):
        raise ValueError("Pass exactly one of tx (the PHI-S transform) or inv_tx (its inverse).")
    inv = phi_s_inverse(tx) if inv_tx is None else inv_tx.to(torch.float64)
    c = inv.shape[0]
    groups = upsample_factor * upsample_factor
    if upsample_factor < 1:
        raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}.")
    if linear.out_features != groups * c:
        raise ValueError(
            f"Linear has {linear.out_features} outputs but the PHI-S transform has {c} channels "
            f"(x upsample_factor^2 = {groups}): expected {groups * c}."
        )
    dev, dt = linear.weight.device, linear.weight.dtype
    inv = inv.to(dev)
    mean = mean.to(device=dev, dtype=torch.float64)
    w = linear.weight.detach().to(torch.float64).reshape(groups, c, linear.in_features)
    w = torch.einsum("dc,gci->gdi", inv, w).reshape(groups * c, linear.in_features)
    if linear.bias is not None:
        b = linear.bias.detach().to(torch.float64).reshape(groups, c)
    else:
        b = torch.zeros(groups, c, dtype=torch.float64, device=dev)
    b = (b @ inv.T + mean).reshape(-1)
    out = nn.Linear(linear.in_features, linear.out_features, bias=True, device=dev, dtype=dt)
    out.weight.copy_(w.to(dt))
    out.bias.copy_(b.to(dt))
    return out
