"""PHI-S in the shape of the shipped recipes: a teacher resolution that enters in a later stage.

Each normaliser counts its own steps (batches it saw), is initialised from the batches of the step
that introduces it before its first loss, recomputes every ``update_every`` of its own steps,
freezes after ``freeze_after`` of them, and resumes exactly across the stage boundary.
"""

from __future__ import annotations

from pathlib import Path

import torch

from openradio.distill.config import load_config
from openradio.distill.phi_s import PhiSNormalizer
from openradio.distill.trainer import DistEnv, Trainer

REPO = Path(__file__).resolve().parents[2]
# stage 1: student 64 px, DINOv2 at 56 (grids line up); stage 2: student 128 px, DINOv2 at 112
TWO_STAGES = (
    "stages=[{steps: 6, partitions: [{name: a, resolution: 64, batch_size: 2, mosaic: [sam]}]},"
    " {steps: 6, partitions: [{name: b, resolution: 128, batch_size: 2}]}]"
)


def two_stage_cfg(out, data, *overrides):
    return load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"data.path={data}",
            f"out_dir={out}",
            "progress=false",
            "tensorboard=false",
            TWO_STAGES,
            "phi_s.update_every=2",
            "phi_s.freeze_after=4",
            "teachers.2.resolution_mode=match",
            *overrides,
        ],
    )


def test_new_normaliser_keeps_its_own_schedule(tmp_path, train_image_dir, monkeypatch):
    t = Trainer(two_stage_cfg(tmp_path / "run", train_image_dir, "checkpoint_every=100"), env=DistEnv())
    assert set(t.stage_phi_s_keys(0)) == {"clip@56", "siglip@56", "dino_v2@56", "sam@128"}
    assert "dino_v2@112" in t.stage_phi_s_keys(1) and "dino_v2@56" not in t.stage_phi_s_keys(1)
    names = {id(n): k for k, n in t.phi_s.items()}
    recomputes: list[tuple[int, str]] = []
    normalised: list[tuple[str, bool]] = []
    orig_recompute, orig_normalize = PhiSNormalizer.recompute, PhiSNormalizer.normalize

    def recompute(self):
        recomputes.append((t.step, names[id(self)]))
        return orig_recompute(self)

    def normalize(self, x, fmt="NLC"):
        normalised.append((names[id(self)], bool(self.initialized)))
        return orig_normalize(self, x, fmt)

    monkeypatch.setattr(PhiSNormalizer, "recompute", recompute)
    monkeypatch.setattr(PhiSNormalizer, "normalize", normalize)
    new = t.phi_s["dino_v2@112"]
    for _ in range(6):
        t.train_step()
    # stage 1 never touched the stage-2 normaliser
    assert int(new.steps) == 0 and not bool(new.initialized) and new.estimator.count == 0
    assert t.phi_s["dino_v2@56"].frozen and int(t.phi_s["dino_v2@56"].steps) == 4
    t.train_step()  # first step of stage 2: initialised from this step's batch, not frozen
    assert bool(new.initialized) and not new.frozen and int(new.steps) == 1
    for _ in range(5):
        t.train_step()
    # recomputed at its own steps 0 (global 6) and 2 (global 8); frozen after its own 4 steps
    assert [s for s, k in recomputes if k == "dino_v2@112"] == [6, 8]
    assert [s for s, k in recomputes if k == "dino_v2@56"] == [0, 2]
    assert new.frozen and int(new.steps) == 4 and new.estimator.count == 4 * 2 * 8 * 8
    # a stage-1 normaliser is not stepped in stage 2
    assert int(t.phi_s["dino_v2@56"].steps) == 4
    # every feature target of every step went through an initialised normaliser: 4 teachers x 12 steps
    assert len(normalised) == 4 * 12 and all(init for _, init in normalised)
    assert sum(k == "dino_v2@112" for k, _ in normalised) == 6


def test_resume_across_the_stage_boundary_is_exact(tmp_path, train_image_dir):
    common = ["checkpoint_every=3", "optim.warmup_steps=2"]
    a = Trainer(two_stage_cfg(tmp_path / "a", train_image_dir, *common), env=DistEnv())
    a.train()
    b = Trainer(two_stage_cfg(tmp_path / "b", train_image_dir, *common), env=DistEnv())
    b.train(max_steps=6)  # the last step of stage 1; the stage-2 normaliser is still empty
    assert not bool(b.phi_s["dino_v2@112"].initialized)
    c = Trainer(two_stage_cfg(tmp_path / "b", train_image_dir, *common), env=DistEnv())  # a new process
    c.train(max_steps=7)  # initialises the new normaliser, checkpoints mid-schedule
    d = Trainer(two_stage_cfg(tmp_path / "b", train_image_dir, *common), env=DistEnv())
    d.train()
    assert d.step == a.step == 12
    for name in ("student", "ema", "phi_s"):
        sa, sd = getattr(a, name).state_dict(), getattr(d, name).state_dict()
        assert list(sa) == list(sd)
        for k in sa:
            assert torch.equal(sa[k], sd[k]), f"{name}.{k}"
