"""Teacher-feature cache: a run from the cache equals a run with live teachers (same seeds, no
augmentation), resumes, and a cache made for anything else is refused with a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openradio.distill.cache_build import build_cache
from openradio.distill.config import load_config
from openradio.distill.teacher_cache import TeacherCache
from openradio.distill.trainer import DistEnv, Trainer

REPO = Path(__file__).resolve().parents[2]
# The equality recipe: the tiny v2.5 recipe without mosaic (a live mosaic's views see each other;
# the cache stores each view alone), a partition that samples its side, a 'match' teacher, PHI-S
# recomputed every step, the student's CPE random crop and position dropout left on.
EQUAL = [
    "data.augment=false",
    "stages.0.steps=3",
    "stages.0.partitions.0.mosaic=[]",
    "stages.0.partitions.1.resolutions=[96, 128]",
    "teachers.2.resolution_mode=match",
    "phi_s.update_every=1",
    "phi_s.freeze_after=2",
    "checkpoint_every=2",
    "log_every=1",
    "progress=false",
    "tensorboard=false",
]
MOSAIC_ONLY = [
    "data.augment=false",
    "stages.0.steps=2",
    "progress=false",
    "tensorboard=false",
    "stages.0.partitions=[{name: low, resolution: 64, batch_size: 2, teachers: [sam], mosaic: [sam]}]",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Six bundled photographs as make-shards tars (two shards): samples keyed by __key__."""
    from openradio.distill.shards import write_shards
    from openradio.inputs.sample_data import write_sample_images

    d = tmp_path_factory.mktemp("tc")
    write_sample_images(d / "img", ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins"], max_side=160)
    write_shards(d / "img", d / "shards", max_count_per_shard=3, progress=False)
    return d / "shards"


def cfg_of(data, out, *overrides):
    return load_config(REPO / "configs" / "tiny.yaml", [f"data.path={data}", f"out_dir={out}", *EQUAL, *overrides])


@pytest.fixture(scope="module")
def caches(shards, tmp_path_factory):
    d = tmp_path_factory.mktemp("caches")
    cfg = cfg_of(shards, d / "unused")
    build_cache(cfg, d / "f32", dtype="float32", batch_size=4, max_count=4, progress=False)
    build_cache(cfg, d / "f16", batch_size=4, max_count=4, progress=False)
    return d


def run(cfg, max_steps=None) -> tuple[Trainer, list[float]]:
    t = Trainer(cfg, env=DistEnv())
    losses = []
    t.resume(quiet=True)
    while t.step < (max_steps or cfg.total_steps):
        losses.append(t.train_step()["loss"])
        if t.step % cfg.checkpoint_every == 0:
            t.save_checkpoint()
    return t, losses


def assert_states_close(a: Trainer, b: Trainer, rtol: float, atol: float) -> None:
    for name, (x, y) in {"student": (a.student, b.student), "ema": (a.ema, b.ema), "phi_s": (a.phi_s, b.phi_s)}.items():
        sa, sb = x.state_dict(), y.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=rtol, atol=atol, msg=lambda m: f"{name}.{k}: {m}")


def test_cached_run_equals_live_run_and_resumes(shards, caches, tmp_path):
    # live teachers, 3 steps (trainers run one after the other: they share the global RNG)
    live, live_losses = run(cfg_of(shards, tmp_path / "live"))
    # from the float32 cache: killed after the step-2 checkpoint, then resumed by a fresh trainer
    cached_cfg = cfg_of(shards, tmp_path / "cached", f"data.teacher_cache={caches / 'f32'}")
    first, losses = run(cached_cfg, max_steps=2)
    assert first.teachers["clip"].__class__.__name__ == "TeacherSpec"  # no teacher was built
    rest, more = run(cfg_of(shards, tmp_path / "cached", f"data.teacher_cache={caches / 'f32'}"))
    assert rest.step == 3 and len(losses + more) == 3
    torch.testing.assert_close(torch.tensor(losses + more), torch.tensor(live_losses), rtol=1e-5, atol=1e-6)
    assert_states_close(live, rest, rtol=1e-4, atol=5e-5)
    assert any(bool(n.initialized) for n in rest.phi_s.values())  # PHI-S came from the cached features
    assert live_losses[0] != live_losses[-1]  # it trained


def test_float16_cache_is_close(shards, caches, tmp_path):
    live, live_losses = run(cfg_of(shards, tmp_path / "live", "stages.0.steps=2"))
    half, half_losses = run(
        cfg_of(shards, tmp_path / "half", "stages.0.steps=2", f"data.teacher_cache={caches / 'f16'}")
    )
    # float16 targets: ~5e-4 relative rounding, through PHI-S and two Adam steps
    torch.testing.assert_close(torch.tensor(half_losses), torch.tensor(live_losses), rtol=1e-3, atol=1e-4)
    index = json.loads((caches / "f16" / "index.json").read_text())
    assert index["dtype"] == "float16" and index["total"] == 6
    assert sum(p.stat().st_size for p in (caches / "f16").glob("*.tar")) < 0.6 * sum(
        p.stat().st_size for p in (caches / "f32").glob("*.tar")
    )


