"""`openradio extract --clip-frames T` (video frames in whole clips, one CPE viewport each) and
`--upsample` (feature maps at the input's pixel resolution)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import write_test_video

import openradio
from openradio.cli import main
from openradio.dense.upsample import upsample_features
from openradio.extract import mapper as mapper_module
from openradio.extract import read, read_features
from openradio.extract.engine import clip_ids
from openradio.extract.mapper import Mapper
from openradio.extract.sources import list_rows
from openradio.inputs.imageio import load_image

FAST = ["--resolution", "64", "--no-progress", "--workers", "0"]


def test_mapper_runs_a_clip_in_one_viewport(tiny_checkpoint):
    """In training mode every sample gets its own random crop of the position grid, unless it is
    in a clip: then the clip's frames share one. Identical frames make that visible."""
    torch.manual_seed(0)
    model = openradio.radio_model(str(tiny_checkpoint))
    m = Mapper(model, (), "none", torch.float32, torch.float32, 64, False, batch_size=4, clip_frames=2)
    m.model.train()  # Mapper puts the model in eval mode; positions are random crops only in training
    m.model.patch_generator.pos_dropout = 0.0
    frame = torch.rand(3, 64, 64)
    frames = [frame] * 5
    s = m(frames, clips=["a", "a", "b", "b", "c"])["summary"]
    assert np.array_equal(s[0], s[1]) and np.array_equal(s[2], s[3])  # one clip, one viewport
    assert not np.array_equal(s[1], s[2]) and not np.array_equal(s[3], s[4])  # a new clip, a new crop
    m1 = Mapper(model, (), "none", torch.float32, torch.float32, 64, False, batch_size=4)
    m1.model.train()
    s1 = m1(frames)["summary"]
    assert not np.array_equal(s1[0], s1[1])  # frame by frame: every frame its own crop


def test_clip_ids_follow_videos_and_parts(tmp_path):
    v = write_test_video(tmp_path / "a.mp4", frames=10, fps=5)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    rows = list_rows([str(img), str(v)], fps=5.0)
    assert [r.kind for r in rows] == ["file"] + ["video"] * 10
    ids = clip_ids(rows, 4, part_size=6)
    # the image is a clip of its own; frames 0-3 one clip, frame 4 ends at the part boundary (row 5)
    runs = [sum(1 for _ in g) for _, g in itertools.groupby(ids)]
    assert runs == [1, 4, 1, 3, 2]  # part 0: rows 0-5, part 1: rows 6-10 (frames 5-7 and 8-9)
    assert clip_ids(rows, 1, 6) is None


def test_extract_clip_frames_end_to_end(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    v = write_test_video(tmp_path / "talk.mp4", frames=10, fps=5)
    calls = []
    real = mapper_module.forward_frames

    def spy(model, x, clip_frames, **kw):
        calls.append((x.shape[0], clip_frames))
        return real(model, x, clip_frames, **kw)

    monkeypatch.setattr(mapper_module, "forward_frames", spy)
    base = ["--version", str(tiny_checkpoint), "--fps", "5", "--part-size", "6", *FAST]
    assert main(["extract", str(v), "--out", str(tmp_path / "clips"), "--clip-frames", "4", *base]) == 0
    # part 0: frames 0-3 and frame 4 padded to 4 -> 8 rows; part 1: frames 5-8 and frame 9 padded
    assert calls and all(t == 4 and n % 4 == 0 for n, t in calls)
    assert sum(n for n, _ in calls) == 16
    assert main(["extract", str(v), "--out", str(tmp_path / "frames"), *base]) == 0
    clips, frames = read(str(tmp_path / "clips")).to_pylist(), read(str(tmp_path / "frames")).to_pylist()
    assert [r["key"] for r in clips] == [r["key"] for r in frames] and len(clips) == 10
    assert all(r["status"] == "ok" for r in clips)
    # an eval-mode model shares positions anyway: the clips give the frames' numbers
    np.testing.assert_allclose(
        np.stack([r["summary"] for r in clips]), np.stack([r["summary"] for r in frames]), rtol=1e-5, atol=1e-5
    )
    man = json.loads((tmp_path / "clips" / "manifest.json").read_text())
    assert man["options"]["clip_frames"] == 4
    # another clip length is another output: resume refuses it
    capsys.readouterr()
    assert main(["extract", str(v), "--out", str(tmp_path / "clips"), "--clip-frames", "2", *base]) == 2
    assert "clip_frames" in capsys.readouterr().err
    assert main(["extract", str(v), "--out", str(tmp_path / "bad"), "--clip-frames", "0", *base]) == 2
    assert "clip_frames" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["bilinear", "bilateral"])
