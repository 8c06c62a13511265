"""Distillation losses against direct computations, grid matching, and mosaic packing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from openradio.distill.losses import (
    TeacherLossWeights,
    distill_loss,
    feature_mse_loss,
    hybrid_feature_loss,
    match_grids,
    summary_cosine_loss,
)
from openradio.distill.mosaic import pack_mosaic, plan_mosaic, unpack_features
from openradio.teachers import TeacherOutput, TranslationEquivariantTeacher


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- losses
def test_summary_cosine_loss_direct() -> None:
    a, b = _rand(5, 7, seed=1), _rand(5, 7, seed=2)
    expected = sum(1 - float(a[i] @ b[i]) / (a[i].norm().item() * b[i].norm().item()) for i in range(5)) / 5
    assert math.isclose(summary_cosine_loss(a, b).item(), expected, rel_tol=1e-5)
    assert summary_cosine_loss(a, 3.0 * a).item() == pytest.approx(0.0, abs=1e-6)
    assert summary_cosine_loss(a, -a).item() == pytest.approx(2.0, abs=1e-6)


def test_feature_mse_direct() -> None:
    a, b = _rand(2, 4, 3, 3, seed=1), _rand(2, 4, 3, 3, seed=2)
    expected = sum((x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist())) / a.numel()
    assert math.isclose(feature_mse_loss(a, b).item(), expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        feature_mse_loss(a, b[:, :3])


def test_hybrid_loss_direct() -> None:
    a, b = 2 * _rand(2, 4, 3, 3, seed=3), _rand(2, 4, 3, 3, seed=4)
    cos_terms = []
    for n in range(2):
        for i in range(3):
            for j in range(3):
                u, v = a[n, :, i, j], b[n, :, i, j]
                cos_terms.append(1 - float(u @ v) / (u.norm().item() * v.norm().item()))
    d = (a - b).abs().flatten().tolist()
    smooth = sum(0.5 * x * x if x < 1 else x - 0.5 for x in d) / len(d)
    expected = 0.9 * sum(cos_terms) / len(cos_terms) + 0.1 * smooth
    assert math.isclose(hybrid_feature_loss(a, b).item(), expected, rel_tol=1e-5)


def test_match_grids() -> None:
    s, t = _rand(2, 3, 8, 8, seed=1), _rand(2, 3, 4, 4, seed=2)
    ms, mt = match_grids(s, t)
    assert mt is t and ms.shape == (2, 3, 4, 4)
    assert torch.allclose(ms, F.interpolate(s, size=(4, 4), mode="bilinear", align_corners=False, antialias=True))
    # The teacher is the larger one: it is the one resampled.
    ms, mt = match_grids(t, s)
    assert ms is t and mt.shape == (2, 3, 4, 4)
    # Per axis: the smaller size of each axis wins.
    ms, mt = match_grids(_rand(1, 3, 6, 4), _rand(1, 3, 3, 8))
    assert ms.shape[-2:] == mt.shape[-2:] == (3, 4)
    # Down-sampling keeps constant maps constant.
    const = torch.full((1, 2, 8, 8), 1.5)
    assert torch.allclose(match_grids(const, t[:1, :2])[0], torch.full((1, 2, 4, 4), 1.5))
    with pytest.raises(ValueError, match="channel"):
        match_grids(s, _rand(2, 5, 4, 4))


def test_distill_loss_combines_weighted_terms() -> None:
    student = {
        "clip": (_rand(2, 6, seed=1).requires_grad_(), _rand(2, 5, 4, 4, seed=2).requires_grad_()),
        "sam": (_rand(2, 6, seed=3).requires_grad_(), _rand(2, 4, 4, 4, seed=4).requires_grad_()),
        "dino_v2": (_rand(2, 3, seed=5).requires_grad_(), _rand(2, 3, 8, 8, seed=6).requires_grad_()),
    }
    teachers = {
        "clip": TeacherOutput(_rand(2, 6, seed=7), _rand(2, 5, 4, 4, seed=8)),
        "sam": TeacherOutput(None, _rand(2, 4, 4, 4, seed=9)),
        "dino_v2": TeacherOutput(_rand(2, 3, seed=10), _rand(2, 3, 4, 4, seed=11)),  # smaller grid
    }
    weights = {"clip": TeacherLossWeights(2.0, 0.5), "sam": TeacherLossWeights(0.0, 1.0), "dino_v2": (1.0, 3.0)}
    out = distill_loss(student, teachers, weights)
    assert set(out) == {"clip/summary", "clip/features", "sam/features", "dino_v2/summary", "dino_v2/features", "total"}
    s_dino = F.interpolate(student["dino_v2"][1], size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    direct = {
        "clip/summary": (1 - F.cosine_similarity(student["clip"][0], teachers["clip"][0], dim=-1)).mean(),
        "clip/features": ((student["clip"][1] - teachers["clip"][1]) ** 2).mean(),
        "sam/features": ((student["sam"][1] - teachers["sam"][1]) ** 2).mean(),
        "dino_v2/summary": (1 - F.cosine_similarity(student["dino_v2"][0], teachers["dino_v2"][0], dim=-1)).mean(),
        "dino_v2/features": ((s_dino - teachers["dino_v2"][1]) ** 2).mean(),
    }
    for k, v in direct.items():
        assert torch.allclose(out[k], v), k
    total = (
        2.0 * direct["clip/summary"]
        + 0.5 * direct["clip/features"]
        + direct["sam/features"]
        + direct["dino_v2/summary"]
        + 3.0 * direct["dino_v2/features"]
    )
    assert torch.allclose(out["total"], total)
    out["total"].backward()
    assert student["sam"][0].grad is None  # SAM's summary is not trained
    assert all(student[k][1].grad is not None for k in student)
    hybrid = distill_loss(student, teachers, weights, feature_loss_kind="hybrid")
    assert torch.allclose(hybrid["clip/features"], hybrid_feature_loss(student["clip"][1], teachers["clip"][1]))


def test_distill_loss_errors() -> None:
    s = {"clip": (_rand(1, 3), _rand(1, 2, 2, 2))}
    with pytest.raises(ValueError, match="same teachers"):
        distill_loss(s, {"sam": (None, _rand(1, 2, 2, 2))})
    with pytest.raises(ValueError, match="unknown teachers"):
        distill_loss(s, {"clip": (_rand(1, 3), _rand(1, 2, 2, 2))}, {"sam": (0.0, 1.0)})
    with pytest.raises(ValueError, match="feature loss"):
        distill_loss(s, {"clip": (_rand(1, 3), _rand(1, 2, 2, 2))}, feature_loss_kind="l3")


# --------------------------------------------------------------------------- mosaic
def test_plan_matches_the_recipe() -> None:
    layout = plan_mosaic(5, 432, 1024, 16)
    assert layout.view_tokens == (27, 27) and layout.canvas_tokens == (64, 64)
    assert layout.views_per_side == (2, 2) and layout.pitch == (512, 512)
    assert layout.num_canvases == 2
    assert layout.positions == ((0, 0, 0), (0, 0, 512), (0, 512, 0), (0, 512, 512), (1, 0, 0))


def test_pack_places_views_and_zero_pads() -> None:
    views = torch.rand(5, 3, 48, 32, generator=torch.Generator().manual_seed(0)) + 0.1
    canvases, layout = pack_mosaic(views, (128, 80), 8)
    assert layout.views_per_side == (2, 2) and layout.pitch == (64, 40)
    assert canvases.shape == (2, 3, 128, 80)
    mask = torch.zeros_like(canvases, dtype=torch.bool)
    for i, (c, top, left) in enumerate(layout.positions):
        assert torch.equal(canvases[c, :, top : top + 48, left : left + 32], views[i])
        mask[c, :, top : top + 48, left : left + 32] = True
    assert (canvases[~mask] == 0).all()  # padding, including the empty slots of the last canvas
    assert (canvases[1, :, :, 40:] == 0).all() and (canvases[1, :, 64:] == 0).all()


@pytest.mark.parametrize("num_views", [4, 7])
def test_mosaic_equals_views_run_alone(num_views: int) -> None:
    torch.manual_seed(0)
    teacher = TranslationEquivariantTeacher(patch_size=8, input_size=128, feature_dim=12)
    views = torch.rand(num_views, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    canvases, layout = pack_mosaic(views, 128, teacher.patch_size)
    feats = unpack_features(teacher(canvases).features, layout)
    assert feats.shape == (num_views, 12, 6, 6)
    for i, (_c, top, left) in enumerate(layout.positions):
        # The view alone on an otherwise empty canvas, at the same position.
        alone = torch.zeros(1, 3, 128, 128)
        alone[0, :, top : top + 48, left : left + 48] = views[i]
        ref = teacher(alone).features[:, :, top // 8 : top // 8 + 6, left // 8 : left // 8 + 6]
        assert torch.allclose(feats[i : i + 1], ref, rtol=0, atol=1e-6)
        # And, the teacher being translation-equivariant, the view run un-padded at its own size.
        assert torch.allclose(feats[i : i + 1], teacher(views[i : i + 1], 48).features, rtol=0, atol=1e-5)


def test_mosaic_at_recipe_size() -> None:
    torch.manual_seed(0)
    teacher = TranslationEquivariantTeacher(patch_size=16, input_size=1024, feature_dim=4, hidden_dim=8)
    views = torch.rand(5, 3, 432, 432, generator=torch.Generator().manual_seed(2))
    canvases, layout = pack_mosaic(views, 1024, 16)
    feats = unpack_features(teacher(canvases).features, layout)
    assert feats.shape == (5, 4, 27, 27)
    assert torch.allclose(feats, teacher(views, 432).features, atol=1e-5)


def test_mosaic_errors() -> None:
    with pytest.raises(ValueError, match="not a multiple of the teacher patch"):
        plan_mosaic(2, 50, 128, 8)
    with pytest.raises(ValueError, match="larger than the canvas"):
        plan_mosaic(2, 256, 128, 8)
    _, layout = pack_mosaic(torch.rand(3, 3, 48, 48), 128, 8)
    with pytest.raises(ValueError, match="do not match the layout"):
        unpack_features(torch.rand(1, 4, 8, 8), layout)