def test_cache_holds_every_resolution_of_the_recipe(caches):
    index = json.loads((caches / "f32" / "index.json").read_text())
    got = {(e["teacher"], e["crop"], e["student"], e["teacher_res"]) for e in index["entries"]}
    assert ("dino_v2", 128, 96, 84) in got and ("dino_v2", 128, 128, 112) in got  # sampled sides, 'match'
    assert ("dino_v2", 64, 64, 56) in got and ("sam", 64, 64, 128) in got
    assert len(index["fingerprint"]) == 4 and all(len(h) == 64 for h in index["fingerprint"].values())
    assert sorted(k for s in index["shards"] for k in s["keys"]) == [f"{i:09d}" for i in range(6)]
    import webdataset as wds  # the shards are plain webdataset tars
    from safetensors.torch import load

    first = next(iter(wds.WebDataset(str(caches / "f32" / index["shards"][0]["name"]), shardshuffle=False)))
    assert first["key.txt"].decode() == index["shards"][0]["keys"][0]
    assert load(first["c128.safetensors"])["clip/96/56/features"].dtype == torch.float32


def test_mosaic_teacher_is_cached_per_view_alone(shards, tmp_path):
    """Cached mosaic targets: each view alone on the teacher's canvas. Not a live mosaic's (whose
    views see their neighbours), so no equality is claimed for mosaic partitions."""
    from openradio.distill.mosaic import pack_mosaic, unpack_features
    from openradio.distill.teachers import build_teachers

    cfg = load_config(
        REPO / "configs" / "tiny.yaml", [f"data.path={shards}", f"out_dir={tmp_path / 'r'}", *MOSAIC_ONLY]
    )
    build_cache(cfg, tmp_path / "c", dtype="float32", progress=False)
    cache = TeacherCache(tmp_path / "c")
    sam = build_teachers(cfg, torch.device("cpu"))["sam"]
    from openradio.distill.shards import ShardDataset
    from openradio.distill.transforms import ResizeCenterCrop

    views = [(it["key"], it["image"]) for it in ShardDataset(shards, ResizeCenterCrop(64), shuffle=False)][:2]
    x = torch.stack([v for _, v in views])
    _, got = cache.lookup([k for k, _ in views], "sam", 64, 64, 128, True)
    alone = [unpack_features(sam(c).features, lay) for c, lay in (pack_mosaic(x[i : i + 1], 128, 16) for i in range(2))]
    torch.testing.assert_close(got, torch.cat(alone), rtol=1e-5, atol=1e-5)
    canvas, layout = pack_mosaic(x, 128, 16)  # both views on one canvas, as live training does
    live = unpack_features(sam(canvas).features, layout)
    assert (live - got).abs().max() > 1e-3
    t, losses = run(
        load_config(
            REPO / "configs" / "tiny.yaml",
            [f"data.path={shards}", f"out_dir={tmp_path / 'r'}", *MOSAIC_ONLY, f"data.teacher_cache={tmp_path / 'c'}"],
        )
    )
    assert t.step == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_cache_refuses_other_teachers_data_and_augmentation(shards, caches, tmp_path):
    c = str(caches / "f32")
    with pytest.raises(ValueError, match=r"another 'siglip' teacher.*rebuild it"):
        Trainer(
            cfg_of(shards, tmp_path / "a", f"data.teacher_cache={c}", "teachers.1.overrides={embed_dim: 48}"),
            env=DistEnv(),
        )
    with pytest.raises(ValueError, match="of seed 0, this run's seed is 1"):  # random teachers: another seed
        Trainer(cfg_of(shards, tmp_path / "b", f"data.teacher_cache={c}", "seed=1"), env=DistEnv())
    with pytest.raises(
        ValueError, match="lacks clip at 56 px on 128 px crops resized to 144 px"
    ):  # a side the cache was not made for
        Trainer(
            cfg_of(shards, tmp_path / "c", f"data.teacher_cache={c}", "stages.0.partitions.1.resolutions=[144]"),
            env=DistEnv(),
        )
    other = tmp_path / "other"
    from openradio.inputs.sample_data import write_sample_images

    write_sample_images(other, ["astronaut", "chelsea"], max_side=96)
    with pytest.raises(ValueError, match="made from other data"):
        Trainer(cfg_of(other, tmp_path / "d", f"data.teacher_cache={c}"), env=DistEnv())
    with pytest.raises(ValueError, match=r"data\.augment=false"):
        load_config(REPO / "configs" / "tiny.yaml", [f"data.path={shards}", f"data.teacher_cache={c}"])
    cache = TeacherCache(c)
    with pytest.raises(KeyError, match="'no-such-image' is not in teacher cache"):
        cache.lookup(["no-such-image"], "clip", 64, 64, 56, False)
    with pytest.raises(FileNotFoundError, match="not a teacher cache"):
        TeacherCache(tmp_path)


