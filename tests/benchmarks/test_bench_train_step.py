"""benchmarks/bench_train_step.py accounts for a training step's time honestly (no timings asserted)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from openradio.distill.trainer import DistEnv, Trainer

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bt():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH / "bench_train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def one_thread():
    # the tiny recipe's operations are too small for two threads on a shared machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_step_parts_add_up_and_leave_the_trainer_as_it_was(bt, tmp_path, train_image_dir, one_thread):
    cfg = bt.recipe_config("tiny", train_image_dir, tmp_path / "a")
    timed, plain = (
        Trainer(cfg, env=DistEnv()),
        Trainer(bt.recipe_config("tiny", train_image_dir, tmp_path / "b"), env=DistEnv()),
    )
    backward = torch.Tensor.backward
    run = bt.measure_steps(timed, steps=2, warmup=1)

    parts = run["parts"]
    # every part of the step was seen: each teacher, the student both ways, optimiser, EMA, PHI-S, data
    for name in [
        "teacher clip",
        "teacher siglip",
        "teacher dino_v2",
        "teacher sam",
        bt.TEACHER_GLUE,
        "student forward",
        "student backward",
        "losses",
        "optimiser",
        "EMA",
        "PHI-S",
        "data",
        "other",
    ]:
        assert parts.get(name, 0.0) > 0.0, name
    sh = bt.shares(parts)
    assert list(sh) == list(bt.CATEGORIES)
    assert math.isclose(sum(sh.values()), 1.0, abs_tol=1e-9)
    assert all(v >= 0 for v in sh.values())
    # the exclusive parts add up to the steps' wall time (measured outside the timer)
    assert sum(parts.values()) <= run["wall_s"] + 1e-9
    assert sum(parts.values()) >= 0.97 * run["wall_s"]
    assert run["images"] == [6, 6]  # low 4 + high 2

    # nothing stays patched: the class methods and hooks are back
    assert torch.Tensor.backward is backward
    assert not {"_teacher_outputs", "_optimizer_step", "_update_ema"} & set(vars(timed))
    assert "next_batch" not in vars(timed.data)
    assert not timed.model._forward_hooks and not timed.model._forward_pre_hooks
    assert all(not t._forward_hooks for t in timed.teachers.values())

    # and timing changed nothing the trainer computes: same losses as an untimed twin
    for _ in range(3):
        plain.train_step()
    a, b = timed.train_step(), plain.train_step()
    assert a["step"] == b["step"] == 4
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_shares_reject_an_unknown_region(bt):
    with pytest.raises(KeyError, match="no category"):
        bt.shares({"other": 1.0, "mystery": 1.0})
    assert bt.shares({"teacher sam": 1.0, bt.TEACHER_GLUE: 1.0, "other": 2.0})["teachers"] == 0.5


def test_mosaic_and_per_view_run_on_the_same_views(bt):
    from openradio.teachers import build_teacher

    # translation-equivariant: a view's features are the same alone or anywhere on a canvas, so the
    # mosaic path and the per-view path agree only if they saw the same views in the same order
    teacher = build_teacher(
        {"name": "eq", "type": "equivariant", "patch_size": 16, "input_size": 128, "summary_dim": None}
    )
    views = torch.rand(5, 3, 64, 64)
    res = bt.compare_mosaic(teacher, views, 128, rounds=2)
    torch.testing.assert_close(res["mosaic"]["out"], res["per view own side"]["out"])
    assert res["per view native"]["out"].shape == (5, 16, 8, 8)  # one 128 px pass per view
    assert (res["views"], res["canvases"], res["views_per_canvas"]) == (5, 2, 4)
    # conv FLOPs scale with pixels: 5 canvas-sized passes against 2 canvases; the views alone are 5/8 of them
    assert res["per view native"]["flop_ratio"] == pytest.approx(5 / 2)
    assert res["per view own side"]["flop_ratio"] == pytest.approx(5 / 8)
    assert len(res["mosaic"]["s"]) == 2 and res["mosaic"]["ratio"] == 1.0


def test_flop_counter_counts_cpu_attention(bt):
    q = torch.rand(1, 2, 64, 32)
    flops = bt.count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 4 * 2 * 64 * 64 * 32  # QK^T and AV, 2 FLOPs per multiply-add


def test_b16_config_keeps_the_student_and_shrinks_the_teachers(bt, tmp_path):
    from openradio.teachers import build_teacher

    cfg = bt.recipe_config("b16", tmp_path, tmp_path / "run", teacher_width=64, teacher_depth=2)
    assert cfg.student.model == "vit_base_patch16_224" and not cfg.amp
    (stage,) = cfg.stages
    (part,) = stage.partitions
    assert (part.resolution, part.batch_size, part.mosaic) == (432, 64, ["sam"])
    assert bt.recipe_config("b16", tmp_path, tmp_path / "run", batch=4).stages[0].partitions[0].batch_size == 4
    sizes = {}
    for t in cfg.teachers:
        teacher = build_teacher(t.build_kwargs())
        sizes[t.name] = (teacher.patch_size, teacher.input_size, teacher.feature_dim)
    assert sizes == {"clip": (14, 378, 64), "siglip": (14, 378, 64), "dino_v2": (14, 378, 64), "sam": (16, 1024, 64)}
    # the recipe's last stage spreads its partitions over 8 ranks: here one process trains both
    last = bt.recipe_config("b16", tmp_path, tmp_path / "run", stage=2).stages[0].partitions
    assert [(p.name, p.resolution, p.ranks) for p in last] == [("low", 432, None), ("high", 1024, None)]
    with pytest.raises(ValueError, match="stages"):
        bt.recipe_config("b16", tmp_path, tmp_path / "run", stage=7)
