"""A PHI-S target basis that does not jump: each recompute continues the previous eigenbasis.

``eigh`` may return any valid eigenbasis (a sign per vector, any rotation inside a group of equal
eigenvalues); the targets must not depend on which one it picked.
"""

from __future__ import annotations

import pytest
import torch

from openradio.distill.phi_s import PhiSNormalizer, align_eigenbasis, fold_inverse_into_linear

C = 16


def _features(n: int, seed: int) -> torch.Tensor:
    """Samples whose covariance has distinct eigenvalues and a 4-fold (near-)degenerate group."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(C, C, generator=g, dtype=torch.float64))
    std = torch.linspace(0.5, 3.0, C, dtype=torch.float64)
    std[4:8] = 1.2  # equal variances: the eigenbasis of this block is any rotation of it
    return (torch.randn(n, C, generator=g, dtype=torch.float64) * std) @ q.T + 1.0


def _other_valid_eigh(seed: int):
    """An eigh that returns another valid eigendecomposition: signs flipped at random and the
    vectors of every group of (numerically) equal eigenvalues rotated at random."""
    real = torch.linalg.eigh
    g = torch.Generator().manual_seed(seed)

    def eigh(a, *args, **kwargs):
        vals, vecs = real(a, *args, **kwargs)
        vecs = vecs * torch.where(torch.rand(vecs.shape[1], generator=g) < 0.5, -1.0, 1.0).to(vecs)
        i, n = 0, vals.shape[0]
        while i < n:
            j = i + 1
            while j < n and float(vals[j] - vals[i]) <= 1e-9 * float(vals.abs().max()):
                j += 1
            if j - i > 1:
                r, _ = torch.linalg.qr(torch.randn(j - i, j - i, generator=g, dtype=vecs.dtype))
                vecs[:, i:j] = vecs[:, i:j] @ r
            i = j
        return vals, vecs

    return eigh


def _exactly_degenerate_normalizer(align: str) -> tuple[PhiSNormalizer, torch.Tensor]:
    """A normaliser whose statistics have an exactly 4-fold eigenvalue (set directly)."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(C, C, generator=g, dtype=torch.float64))
    lam = torch.linspace(0.5, 3.0, C, dtype=torch.float64) ** 2
    lam[4:8] = 1.44
    cov = q @ torch.diag(lam) @ q.T
    mean = torch.linspace(-1, 1, C, dtype=torch.float64)
    n = 1000.0
    norm = PhiSNormalizer(C, update_every=1, freeze_after=100, align=align)
    e = norm.estimator
    e.total_count.fill_(n)
    e.total_sum.copy_(n * mean)
    e.total_sum_sq.copy_((n - 1) * cov + n * torch.outer(mean, mean))
    x = torch.randn(64, C, generator=g, dtype=torch.float64) @ torch.diag(lam.sqrt()) @ q.T + mean
    return norm, x


@pytest.mark.parametrize("align", ["procrustes", "sign"])
def test_recompute_on_unchanged_statistics_leaves_targets_unchanged(align, monkeypatch):
    norm = PhiSNormalizer(C, update_every=1, freeze_after=100, align=align)
    x = _features(2000, seed=0)
    norm.update(x)
    norm.step()
    before = norm.normalize(x[:64]).clone()
    norm.recompute()
    torch.testing.assert_close(norm.normalize(x[:64]), before, rtol=0, atol=1e-10)
    # ... whichever signs eigh returns (distinct eigenvalues here: signs are its only freedom)
    monkeypatch.setattr(torch.linalg, "eigh", _other_valid_eigh(seed=1))
    norm.recompute()
    torch.testing.assert_close(norm.normalize(x[:64]), before, rtol=0, atol=1e-8)


def test_procrustes_is_blind_to_rotations_inside_equal_eigenvalues(monkeypatch):
    results = {}
    for align in ("procrustes", "sign", "none"):
        norm, x = _exactly_degenerate_normalizer(align)
        norm.recompute()
        before = norm.normalize(x).clone()
        with monkeypatch.context() as m:
            m.setattr(torch.linalg, "eigh", _other_valid_eigh(seed=7))
            norm.recompute()
        results[align] = float((norm.normalize(x) - before).norm() / before.norm())
    assert results["procrustes"] < 1e-8
    # the check can fail: without the rotation (or without any alignment) the targets move
    assert results["sign"] > 0.05 and results["none"] > 0.05


def test_first_computation_does_not_depend_on_eigh_signs(monkeypatch):
    x = _features(2000, seed=5)
    a = PhiSNormalizer(C, align="sign")
    a.update(x)
    a.step()
    b = PhiSNormalizer(C, align="sign")
    b.update(x)
    monkeypatch.setattr(torch.linalg, "eigh", _other_valid_eigh(seed=2))
    b.step()
    torch.testing.assert_close(b.tx, a.tx, rtol=0, atol=1e-10)


def test_aligned_transform_keeps_unit_variance_scale_and_exact_inverse():
    x = _features(20000, seed=11)
    norm = PhiSNormalizer(C, update_every=1, freeze_after=100, align="procrustes", align_tol=0.05)
    norm.update(x[:5000])
    norm.step()
    norm.update(x[5000:])
    norm.step()  # recomputed, aligned to the first basis
    y = norm.normalize(x)
    var = y.var(dim=0)
    # the isotropic scale is exact (mean variance 1) and each channel within align_tol of it
    assert abs(float(var.mean()) - 1) < 1e-9
    assert float((var - 1).abs().max()) <= 0.05 + 1e-9
    # tx is a scaled orthogonal matrix and its stored inverse is exact, so the fold stays exact
    eye = torch.eye(C, dtype=torch.float64)
    torch.testing.assert_close(norm.inv_tx @ norm.tx, eye, rtol=0, atol=1e-12)
    alpha = norm.tx[0].norm()
    torch.testing.assert_close(norm.tx @ norm.tx.T / alpha**2, eye, rtol=0, atol=1e-12)
    lin = torch.nn.Linear(8, C).double()
    folded = fold_inverse_into_linear(lin, norm.mean, inv_tx=norm.inv_tx)
    h = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(folded(h), norm.denormalize(lin(h)), rtol=0, atol=1e-10)


def test_alignment_moves_targets_less_when_statistics_change_a_little():
    """More data from the same distribution: aligned targets move far less than raw eigh ones."""
    x = _features(4000, seed=21)
    probe = x[:256]
    moves = {}
    for align in ("none", "sign", "procrustes"):
        norm = PhiSNormalizer(C, update_every=1, freeze_after=100, align=align)
        norm.update(x[:2000])
        norm.step()
        before = norm.normalize(probe).clone()
        norm.update(x[2000:])
        norm.step()
        moves[align] = float((norm.normalize(probe) - before).norm() / before.norm())
    # measured: none 0.62, sign 0.39, procrustes 0.24
    assert moves["procrustes"] < moves["sign"] < moves["none"]
    assert moves["procrustes"] < 0.5 * moves["none"]


def test_align_eigenbasis_rejects_unknown_mode():
    with pytest.raises(ValueError, match="procrustes"):
        align_eigenbasis(torch.ones(2), torch.eye(2), None, mode="rotate")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="align"):
        PhiSNormalizer(4, align="bogus")  # type: ignore[arg-type]
