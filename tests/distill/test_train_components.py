"""The trainer's components, each tested on its own (no Trainer needed)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from openradio.distill import partitions as P
from openradio.distill.config import OptimConfig, load_config
from openradio.distill.faults import FAULT_ENV, maybe_inject_fault
from openradio.distill.metrics import MetricsLogger, combine_rank_metrics
from openradio.distill.optim import build_optimizer, build_scheduler, lr_factor
from openradio.distill.runtime import DistEnv, seed_everything, wrap_model

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, *overrides):
    return load_config(REPO / "configs" / "tiny.yaml", [f"out_dir={tmp_path}", "tensorboard=false", *overrides])


def test_optimizer_groups_and_schedule():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    o = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4, weight_decay=0.5)
    opt = build_optimizer(net, o)
    decayed, plain = opt.param_groups
    assert [p.shape for p in decayed["params"]] == [torch.Size([4, 4])] and decayed["weight_decay"] == 0.5
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0  # bias, LN weight and bias
    assert [lr_factor(s, o, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, o, 14) == pytest.approx(1.0)
    assert lr_factor(9, o, 14) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert lr_factor(14, o, 14) == pytest.approx(0.1) and lr_factor(100, o, 14) == pytest.approx(0.1)
    sched = build_scheduler(opt, o, 14)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_partitions_stages_scales_and_resolutions(tmp_path):
    cfg = _cfg(
        tmp_path,
        "stages=[{steps: 2, partitions: [{name: a, resolution: 64, batch_size: 2}]},"
        " {steps: 3, partitions: [{name: lo, resolution: 64, batch_size: 2, ranks: [0, 1, 2]},"
        "  {name: hi, resolution: 128, batch_size: 1, ranks: [3], teachers: [sam],"
        "   teacher_resolution: {sam: 256}}]}]",
        "teachers.2.resolution_mode=match",
    )
    assert [P.stage_at(cfg, s) for s in range(7)] == [0, 0, 1, 1, 1, 1, 1]
    assert P.loss_scales(cfg, 0, 4) == {t: 1.0 for t in ("clip", "siglip", "dino_v2", "sam")}
    assert P.loss_scales(cfg, 1, 4) == {"clip": 4 / 3, "siglip": 4 / 3, "dino_v2": 4 / 3, "sam": 1.0}
    assert [p.name for p in P.rank_partitions(cfg, 1, 3, 4)] == ["hi"]
    assert [p.name for p in P.rank_partitions(cfg, 1, 0, 4)] == ["lo"]
    lo, hi = cfg.stages[1].partitions
    assert P.teacher_resolution(cfg, lo, "dino_v2", 56, 14, 16) == 56  # match: 64 * 14 / 16
    assert P.teacher_resolution(cfg, lo, "clip", 56, 14, 16) == 56  # native
    assert P.teacher_resolution(cfg, hi, "sam", 128, 16, 16) == 256
    with pytest.raises(ValueError, match="multiple of the teacher's patch size 14"):
        P.teacher_resolution(cfg, hi, "sam", 128, 14, 16)


def test_metrics_merge_and_csv(tmp_path):
    a = {"loss": 1.0, "images_per_s": 10.0, "peak_mem_mb": 5.0, "skipped_images": 1, "p/t/features": 0.5}
    b = {"loss": 3.0, "images_per_s": 30.0, "peak_mem_mb": 7.0, "skipped_images": 2}
    m = combine_rank_metrics([a, b])
    assert m["loss"] == 2.0 and m["images_per_s"] == 40.0 and m["peak_mem_mb"] == 7.0 and m["skipped_images"] == 3
    assert m["p/t/features"] == 0.5  # averaged over the ranks that computed it
    assert m["images_per_s/rank1"] == 30.0
    cfg = _cfg(tmp_path)
    log = MetricsLogger(tmp_path, cfg)
    log.log({"step": 1, "loss": 0.25, "low/sam/features": 0.5, "not/a/column": 9})
    log.flush()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert rows[0]["loss"] == "0.25" and rows[0]["low/sam/features"] == "0.5"
    assert "high/clip/summary" in rows[0] and "not/a/column" not in rows[0]


def test_fault_injection_spec(monkeypatch, tmp_path):
    monkeypatch.setenv(FAULT_ENV, "three:1:x")
    with pytest.raises(ValueError, match="STEP:RANK:MARKER"):
        maybe_inject_fault(3, 1)
    marker = tmp_path / "killed"
    marker.touch()  # already killed once: the restarted worker runs on
    monkeypatch.setenv(FAULT_ENV, f"3:1:{marker}")
    maybe_inject_fault(3, 1)
    maybe_inject_fault(2, 1)  # other steps and ranks are never touched
    monkeypatch.delenv(FAULT_ENV)
    maybe_inject_fault(3, 1)


def test_runtime_single_process():
    net = nn.Linear(2, 2)
    assert wrap_model(net, DistEnv()) is net
    seed_everything(5)
    a = torch.rand(3)
    seed_everything(5)
    assert torch.equal(a, torch.rand(3))


def test_streams_resume_mid_epoch(tmp_path, train_image_dir):
    from openradio.distill.streams import PartitionStreams

    cfg = _cfg(tmp_path, f"data.path={train_image_dir}")
    part = cfg.stages[0].partitions[0]
    s = PartitionStreams(cfg, rank=0, world_size=1)
    for _ in range(3):
        s.next_batch(0, part)
    state = s.state_dict()
    want = [s.next_batch(0, part) for _ in range(3)]
    r = PartitionStreams(cfg, rank=0, world_size=1)
    r.load_state_dict(state)
    got = [r.next_batch(0, part) for _ in range(3)]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_teacher_weights_apply_once(tmp_path, train_image_dir):
    """The step's loss is sum over teachers of weight x loss (weights from the config, applied once:
    a weight of 2 doubles a teacher's term, it does not square it)."""
    from openradio.distill.trainer import DistEnv as Env
    from openradio.distill.trainer import Trainer

    cfg = _cfg(
        tmp_path,
        f"data.path={train_image_dir}",
        "progress=false",
        "stages.0.partitions=[{name: p, resolution: 64, batch_size: 2}]",
        "teachers.2.feature_weight=2.0",
        "teachers.0.summary_weight=0.5",
    )
    t = Trainer(cfg, env=Env())
    m = t.train_step()
    weights = {t_.name: (t_.summary_weight, t_.feature_weight) for t_ in cfg.teachers}
    expected = 0.0
    for name, (ws, wf) in weights.items():
        expected += ws * m.get(f"p/{name}/summary", 0.0) + wf * m[f"p/{name}/features"]
    assert "p/sam/summary" not in m  # SAM's summary weight is 0: no term at all
    assert math.isclose(m["loss"], expected, rel_tol=1e-5), (m["loss"], expected)
