"""The inference commands end to end: `features`, `versions` and `bench`, on a tiny checkpoint."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import openradio
from openradio.cli import main
from openradio.formats.features import read_features
from openradio.inputs.imageio import load_image
from openradio.viz.features import prepare_input


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs of different sizes and aspect ratios (PNG and JPEG) in one folder."""
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.astronaut()).save(d / "astronaut.png")  # 512 x 512
    Image.fromarray(data.coffee()).save(d / "coffee.jpg", quality=95)  # 400 x 600
    Image.fromarray(data.chelsea()[:, :200]).save(d / "chelsea.png")  # 300 x 200: portrait
    return d


def _direct(model, path, res, square=False):
    x = prepare_input(load_image(path), model, res, square=square)
    with torch.inference_mode():
        return x, model(x[None], feature_fmt="NCHW")


def test_features_with_adaptors_match_a_direct_model_call(tmp_path, photos, tiny_checkpoint, capsys):
    from PIL import Image

    # a second, mirrored astronaut with the same stem: same input shape, so it shares a batch
    other = tmp_path / "more" / "astronaut.png"
    other.parent.mkdir()
    Image.open(photos / "astronaut.png").transpose(Image.FLIP_LEFT_RIGHT).save(other)
    out = tmp_path / "sub" / "feats.safetensors"
    rc = main(
        [
            "features",
            str(photos),
            str(other),
            "--version",
            str(tiny_checkpoint),
            "--adaptor",
            "clip",
            "--adaptor",
            "sam",
            "--resolution",
            "64",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "wrote 4 image(s)" in capsys.readouterr().out
    feats, meta = read_features(out)
    assert set(feats) == {"astronaut", "astronaut_1", "coffee", "chelsea"}
    assert meta["images"]["astronaut_1"] == str(other)
    assert meta["feature_fmt"] == "NCHW" and meta["adaptors"] == ["clip", "sam"]
    assert meta["outputs"] == ["backbone", "clip", "sam"] and meta["version"] == str(tiny_checkpoint)

    model = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip", "sam"])
    p = model.patch_size
    shapes = set()
    for stem, path in [
        ("astronaut", photos / "astronaut.png"),
        ("astronaut_1", other),
        ("coffee", photos / "coffee.jpg"),
        ("chelsea", photos / "chelsea.png"),
    ]:
        x, ref = _direct(model, path, 64)
        H, W = x.shape[-2:]
        # aspect kept: shorter side 64, both sides multiples of the patch size
        assert min(H, W) == 64 and H % p == 0 and W % p == 0
        assert meta["resolution"][stem] == [H, W]
        shapes.add((H, W))
        for name in ("backbone", "clip", "sam"):
            stored = feats[stem][name]
            u = 1 if name == "backbone" else model.adaptors[name].upsample_factor
            assert stored["features"].shape == (1, ref[name].features.shape[1], H // p * u, W // p * u)
            assert stored["summary"].shape == ref[name].summary.shape
            assert stored["features"].dtype == torch.float32
            torch.testing.assert_close(stored["features"], ref[name].features.float(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(stored["summary"], ref[name].summary.float(), rtol=1e-4, atol=1e-5)
    assert len(shapes) == 3  # square, landscape and portrait inputs each kept their own shape
    # the mirrored copy really is a different image (not a duplicated entry)
    assert not torch.equal(feats["astronaut"]["backbone"]["features"], feats["astronaut_1"]["backbone"]["features"])


def test_features_backbone_only_square_and_default_resolution(tmp_path, photos, tiny_checkpoint, capsys):
    out = tmp_path / "sq.safetensors"
    rc = main(
        [
            "features",
            str(photos / "coffee.jpg"),
            str(photos / "chelsea.png"),
            "--version",
            str(tiny_checkpoint),
            "--square",
            "--resolution",
            "72",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    feats, meta = read_features(out)
    model = openradio.radio_model(str(tiny_checkpoint))
    for stem, ext in [("coffee", "jpg"), ("chelsea", "png")]:
        assert set(feats[stem]) == {"backbone"}
        # 72 rounds to the nearest multiple of 16 the model accepts
        assert meta["resolution"][stem] == list(model.get_nearest_supported_resolution(72, 72))
        x, ref = _direct(model, photos / f"{stem}.{ext}", 72, square=True)
        assert list(x.shape[-2:]) == meta["resolution"][stem]
        torch.testing.assert_close(feats[stem]["backbone"]["features"], ref.features, rtol=1e-4, atol=1e-5)
    # a file-loaded checkpoint has no preferred resolution: the default is 512 (shorter side)
    out2 = tmp_path / "default.safetensors"
    assert main(["features", str(photos / "chelsea.png"), "--version", str(tiny_checkpoint), "--out", str(out2)]) == 0
    _, meta2 = read_features(out2)
    assert min(meta2["resolution"]["chelsea"]) == 512


def test_features_corrupt_image_fails_before_loading_the_model(tmp_path, photos, tiny_checkpoint, capsys, monkeypatch):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    loads = []
    monkeypatch.setattr(openradio, "radio_model", lambda *a, **k: loads.append(a))
    out = tmp_path / "never.safetensors"
    rc = main(
        ["features", str(photos / "astronaut.png"), str(bad), "--version", str(tiny_checkpoint), "--out", str(out)]
    )
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and "broken.jpg" in err
    assert loads == [] and not out.exists()
    # a missing file and a bad adaptor name are one-line errors too
    assert main(["features", str(tmp_path / "nope.png"), "--version", "x", "--out", str(out)]) != 0
    assert "nope.png" in capsys.readouterr().err


def test_features_unknown_adaptor_is_a_one_line_error(tmp_path, photos, tiny_checkpoint, capsys):
    rc = main(
        [
            "features",
            str(photos / "astronaut.png"),
            "--version",
            str(tiny_checkpoint),
            "--adaptor",
            "dinov9",
            "--out",
            str(tmp_path / "f.safetensors"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "clip" in err  # names the known adaptors


def test_versions_json_and_cache_status(tmp_path, capsys, monkeypatch):
    from openradio.formats.resolve import cached_checkpoint_path
    from openradio.versions import VERSIONS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = cached_checkpoint_path("radio_v2.5-l")
    assert str(cached).startswith(str(tmp_path))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert main(["versions", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(records) == set(VERSIONS)
    b = records["radio_v2.5-b"]
    assert b["preferred_resolution"] == [768, 768] and b["patch_size"] == 16 and b["vitdet"] is True
    assert "siglip" in b["adaptors"] and b["cached"] is False
    assert records["radio_v2.5-l"]["cached"] is True
    assert records["radio_v2.5-g"]["patch_size"] == 14
    assert main(["versions"]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in VERSIONS) and "768x768" in table


def test_bench_prints_ratios_and_writes_finite_csv(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "bench.csv"
    rc = main(
        [
            "bench",
            "--version",
            str(tiny_checkpoint),
            "--resolutions",
            "64,96",
            "--batch-size",
            "2",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "speed ratio" in printed and "timm" in printed
    rows = list(csv.DictReader(open(out)))
    assert [(int(r["height"]), int(r["width"])) for r in rows] == [(64, 64), (96, 96)]
    for r in rows:
        vals = [
            float(r[k])
            for k in ("images_per_s", "latency_ms", "baseline_images_per_s", "baseline_latency_ms", "speed_ratio")
        ]
        assert all(math.isfinite(v) and v > 0 for v in vals)
        assert r["baseline"] == "timm" and r["mode"] == "global"
        assert int(r["timed_calls"]) == 2
        assert float(r["images_per_s"]) == pytest.approx(2 * 1000 / float(r["latency_ms"]))


def test_bench_vitdet_against_global_and_bad_flags(tiny_checkpoint, capsys):
    rc = main(
        [
            "bench",
            "--version",
            str(tiny_checkpoint),
            "--resolutions",
            "64",
            "--batch-size",
            "1",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--vitdet-window",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0 and "vitdet-2" in printed and "global" in printed
    assert main(["bench", "--version", str(tiny_checkpoint), "--baseline", "global"]) != 0
    assert "--vitdet-window" in capsys.readouterr().err
    assert main(["bench", "--version", str(tiny_checkpoint), "--resolutions", "64,abc"]) != 0
    assert main(["bench", "--version", str(tiny_checkpoint), "--iters", "0"]) != 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_features_upsample_gives_pixel_resolution_maps(tmp_path, photos, tiny_checkpoint, capsys):
    from openradio.dense.upsample import upsample_features

    out = tmp_path / "up.safetensors"
    argv = ["features", str(photos / "chelsea.png"), "--version", str(tiny_checkpoint), "--resolution", "64"]
    assert main([*argv, "--upsample", "bilateral", "--out", str(out)]) == 0, capsys.readouterr().err
    feats, meta = read_features(out)
    assert meta["upsample"] == "bilateral"
    model = openradio.radio_model(str(tiny_checkpoint))
    x, ref = _direct(model, photos / "chelsea.png", 64)
    f = feats["chelsea"]["backbone"]["features"]
    assert f.shape == (1, ref.features.shape[1], *x.shape[-2:])
    torch.testing.assert_close(f, upsample_features(ref.features, x[None], "bilateral"), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feats["chelsea"]["backbone"]["summary"], ref.summary, rtol=1e-4, atol=1e-5)


def test_features_amp_on_a_native_bf16_cpu_tracks_float32(tmp_path, photos, tiny_checkpoint, monkeypatch):
    from openradio import runtime
    from openradio.model.radio import RADIOModel

    held = []
    real = RADIOModel.set_compute_dtype
    monkeypatch.setattr(RADIOModel, "set_compute_dtype", lambda self, d: held.append(d) or real(self, d))
    argv = ["features", str(photos / "coffee.jpg"), "--version", str(tiny_checkpoint), "--resolution", "64"]
    assert main([*argv, "--out", str(tmp_path / "f32.safetensors")]) == 0
    assert main([*argv, "--amp", "--out", str(tmp_path / "amp.safetensors")]) == 0
    assert held == ([torch.bfloat16] if runtime.cpu_has_native_bf16() else [])
    a, _ = read_features(tmp_path / "f32.safetensors")
    b, meta = read_features(tmp_path / "amp.safetensors")
    assert meta["amp"] is True
    sa, sb = a["coffee"]["backbone"]["summary"], b["coffee"]["backbone"]["summary"]
    assert torch.nn.functional.cosine_similarity(sa, sb.float()).min() >= 0.999 and not torch.equal(sa, sb)