def test_extract_upsample_stores_pixel_resolution_maps(tiny_checkpoint, tmp_path, method):
    from PIL import Image

    rng = np.random.default_rng(0)
    src = tmp_path / "imgs"
    src.mkdir()
    for i, (w, h) in enumerate([(80, 48), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(src / f"{i}.png")
    out = tmp_path / method
    argv = ["extract", str(src), "--version", str(tiny_checkpoint), "--out", str(out), *FAST]
    argv += ["--features", "full", "--features-dtype", "float32", "--upsample", method]
    assert main(argv) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["options"]["upsample"] == method and man["part_size"] == 16
    model = openradio.radio_model(str(tiny_checkpoint)).eval()
    m = Mapper(model, (), "full", torch.float32, torch.float32, 64, False)
    feats = read_features(str(out), 0)
    for row in read(str(out)).to_pylist():
        f = feats[f"{row['key']}/backbone"]
        assert f.shape == (64, row["input_height"], row["input_width"])
        x = m.resize(load_image(src / row["key"]))
        with torch.inference_mode():
            tokens = model(x[None], feature_fmt="NCHW").features
        want = upsample_features(tokens, x[None], method)[0]
        torch.testing.assert_close(f, want, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(f, torch.nn.functional.interpolate(tokens, size=f.shape[-2:], mode="nearest")[0])


def test_upsample_needs_full_features(tiny_checkpoint, tmp_path, capsys):
    argv = ["extract", str(tmp_path), "--version", str(tiny_checkpoint), "--out", str(tmp_path / "o"), *FAST]
    assert main([*argv, "--upsample", "bilinear"]) == 2
    err = capsys.readouterr().err
    assert "--features full" in err and len(err.strip().splitlines()) == 1


def test_ray_engine_refuses_clip_frames(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("ray")
    argv = ["extract", str(tmp_path), "--version", str(tiny_checkpoint), "--out", str(tmp_path / "o"), *FAST]
    assert main([*argv, "--engine", "ray", "--clip-frames", "4"]) == 2
    assert "use the local engine" in capsys.readouterr().err


def test_dtype_bfloat16_holds_bf16_weights_on_native_bf16_cpus(tiny_checkpoint, tmp_path):
    from openradio.runtime import cpu_has_native_bf16

    rng = np.random.default_rng(1)
    src = tmp_path / "imgs"
    src.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(src / f"{i}.png")
    base = ["extract", str(src), "--version", str(tiny_checkpoint), *FAST]
    assert main([*base, "--out", str(tmp_path / "f32")]) == 0
    assert main([*base, "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    opts = json.loads((tmp_path / "bf16" / "manifest.json").read_text())["options"]
    assert opts["dtype"] == "bfloat16"
    # bf16 weights where the CPU computes bf16 natively; elsewhere autocast over float32 weights
    assert opts.get("weights_dtype", "float32") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert "weights_dtype" not in json.loads((tmp_path / "f32" / "manifest.json").read_text())["options"]
    a = np.stack([r["summary"] for r in read(str(tmp_path / "f32")).to_pylist()])
    b = np.stack([r["summary"] for r in read(str(tmp_path / "bf16")).to_pylist()])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999 and not np.array_equal(a, b)