def test_killed_cache_build_resumes_and_refuses_another_recipe(shards, tmp_path, monkeypatch):
    from openradio.distill import cache_build as tc

    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"data.path={shards}", *MOSAIC_ONLY])
    real = tc._ShardWriter.finish
    calls = []

    def dies_at_the_third(self, *a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing the third shard
        calls.append(self.name)
        return real(self, *a, **k)

    monkeypatch.setattr(tc._ShardWriter, "finish", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        build_cache(cfg, tmp_path / "c", max_count=2, progress=False)
    assert not list((tmp_path / "c").glob(".*partial*"))  # the unfinished shard was removed
    assert not (tmp_path / "c" / "index.json").exists() and (tmp_path / "c" / "cache-000001.json").exists()
    with pytest.raises(FileNotFoundError, match="unfinished: rerun the same command"):
        TeacherCache(tmp_path / "c")
    kept = (tmp_path / "c" / "cache-000000.tar").stat().st_ino
    monkeypatch.setattr(tc._ShardWriter, "finish", real)
    resumed, real_targets = [], tc._targets
    monkeypatch.setattr(tc, "_targets", lambda batch, *a, **k: resumed.extend(batch) or real_targets(batch, *a, **k))
    build_cache(cfg, tmp_path / "c", max_count=2, progress=False)
    assert len(resumed) == 2  # only the last shard's images went through the teacher again
    assert (tmp_path / "c" / "cache-000000.tar").stat().st_ino == kept
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert sorted(k for s in index["shards"] for k in s["keys"]) == [f"{i:09d}" for i in range(6)]
    other = load_config(REPO / "configs" / "tiny.yaml", [f"data.path={shards}", *MOSAIC_ONLY, "seed=3"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_cache(other, tmp_path / "c", progress=False)
    build_cache(other, tmp_path / "c", overwrite=True, progress=False)
    assert json.loads((tmp_path / "c" / "index.json").read_text())["identity"]["seed"] == 3


def test_cache_teachers_command_then_train_from_it(shards, tmp_path, capsys):
    """The commands of the README, on an image folder (keys: the images' relative paths)."""
    from openradio.cli import main
    from openradio.inputs.sample_data import write_sample_images

    write_sample_images(tmp_path / "img" / "sub", ["astronaut", "chelsea", "coffee"], max_side=96)
    out = tmp_path / "c"
    args = [
        "data",
        "cache-teachers",
        "--config",
        "tiny",
        "--data",
        str(tmp_path / "img"),
        "--out",
        str(out),
        "--no-progress",
        *MOSAIC_ONLY,
    ]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "cached 1 teacher targets for 3 images" in said and "data.teacher_cache=" in said
    index = json.loads((out / "index.json").read_text())
    assert sorted(index["shards"][0]["keys"]) == ["sub/astronaut.png", "sub/chelsea.png", "sub/coffee.png"]
    assert main(args) == 0 and "complete already" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                str(REPO / "configs" / "tiny.yaml"),
                f"data.path={tmp_path / 'img'}",
                *MOSAIC_ONLY,
                f"data.teacher_cache={out}",
                f"out_dir={tmp_path / 'run'}",
                "stages.0.steps=1",
            ]
        )
        == 0
    )
    assert "step 1/1" in capsys.readouterr().out
    assert main(["data", "cache-teachers", "--config", "no-such-recipe", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "recipe not found" in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            [
                "train",
                str(REPO / "configs" / "tiny.yaml"),
                f"data.path={tmp_path / 'img'}",
                f"data.teacher_cache={out}",
                "progress=false",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "data.augment=false" in err and len(err.strip().splitlines()) == 1


def test_cache_refuses_a_changed_weights_file(shards, tmp_path):
    from safetensors.torch import save_file

    from openradio.distill.teachers import build_teachers

    base = load_config(REPO / "configs" / "tiny.yaml", [f"data.path={shards}", *MOSAIC_ONLY])
    sam = build_teachers(base, torch.device("cpu"))["sam"]
    weights = tmp_path / "sam.safetensors"
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, weights)
    over = [f"data.path={shards}", f"out_dir={tmp_path / 'r'}", *MOSAIC_ONLY, f"teachers.3.weights={weights}"]
    cfg = load_config(REPO / "configs" / "tiny.yaml", over)
    build_cache(cfg, tmp_path / "c", progress=False)
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert not index["identity"]["teachers"]["sam"]["random_weights"]  # the seed no longer matters
    save_file({k: v.contiguous() + 1 for k, v in sam.state_dict().items()}, weights)  # same path, new weights
    with pytest.raises(ValueError, match="other 'sam' weights"):
        Trainer(
            load_config(REPO / "configs" / "tiny.yaml", over + [f"data.teacher_cache={tmp_path / 'c'}"]), env=DistEnv()
        )
