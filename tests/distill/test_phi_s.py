"""Hadamard matrices, the PHI-S transform, its estimator/normaliser and the folded export head."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from openradio.distill.hadamard import get_hadamard_matrix, hadamard_construction, is_hadamard
from openradio.distill.phi_s import (
    PhiSEstimator,
    PhiSNormalizer,
    apply_transform,
    fold_inverse_into_linear,
    phi_s_matrix,
)

# Feature widths of the released teachers and of RADIO heads.
TEACHER_SIZES = [192, 256, 384, 768, 1024, 1152, 1280, 1536]


@pytest.mark.parametrize("n", TEACHER_SIZES)
def test_teacher_sizes_are_true_hadamard(n: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a random fallback would warn: must not happen for these sizes
        h = get_hadamard_matrix(n)
    assert h.dtype == torch.float64 and h.shape == (n, n)
    assert torch.allclose(h.abs(), torch.full_like(h, n**-0.5), rtol=0, atol=1e-12)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-10)
    assert hadamard_construction(n)[1] != "random"


@pytest.mark.parametrize("n,kind", [(12, "paley1"), (20, "paley1"), (28, "paley2"), (36, "paley2"), (1152, "paley2")])
def test_paley_constructions(n: int, kind: str) -> None:
    syl, got_kind, m = hadamard_construction(n)
    assert got_kind == kind and syl * m == n
    assert is_hadamard(get_hadamard_matrix(n))


def test_paley2_rejects_q_3_mod_4() -> None:
    # 2 * (q + 1) with q = 7 (prime, 3 mod 4) would be a wrong Paley II; 16 is Sylvester anyway, so
    # use 48 = 2 * 24 -> q = 23 (3 mod 4): Paley II must not be chosen, and the result must be valid.
    syl, kind, m = hadamard_construction(48)
    assert not (kind == "paley2" and (m // 2 - 1) % 4 == 3)
    assert is_hadamard(get_hadamard_matrix(48))


def test_random_fallback_warns_and_is_seeded_orthogonal() -> None:
    with pytest.warns(UserWarning, match="random orthogonal"):
        a = get_hadamard_matrix(100, seed=3)
    with pytest.warns(UserWarning):
        b = get_hadamard_matrix(100, seed=3)
    with pytest.warns(UserWarning):
        c = get_hadamard_matrix(100, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a @ a.T, torch.eye(100, dtype=torch.float64), atol=1e-10)
    assert not is_hadamard(a)


def _anisotropic(n: int, c: int, seed: int = 0) -> torch.Tensor:
    """Correlated samples whose channel variances span 8 orders of magnitude, with an offset mean."""
    g = torch.Generator().manual_seed(seed)
    # Each channel mixes in only lower-variance channels: correlated, yet variances stay far apart.
    mix = torch.tril(torch.randn(c, c, generator=g, dtype=torch.float64), diagonal=-1)
    basis = torch.eye(c, dtype=torch.float64) + 0.3 * mix
    scales = torch.logspace(-2, 2, c, dtype=torch.float64)  # variances 1e-4 .. 1e4
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scales
    return z @ basis.T + 3.0 * torch.randn(c, generator=g, dtype=torch.float64)


def test_phi_s_unit_variance_and_inverse() -> None:
    c = 192
    x = _anisotropic(4000, c)
    raw_var = x.var(dim=0)
    assert raw_var.max() / raw_var.min() > 1e3  # the test is only meaningful on anisotropic data
    mean, tx = phi_s_matrix(x.mean(0), torch.cov(x.T))
    y = (x - mean) @ tx.T
    assert torch.allclose(y.var(dim=0), torch.ones(c, dtype=torch.float64), rtol=0, atol=1e-6)
    assert torch.allclose(y.mean(dim=0), torch.zeros(c, dtype=torch.float64), atol=1e-9)
    back = y @ torch.linalg.inv(tx).T + mean
    assert torch.allclose(back, x, rtol=0, atol=1e-8 * x.abs().max().item())


def test_estimator_matches_direct_statistics_in_chunks() -> None:
    c = 48
    x = _anisotropic(3000, c, seed=1)
    est = PhiSEstimator(c)
    for i, chunk in enumerate(x.split(700)):
        est.update(chunk.reshape(-1, 10, c) if chunk.shape[0] % 10 == 0 else chunk)
        if i % 2 == 0:
            est.all_reduce_()  # moving pending sums into totals must not double-count
    mean, cov = est.mean_cov()
    assert est.count == 3000
    assert torch.allclose(mean, x.mean(0), atol=1e-10)
    assert torch.allclose(cov, torch.cov(x.T), rtol=1e-9, atol=1e-9)
    m, tx, inv = est.compute()
    y = (x - m) @ tx.T
    assert torch.allclose(y.var(0), torch.ones(c, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(inv @ tx, torch.eye(c, dtype=torch.float64), atol=1e-9)


def test_estimator_nchw_equals_nlc() -> None:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 12, 3, 5, generator=g)
    a, b = PhiSEstimator(12), PhiSEstimator(12)
    a.update(f, fmt="NCHW")
    b.update(f.flatten(2).transpose(1, 2))
    assert all(torch.allclose(p, q) for p, q in zip(a.mean_cov(), b.mean_cov()))
    with pytest.raises(ValueError, match="channels"):
        a.update(torch.randn(4, 7))


def test_normalizer_schedule_freeze_and_resume() -> None:
    c = 16
    x = _anisotropic(2000, c, seed=2).float()
    # align='none': the transform is exactly what phi_s_matrix gives for the data seen (alignment
    # across recomputes is tested in test_phi_s_alignment.py)
    norm = PhiSNormalizer(c, update_every=3, freeze_after=7, align="none")
    # Identity before any statistics.
    assert torch.equal(norm.normalize(x[:4]), x[:4])
    recomputed = []
    for chunk in x[:1000].split(100):
        norm.update(chunk)
        recomputed.append(norm.step())
    # First step computes; then every 3 steps until step 7; frozen afterwards.
    assert recomputed == [True, False, False, True, False, False, True, False, False, False]
    assert norm.frozen
    frozen_tx = norm.tx.clone()
    count = norm.estimator.count
    norm.update(x[1000:])  # ignored once frozen
    norm.step()
    assert torch.equal(norm.tx, frozen_tx) and norm.estimator.count == count
    # The transform equals one computed from the data seen up to the last recompute (7 chunks).
    m, tx = phi_s_matrix(x[:700].double().mean(0), torch.cov(x[:700].double().T), align="none")
    assert torch.allclose(norm.tx, tx, atol=1e-6) and torch.allclose(norm.mean, m, atol=1e-6)
    # state_dict round trip restores statistics, transform and schedule position.
    other = PhiSNormalizer(c, update_every=3, freeze_after=7, align="none")
    other.load_state_dict(norm.state_dict())
    assert other.frozen and int(other.steps) == int(norm.steps)
    assert torch.equal(other.normalize(x[:5]), norm.normalize(x[:5]))


def test_normalizer_round_trip_nlc_and_nchw() -> None:
    c = 24
    x = _anisotropic(3000, c, seed=4).float()
    norm = PhiSNormalizer(c)
    norm.update(x)
    norm.step()
    y = norm.normalize(x)
    assert torch.allclose(y.double().var(0), torch.ones(c, dtype=torch.float64), atol=1e-3)  # float32 data
    assert torch.allclose(norm.denormalize(y), x, atol=1e-3 * x.abs().max().item())
    f = x[:40].reshape(2, 4, 5, c).permute(0, 3, 1, 2)  # NCHW view of the same samples
    yf = norm.normalize(f, fmt="NCHW")
    assert yf.shape == f.shape
    assert torch.allclose(yf.permute(0, 2, 3, 1).reshape(40, c), y[:40], atol=1e-5)
    assert torch.allclose(norm.denormalize(yf, fmt="NCHW"), f, atol=1e-3 * x.abs().max().item())


@pytest.mark.parametrize("upsample", [1, 2])
def test_folded_head_equals_head_then_inverse(upsample: int) -> None:
    c, d = 12, 20
    x = _anisotropic(1500, c, seed=5)
    mean, tx = phi_s_matrix(x.mean(0), torch.cov(x.T))
    torch.manual_seed(0)
    head = nn.Linear(d, c * upsample * upsample).double()
    folded = fold_inverse_into_linear(head, mean, tx, upsample_factor=upsample)
    inp = torch.randn(3, 7, d, dtype=torch.float64)
    out = head(inp).reshape(3, 7, upsample * upsample, c)  # (u1 u2 c) channel layout
    expected = apply_transform(out, mean, torch.linalg.inv(tx), add_mean=True).reshape(3, 7, -1)
    assert torch.allclose(folded(inp), expected, atol=1e-9)
    # Folding then normalising gets the original head back.
    back = apply_transform(folded(inp).reshape(3, 7, upsample * upsample, c), mean, tx).reshape(3, 7, -1)
    assert torch.allclose(back, head(inp), atol=1e-9)


def test_fold_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="expected 32"):
        fold_inverse_into_linear(nn.Linear(4, 10), torch.zeros(8), torch.eye(8, dtype=torch.float64), upsample_factor=2)


def test_all_reduce_sums_ranks_without_double_counting(tmp_path, monkeypatch) -> None:
    """Two ranks each see half of the data; after all-reduce the statistics are those of all of it.

    A real (single-process, gloo) group checks the torch.distributed call itself; the second rank is
    simulated by a collective that adds what that rank would contribute.
    """
    import torch.distributed as dist

    x = _anisotropic(600, 8, seed=9)
    other = PhiSEstimator(8)  # what rank 1 accumulates between synchronisations
    norm = PhiSNormalizer(8, update_every=2, freeze_after=100, align="none")
    real_all_reduce = dist.all_reduce

    def two_rank_all_reduce(tensor, op=dist.ReduceOp.SUM, group=None):
        real_all_reduce(tensor, op=op, group=group)
        tensor += torch.cat([other.pending_count.reshape(-1), other.pending_sum, other.pending_sum_sq.reshape(-1)])
        for buf in (other.pending_count, other.pending_sum, other.pending_sum_sq):
            buf.zero_()

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(dist, "all_reduce", two_rank_all_reduce)
        for a, b in zip(x[0::2].split(100), x[1::2].split(100)):
            norm.update(a)
            other.update(b)
            norm.step()
        norm.estimator.all_reduce_()
        norm.estimator.all_reduce_()  # nothing pending: must not change anything
    finally:
        dist.destroy_process_group()
    assert norm.estimator.count == 600
    mean, cov = norm.estimator.mean_cov()
    assert torch.allclose(mean, x.mean(0), atol=1e-10)
    assert torch.allclose(cov, torch.cov(x.T), rtol=1e-9, atol=1e-9)
    # Recomputed at steps 0 and 2 (update_every=2): the last one saw the first 3 chunks of both ranks.
    seen = torch.cat([x[0::2][:300], x[1::2][:300]])
    _, tx = phi_s_matrix(seen.mean(0), torch.cov(seen.T), align="none")
    assert torch.allclose(norm.tx, tx, atol=1e-8)
