"""Rehearse every shipped recipe end to end, in its real shape, on a CPU in seconds.

The YAML under test is the shipped file (configs/radio_v2.5-*.yaml) plus command-line overrides
that only shrink it: teachers of the same architectures made tiny and random, a small student,
resolutions and batches scaled down, stages of 3 steps. Everything structural stays: the three
stages, the two partitions of the last one, the SAM mosaic, every teacher at every resolution,
PHI-S per teacher resolution (recomputed, then frozen), EMA, a checkpoint and a resume across a
stage boundary, export without teachers, reload with all four adaptors.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml

import openradio
from openradio.distill.config import load_config
from openradio.distill.trainer import DistEnv, Trainer

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.name for p in (REPO / "configs").glob("radio_*.yaml"))
assert RECIPES, "no shipped recipes found in configs/"
STEPS_PER_STAGE = 3
# student side per stage: 256 -> 432 -> 432 + 1024 becomes 32 -> 64 -> 64 + 128 (grids 2, 4, 4 + 8)
SCALE = {256: 32, 432: 64, 1024: 128}
BATCH = {128: 4, 64: 2, 8: 1}


def rehearsal_overrides(recipe: Path, out_dir: Path, data: Path) -> list[str]:
    """Overrides that shrink ``recipe`` for a CPU rehearsal without changing its structure."""
    raw = yaml.safe_load(recipe.read_text())
    ov = [
        f"data.path={data}",
        f"out_dir={out_dir}",
        "data.num_workers=0",
        "progress=false",
        "tensorboard=false",
        "student.model_kwargs={embed_dim: 48, depth: 2, num_heads: 2}",
        "student.cpe_max_size=256",
        "student.mlp_hidden_size=32",
        "phi_s.update_every=2",
        f"phi_s.freeze_after={STEPS_PER_STAGE}",
        "optim.warmup_steps=2",
        f"checkpoint_every={STEPS_PER_STAGE}",
        "log_every=1",
        "amp=false",
    ]
    for i, t in enumerate(raw["teachers"]):
        ov.append(f"teachers.{i}.tiny=true")
        # native sides 378 / 1024 -> the tiny teachers' 56 (4 x 4 tokens) / 128 (SAM, 8 x 8)
        ov += (
            [f"teachers.{i}.input_size=128", f"teachers.{i}.overrides={{img_size: 128}}"]
            if t["type"] == "sam"
            else [f"teachers.{i}.input_size=56"]
        )
    for s, stage in enumerate(raw["stages"]):
        ov.append(f"stages.{s}.steps={STEPS_PER_STAGE}")
        for p, part in enumerate(stage["partitions"]):
            ov.append(f"stages.{s}.partitions.{p}.resolution={SCALE[part['resolution']]}")
            ov.append(f"stages.{s}.partitions.{p}.batch_size={BATCH[part['batch_size']]}")
            if part.get("ranks") is not None:  # one process trains both partitions of the last stage
                ov.append(f"stages.{s}.partitions.{p}.ranks=null")
    return ov


def _offline(monkeypatch):
    """No network, no teacher construction: any attempt fails the test."""
    import openradio.teachers as teachers

    def refuse(*a, **k):
        raise AssertionError("export tried to build a teacher")

    def no_network(*a, **k):
        raise AssertionError("export tried to open a network connection")

    monkeypatch.setattr(teachers, "build_teacher", refuse)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def _compare_export(path: Path, trainer: Trainer, names: list[str]) -> None:
    """The export equals the run's EMA student, heads in raw teacher space."""
    model = openradio.radio_model(str(path), adaptor_names=names)
    assert sorted(model.adaptors.keys()) == sorted(names)
    ref = trainer.ema.eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        got, want = model(x, feature_fmt="NCHW"), ref(x, feature_fmt="NCHW")
    torch.testing.assert_close(got["backbone"].features, want["backbone"].features, rtol=0, atol=0)
    from openradio.distill.export import export_normalizer_key

    for n in names:
        key = export_normalizer_key(trainer.phi_s, n, trainer.teachers[n].input_size)
        raw = trainer.phi_s[key].denormalize(want[n].features.double(), "NCHW").float()
        torch.testing.assert_close(got[n].features, raw, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[n].summary, want[n].summary, rtol=0, atol=0)


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_rehearsal(recipe, tmp_path, train_image_dir, monkeypatch):
    path = REPO / "configs" / recipe
    run = tmp_path / "run"
    cfg = load_config(path, rehearsal_overrides(path, run, train_image_dir))
    shipped = load_config(path)
    # the structure under test is the shipped one
    assert len(cfg.stages) == len(shipped.stages) == 3
    assert [[p.name for p in s.partitions] for s in cfg.stages] == [
        [p.name for p in s.partitions] for s in shipped.stages
    ]
    assert [t.name for t in cfg.teachers] == [t.name for t in shipped.teachers] == ["clip", "siglip", "dino_v2", "sam"]
    assert any(p.mosaic for s in cfg.stages for p in s.partitions)

    first = Trainer(cfg, env=DistEnv())
    first.train(max_steps=STEPS_PER_STAGE)  # stage 1 only: checkpoint at the stage boundary
    stage1_keys = set(first.stage_phi_s_keys(0))
    assert all(first.phi_s[k].frozen for k in stage1_keys)
    assert not any(bool(first.phi_s[k].initialized) for k in first.phi_s.keys() if k not in stage1_keys)

    trainer = Trainer(cfg, env=DistEnv())  # a new process resumes in stage 2
    recomputes: dict[str, int] = {}
    from openradio.distill.phi_s import PhiSNormalizer

    orig = PhiSNormalizer.recompute
    names_of = {id(n): k for k, n in trainer.phi_s.items()}

    def counting(self):
        recomputes[names_of[id(self)]] = recomputes.get(names_of[id(self)], 0) + 1
        return orig(self)

    monkeypatch.setattr(PhiSNormalizer, "recompute", counting)
    last = trainer.train()
    monkeypatch.setattr(PhiSNormalizer, "recompute", orig)
    assert trainer.step == cfg.total_steps == 3 * STEPS_PER_STAGE
    assert torch.isfinite(torch.tensor(last["loss"]))
    # every teacher in every partition of the last stage, SAM through the mosaic in the low one
    for part in cfg.stages[2].partitions:
        for t in ("clip", "siglip", "dino_v2", "sam"):
            assert f"{part.name}/{t}/features" in last, (part.name, t)
    # every normaliser has statistics, was recomputed on its own schedule, and is frozen
    new_keys = set(trainer.phi_s.keys()) - stage1_keys
    assert new_keys and all(recomputes.get(k, 0) == 2 for k in new_keys), recomputes
    assert all(trainer.phi_s[k].frozen for k in trainer.phi_s.keys())

    # export with no teacher, no network; the run directory stays as it was
    _offline(monkeypatch)
    before = _snapshot(run)
    from openradio.cli import main

    out = tmp_path / "export.pth.tar"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert _snapshot(run) == before
    _compare_export(out, trainer, ["clip", "siglip", "dino_v2", "sam"])
    chk = torch.load(out, map_location="cpu", weights_only=False)
    assert {"args", "state_dict", "state_dict_ema"} <= set(chk)
    assert [t["name"] for t in chk["args"].teachers] == ["clip", "siglip", "dino_v2", "sam"]
