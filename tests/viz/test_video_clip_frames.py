"""`openradio viz-video --clip-frames T`: the frames of one clip share one CPE viewport."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import openradio
from openradio.model.video import forward_frames, pad_to_clips
from openradio.viz import read_video_frames, visualize_video, write_video

pytest.importorskip("av")


def _still_video(path, n: int = 6, size: int = 64):
    """n identical frames, stored losslessly (crf 0): decoded, every frame is the same."""
    g = np.random.default_rng(0)
    frame = g.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    write_video(path, np.repeat(frame, n, axis=0), fps=10, crf=0)
    return path


def _training_model(tiny_checkpoint):
    """A model whose positions are a random crop of the grid per sample (training mode, no
    position dropout): frames that share a viewport give equal features, others do not."""
    torch.manual_seed(0)
    m = openradio.radio_model(str(tiny_checkpoint)).train()
    m.patch_generator.pos_dropout = 0.0
    return m


def test_frames_of_one_clip_share_the_viewport_in_viz_video(tiny_checkpoint, tmp_path):
    src = _still_video(tmp_path / "still.mp4")
    assert len({f.tobytes() for f in read_video_frames(src).frames.numpy()}) == 1
    model = _training_model(tiny_checkpoint)
    kw = dict(resolution=64, batch_size=3, num_key_frames=6, crf=0, progress=False)
    clips = read_video_frames(visualize_video(model, src, tmp_path / "clips.mp4", clip_frames=2, **kw).path).frames
    frames = read_video_frames(visualize_video(model, src, tmp_path / "frames.mp4", **kw).path).frames
    assert len(clips) == len(frames) == 6
    for j in (0, 2, 4):  # one clip: one viewport, so one picture (batch 3 was rounded up to whole clips)
        assert torch.equal(clips[j], clips[j + 1]), j
    assert not torch.equal(clips[1], clips[2]) and not torch.equal(clips[3], clips[4])  # a new clip, a new crop
    assert not torch.equal(frames[0], frames[1])  # frame by frame, every frame has its own crop


def test_forward_frames_groups_clips_and_pads_the_last(tiny_checkpoint):
    model = _training_model(tiny_checkpoint)
    frame = torch.rand(1, 3, 32, 48)
    video = frame.expand(5, -1, -1, -1)
    padded, n = pad_to_clips(video, 2)
    assert padded.shape[0] == 6 and n == 5 and torch.equal(padded[5], padded[4])
    with torch.no_grad():
        out = forward_frames(model, padded, clip_frames=2)
    f = out.features
    assert f.shape[0] == 6
    assert torch.equal(f[0], f[1]) and torch.equal(f[2], f[3]) and not torch.equal(f[1], f[2])
    with pytest.raises(ValueError, match="do not split into clips of 2"):
        forward_frames(model, video, clip_frames=2)
    with pytest.raises(ValueError, match="no temporal"):
        forward_frames(model, padded, clip_frames=2, temporal=True)
    # eval: the viewport is the full grid for every frame, so clips change nothing (as officially)
    model.eval()
    with torch.no_grad():
        assert torch.equal(forward_frames(model, padded, clip_frames=2).features, model(padded).features)


def test_viz_video_clip_frames_flag(tiny_checkpoint, tmp_path, capsys):
    from openradio.cli import main

    src = _still_video(tmp_path / "in.mp4", n=5)
    rc = main(
        [
            "viz-video",
            str(src),
            "--version",
            str(tiny_checkpoint),
            "--resolution",
            "64",
            "--clip-frames",
            "2",
            "--out",
            str(tmp_path / "o.mp4"),
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "one CPE viewport per clip" in out and "5 frames" in out
    assert (
        main(
            [
                "viz-video",
                str(src),
                "--version",
                str(tiny_checkpoint),
                "--clip-frames",
                "0",
                "--out",
                str(tmp_path / "o2.mp4"),
            ]
        )
        != 0
    )
    assert "--clip-frames must be >= 1" in capsys.readouterr().err


def test_viz_video_runs_clips_temporally_packed(tmp_path, capsys):
    """On a model with a video projection of T frames, --clip-frames T runs each clip as one token
    grid: its T frames get one feature map (one picture), whatever the frames hold."""
    from openradio.cli import main
    from openradio.verify.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "v.pth.tar", embed_dim=32, depth=2, video_temporal_patch_size=2)
    g = np.random.default_rng(1)
    write_video(tmp_path / "moving.mp4", g.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8), fps=10, crf=0)
    rc = main(
        [
            "viz-video",
            str(tmp_path / "moving.mp4"),
            "--version",
            str(ckpt),
            "--resolution",
            "64",
            "--clip-frames",
            "2",
            "--crf",
            "0",
            "--out",
            str(tmp_path / "o.mp4"),
            "--no-progress",
        ]
    )
    assert rc == 0 and "temporally packed" in capsys.readouterr().out
    out = read_video_frames(tmp_path / "o.mp4").frames
    assert torch.equal(out[0], out[1]) and torch.equal(out[2], out[3]) and not torch.equal(out[1], out[2])
