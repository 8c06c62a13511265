"""Recipe options from the newer RADIO releases, each off by default: spectral reparametrisation
of the student, stochastic student resolution per step, mosaic padding in the teacher's mean colour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize

import openradio
from openradio.distill.config import TrainConfig, load_config
from openradio.distill.mosaic import pack_mosaic
from openradio.distill.student import apply_spectral_reparam, fold_spectral_reparam
from openradio.distill.trainer import DistEnv, Trainer

REPO = Path(__file__).resolve().parents[2]
ONE_PART = "stages.0.partitions=[{name: p, resolution: 64, batch_size: 2, mosaic: [sam]}]"


def _cfg(out, data, *overrides):
    return load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"data.path={data}",
            f"out_dir={out}",
            "progress=false",
            "tensorboard=false",
            "student.model_kwargs={embed_dim: 48, depth: 2, num_heads: 2}",
            *overrides,
        ],
    )


def test_options_are_off_by_default():
    cfg = TrainConfig()
    assert cfg.student.spectral_reparam is False and cfg.mosaic_pad == "zero"
    tiny = load_config(REPO / "configs" / "tiny.yaml")
    assert all(p.resolutions is None for s in tiny.stages for p in s.partitions)


def test_spectral_reparam_trains_and_export_folds_it(tmp_path, train_image_dir):
    from openradio.cli import main

    cfg = _cfg(
        tmp_path / "run",
        train_image_dir,
        ONE_PART,
        "student.spectral_reparam=true",
        "stages.0.steps=3",
        "ema_decay=0.5",
    )
    t = Trainer(cfg, env=DistEnv())
    blocks = [m for m in t.student.model.blocks.modules() if parametrize.is_parametrized(m, "weight")]
    assert len(blocks) == 4 * 2  # qkv, proj, fc1, fc2 in each of the 2 blocks
    # at initialisation the reparametrised weight is the plain one
    layer = t.student.model.blocks[0].attn.qkv
    t.student.eval()
    torch.testing.assert_close(layer.weight, layer.parametrizations.weight.original, rtol=1e-5, atol=1e-7)
    scale0 = layer.parametrizations.weight[0].scale.detach().clone()
    t.train()
    assert not torch.equal(layer.parametrizations.weight[0].scale, scale0)  # the scale is learned
    # export (from the run directory, no teachers): plain weights, same outputs as the EMA student
    out = tmp_path / "sr.pth.tar"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    chk = torch.load(out, map_location="cpu", weights_only=False)
    assert not any("parametrizations" in k for k in chk["state_dict_ema"])
    model = openradio.radio_model(str(out))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        got = model(x, feature_fmt="NCHW").features
        want = t.ema.eval()(x, feature_fmt="NCHW")["backbone"].features
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fold_spectral_reparam_keeps_the_function():
    import timm

    net = timm.create_model("vit_tiny_patch16_224", embed_dim=32, depth=1, num_heads=2, img_size=32, num_classes=0)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

    w = apply_spectral_reparam(Wrap(net))
    with torch.no_grad():  # move away from the initial point so the fold has something to do
        for m in w.model.blocks.modules():
            if parametrize.is_parametrized(m, "weight"):
                m.parametrizations.weight.original.mul_(1.7)
                m.parametrizations.weight[0].scale.add_(0.3)
    w.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = w.model(x)
        fold_spectral_reparam(w)
        after = w.model(x)
    assert not any(parametrize.is_parametrized(m) for m in w.modules())
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)


def test_stochastic_student_resolution(tmp_path, train_image_dir, monkeypatch):
    cfg = _cfg(
        tmp_path / "st",
        train_image_dir,
        "stages.0.steps=6",
        "teachers.2.resolution_mode=match",
        "stages.0.partitions=[{name: p, resolution: 64, batch_size: 2, mosaic: [sam], resolutions: [32, 48, 64]}]",
    )
    t = Trainer(cfg, env=DistEnv())
    sizes, teacher_sizes = [], []
    orig = t.student.forward
    monkeypatch.setattr(t.student, "forward", lambda x, *a, **k: (sizes.append(x.shape[-1]), orig(x, *a, **k))[1])
    dino = t.teachers["dino_v2"]
    orig_t = dino.forward
    monkeypatch.setattr(
        dino,
        "forward",
        lambda x, resolution=None: (teacher_sizes.append(resolution), orig_t(x, resolution=resolution))[1],
    )
    metrics = [t.train_step() for _ in range(6)]
    assert set(sizes) > {64} and set(sizes) <= {32, 48, 64}
    assert teacher_sizes == [s * 14 // 16 for s in sizes]  # the 'match' teacher follows the sampled side
    for m in metrics:  # every teacher, SAM through the mosaic, supervises every step
        assert {f"p/{n}/features" for n in ("clip", "siglip", "dino_v2", "sam")} <= set(m)
    assert set(t.phi_s.keys()) == {"clip@56", "siglip@56", "dino_v2@56", "sam@128"}  # one per teacher
    # the draw is a function of (seed, step): a second run draws the same sides
    t2 = Trainer(
        _cfg(
            tmp_path / "st2",
            train_image_dir,
            "stages.0.steps=6",
            "teachers.2.resolution_mode=match",
            "stages.0.partitions=[{name: p, resolution: 64, batch_size: 2, mosaic: [sam], resolutions: [32, 48, 64]}]",
        ),
        env=DistEnv(),
    )
    assert t2._student_resolution(0, t2.cfg.stages[0].partitions[0], 0) == sizes[0]
    with pytest.raises(ValueError, match="every size must be a multiple of 16"):
        Trainer(
            _cfg(
                tmp_path / "bad",
                train_image_dir,
                "stages.0.partitions=[{name: p, resolution: 64, batch_size: 2, resolutions: [40]}]",
            ),
            env=DistEnv(),
        )
    with pytest.raises(ValueError, match="resolutions"):
        _cfg(
            tmp_path / "bad2",
            train_image_dir,
            "stages.0.partitions=[{name: p, resolution: 64, batch_size: 2, resolutions: []}]",
        )


def test_mosaic_pad_is_zero_in_the_teachers_normalised_space(tmp_path, train_image_dir, monkeypatch):
    views = torch.rand(3, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406])
    canvases, layout = pack_mosaic(views, 128, 16, pad_value=mean)
    assert layout.num_canvases == 1
    empty = canvases[0, :, 64:, 64:]  # the fourth tile holds no view
    assert torch.equal(empty, mean.view(3, 1, 1).expand_as(empty))
    with pytest.raises(ValueError, match="one per channel"):
        pack_mosaic(views, 128, 16, pad_value=torch.zeros(2))

    seen = {}
    for pad in ("zero", "teacher_mean"):
        t = Trainer(
            _cfg(tmp_path / pad, train_image_dir, ONE_PART, f"mosaic_pad={pad}", "stages.0.partitions.0.batch_size=3"),
            env=DistEnv(),
        )
        sam = t.teachers["sam"]
        orig = sam.preprocess
        monkeypatch.setattr(sam, "preprocess", lambda x, r=None: seen.__setitem__(pad, orig(x, r)) or seen[pad])
        t.train_step()
        monkeypatch.undo()
    # pixels outside every view, after SAM's own input normalisation
    zero_pad, mean_pad = seen["zero"][0, :, 100:, 100:], seen["teacher_mean"][0, :, 100:, 100:]
    assert mean_pad.abs().max() < 1e-6
    assert zero_pad.abs().min() > 1.0  # black is far from zero in SAM's normalised space
