"""Feature visualisation: robust PCA colouring, figure layouts, video I/O and the viz commands."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

from openradio.inputs.imageio import tensor_to_uint8
from openradio.viz import (
    apply_pca,
    fit_pca_on_maps,
    get_robust_pca,
    key_frame_indices,
    model_grid,
    pca_rgb,
    probe_video,
    read_video_frames,
    resolution_strip,
    side_by_side,
    visualize_image,
    visualize_video,
    write_video,
)

Out = namedtuple("Out", "summary features")


# ---------------------------------------------------------------------------------------------
# robust PCA


def _structured_features(seed: int, h: int = 32, w: int = 32, c: int = 64, noise: float = 0.01):
    """Features = a random orthogonal embedding of three smooth, uncorrelated patterns.

    The patterns have variances 9 : 4 : 1, so the principal axes are the patterns themselves,
    in that order; a channel offset checks the uncentred projection is normalised away.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    src = (
        torch.stack([torch.sin(2 * math.pi * xx), torch.cos(2 * math.pi * yy), torch.sin(2 * math.pi * (xx + yy))])
        .reshape(3, -1)
        .T
    )
    src = src - src.mean(0)
    q, _ = torch.linalg.qr(src)  # exactly uncorrelated patterns
    src = q * torch.tensor([3.0, 2.0, 1.0]) * math.sqrt(h * w)
    emb, _ = torch.linalg.qr(torch.randn(c, 3, generator=g))
    tokens = src @ emb.T + noise * torch.randn(h * w, c, generator=g) + 0.5 * torch.randn(c, generator=g)
    return tokens.T.reshape(1, c, h, w), src


def _abs_corr(colours: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return torch.corrcoef(torch.cat([colours.T, src.T]))[:3, 3:].abs()


@pytest.mark.parametrize("seed", [0, 1])
def test_pca_colouring_recovers_known_3d_structure(seed):
    fm, src = _structured_features(seed)
    rgb = pca_rgb(fm, (32, 32))
    assert rgb.shape == (32, 32, 3) and rgb.min() >= 0 and rgb.max() <= 1
    corr = _abs_corr(rgb.reshape(-1, 3), src)
    # each colour channel is one source pattern (up to sign), matched by the best correlation
    best = corr.max(dim=1)
    assert (best.values > 0.99).all(), corr
    assert sorted(best.indices.tolist()) == [0, 1, 2]
    # colours are RGB in order of explained variance: red = first component
    assert best.indices.tolist() == [0, 1, 2]
    # channels-last input gives the same colours
    assert torch.allclose(pca_rgb(fm[0].permute(1, 2, 0), (32, 32)), rgb, atol=1e-5)


def test_skip_drops_leading_components():
    fm, src = _structured_features(0)
    stats = get_robust_pca(fm, skip=1)
    colours = apply_pca(fm, stats)[0].reshape(-1, 3)
    corr = _abs_corr(colours, src)
    # with the first component skipped, red shows pattern 2 and green pattern 3
    assert corr[0, 1] > 0.99 and corr[1, 2] > 0.99


def test_pca_is_seeded_and_leaves_the_global_rng_alone():
    fm, _ = _structured_features(3, c=48)
    torch.manual_seed(123)
    a = get_robust_pca(fm)
    after = torch.rand(4)
    torch.manual_seed(123)
    expected = torch.rand(4)
    assert torch.equal(after, expected)  # the fit consumed nothing from the caller's stream
    b = get_robust_pca(fm)
    assert torch.equal(a.projection, b.projection) and torch.equal(a.low, b.low)
    # fix_signs makes each component's largest loading positive
    v = a.projection
    assert (v[v.abs().argmax(0), torch.arange(3)] > 0).all()


def test_robust_range_is_not_washed_out_by_outlier_tokens():
    fm, src = _structured_features(0)
    c = fm.shape[1]
    tokens = fm[0].reshape(c, -1).T.clone()
    # four artefact tokens far out along the first pattern's axis: the principal axes stay the
    # same, only the range of the first colour channel is at stake
    axis = torch.linalg.lstsq(src - src.mean(0), tokens - tokens.mean(0)).solution[0]
    tokens[:4] += 100.0 * axis
    robust = apply_pca(tokens, get_robust_pca(tokens))[4:, 0]
    plain = apply_pca(tokens, get_robust_pca(tokens, m=1e9))[4:, 0]  # m huge = plain min/max
    # robust: the ordinary tokens span the red range and still show the pattern
    assert robust.std() > 0.2
    assert _abs_corr(apply_pca(tokens, get_robust_pca(tokens))[4:], src[4:])[0, 0] > 0.98
    # plain min/max: four tokens squash everyone else into a sliver of red
    assert plain.std() < 0.05


def test_apply_pca_shapes_and_channel_check():
    fm, _ = _structured_features(0, c=16)
    stats = get_robust_pca(fm)
    batch = torch.cat([fm, fm.flip(-1)])
    assert apply_pca(batch, stats).shape == (2, 32, 32, 3)
    assert apply_pca(fm[0].permute(1, 2, 0), stats).shape == (32, 32, 3)
    assert apply_pca(fm[0].reshape(16, -1).T, stats).shape == (32 * 32, 3)
    with pytest.raises(ValueError, match="16"):
        apply_pca(torch.randn(1, 8, 4, 4), stats)
    with pytest.raises(ValueError, match="at least"):
        get_robust_pca(torch.randn(10, 2))
    with pytest.raises(ValueError, match="NaN"):
        get_robust_pca(torch.full((10, 8), float("nan")))
    with pytest.raises(ValueError, match="batch"):
        pca_rgb(batch, (32, 32))


def test_constant_features_do_not_crash():
    rgb = pca_rgb(torch.ones(1, 8, 6, 6), (12, 12))
    assert torch.isfinite(rgb).all() and rgb.shape == (12, 12, 3)


def test_shared_pca_over_maps_matches_a_single_map():
    fm, _ = _structured_features(0)
    one = apply_pca(fm, get_robust_pca(fm))
    shared = apply_pca(fm, fit_pca_on_maps([fm, fm]))
    assert (one - shared).abs().max() < 1e-3
    with pytest.raises(ValueError, match="channel"):
        fit_pca_on_maps([fm, torch.randn(1, 8, 4, 4)])


# ---------------------------------------------------------------------------------------------
# figure layouts


def test_side_by_side_is_two_panels_with_the_exact_input():
    img = torch.rand(3, 40, 56)
    rgb = torch.rand(40, 56, 3)
    fig = side_by_side(img, rgb)
    assert fig.image.size == (112, 40)
    arr = np.asarray(fig.image)
    np.testing.assert_array_equal(arr[:, :56], tensor_to_uint8(img))
    np.testing.assert_array_equal(arr[:, 56:], tensor_to_uint8(rgb))
    assert [p.kind for p in fig.panels] == ["image", "features"]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_resolution_strip_has_one_panel_per_resolution(n):
    maps = [(256 * (i + 1), torch.rand(16 * (i + 1), 24 * (i + 1), 3)) for i in range(n)]
    fig = resolution_strip(torch.rand(3, 64, 96), maps, panel_height=60, gap=4)
    feats = fig.panels_of("features")
    assert len(feats) == n
    assert [p.label for p in feats] == [f"{256 * (i + 1)} px" for i in range(n)]
    assert all(p.size == (60, 90) for p in fig.panels)  # common display size, aspect of the maps
    assert fig.image.size[0] == (n + 1) * 90 + n * 4  # input + n panels + gaps
    # without the input the strip is exactly the resolution panels
    fig2 = resolution_strip(None, maps, panel_height=60, gap=4)
    assert len(fig2.panels) == n and fig2.image.size[0] == n * 90 + (n - 1) * 4
    # panels do not overlap and sit left to right in the given order
    lefts = [p.box[0] for p in feats]
    assert lefts == sorted(lefts) and all(b.box[0] >= a.box[2] for a, b in zip(feats, feats[1:]))


def test_model_grid_rows_are_models_and_columns_resolutions():
    rows = [(name, [(r, torch.rand(8, 8, 3)) for r in (256, 512)]) for name in ("model-a", "model-b", "model-c")]
    fig = model_grid(torch.rand(3, 32, 32), rows, panel_height=32)
    feats = fig.panels_of("features")
    assert len(feats) == 6
    assert {p.row for p in feats} == {0, 1, 2} and {p.col for p in feats} == {1, 2}
    assert len(fig.panels_of("image")) == 3
    # the label band pushes panels right of x=0; rows stack downward
    assert min(p.box[0] for p in fig.panels) > 0
    tops = sorted({p.box[1] for p in fig.panels})
    assert len(tops) == 3 and fig.image.size[1] >= tops[-1] + 32


# ---------------------------------------------------------------------------------------------
# a stand-in model: patch-wise linear features, enough to drive the pipeline


class PatchModel(nn.Module):
    """16-px patches -> 8 channels; the API surface the visualisation uses."""

    patch_size = 16
    min_resolution_step = 16
    preferred_resolution = None

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 8, 16, 16)
        self.calls: list[tuple] = []

    def get_nearest_supported_resolution(self, h, w):
        return (max(round(h / 16) * 16, 16), max(round(w / 16) * 16, 16))

    def forward(self, x, feature_fmt="NLC"):
        assert x.shape[-1] % 16 == 0 and x.shape[-2] % 16 == 0, x.shape
        self.calls.append(tuple(x.shape))
        f = self.embed(x)
        return Out(f.mean((2, 3)), f if feature_fmt == "NCHW" else f.flatten(2).transpose(1, 2))


def test_visualize_image_resizes_to_a_supported_size():
    model = PatchModel()
    img = torch.rand(3, 90, 130)
    fi = visualize_image(model, img, resolution=100)
    # shorter side 100 -> 96 (nearest multiple of 16); 130*96/90 = 138.7 -> 144
    assert fi.image.shape == (3, 96, 144)
    assert fi.features.shape == (1, 8, 6, 9)
    assert fi.rgb.shape == (96, 144, 3)
    sq = visualize_image(model, img, resolution=64, square=True)
    assert sq.image.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="adaptor"):
        visualize_image(model, img, resolution=64, adaptor="clip")


# ---------------------------------------------------------------------------------------------
# video


def _moving_square_frames(n: int = 24, h: int = 48, w: int = 64) -> np.ndarray:
    frames = np.zeros((n, h, w, 3), dtype=np.uint8)
    frames[..., 2] = 60
    for t in range(n):
        x0 = 2 * t % (w - 16)
        frames[t, 16:32, x0 : x0 + 16] = (230, 200, 30)
    return frames


def test_video_roundtrip_keeps_frame_count_and_size(tmp_path):
    frames = _moving_square_frames()
    path = write_video(tmp_path / "v.mp4", frames, fps=12, crf=10)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width, info.fps) == (24, 48, 64, 12)
    video = read_video_frames(path)
    assert video.frames.shape == (24, 48, 64, 3) and video.frames.dtype == torch.uint8
    # H.264 is lossy; at crf 10 the pictures are close
    err = np.abs(video.frames.numpy().astype(int) - frames.astype(int)).mean()
    assert err < 4, err
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"


def test_video_writer_pads_odd_sizes_and_rejects_bad_input(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, size=(3, 15, 21, 3), dtype=np.uint8)
    write_video(tmp_path / "odd.mp4", frames, fps=5)
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.height, info.width, info.num_frames) == (16, 22, 3)
    with pytest.raises(ValueError, match="T, H, W, 3"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "y.mp4", np.zeros((0, 8, 8, 3), dtype=np.uint8))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="junk.mp4"):
        probe_video(tmp_path / "junk.mp4")
    with pytest.raises(FileNotFoundError):
        probe_video(tmp_path / "missing.mp4")


def test_key_frames_are_evenly_spaced():
    k = key_frame_indices(100, 30)
    assert len(k) == 30 and k[0] == 0 and k[-1] == 99
    gaps = np.diff(k)
    assert gaps.min() >= 3 and gaps.max() <= 4
    assert key_frame_indices(10, 30) == list(range(10))
    assert key_frame_indices(1, 30) == [0]


def test_visualize_video_stable_colours_and_side_by_side(tmp_path):
    frames = _moving_square_frames(n=20)
    frames[10] = frames[0]  # the same picture at two times must get the same colours
    src = write_video(tmp_path / "in.mp4", frames, fps=10, crf=0)
    model = PatchModel()
    s = visualize_video(model, src, tmp_path / "out.mp4", resolution=32, batch_size=6, num_key_frames=5, progress=False)
    # 48x64 input -> shorter side 32 -> 32x43 -> sides rounded to 16: 32x48
    assert (s.num_frames, s.height, s.width) == (20, 32, 48)
    out = read_video_frames(tmp_path / "out.mp4").frames.numpy().astype(int)
    assert out.shape == (20, 32, 48, 3)
    assert np.abs(out[10] - out[0]).mean() < 3
    # 5 key frames, then 20 frames in batches of 6: 1 + 4 forward passes
    assert [c[0] for c in model.calls] == [5, 6, 6, 6, 2]
    sbs = visualize_video(
        model, src, tmp_path / "sbs.mp4", resolution=32, side_by_side=True, progress=False, max_frames=7
    )
    assert (sbs.num_frames, sbs.height, sbs.width) == (7, 32, 96)
    left = read_video_frames(tmp_path / "sbs.mp4").frames[:, :, :48].numpy().astype(int)
    # the left half is the resized input: its blue background is where the input's is
    assert abs(left[..., 2].mean() - frames[:7, ..., 2].mean()) < 8


# ---------------------------------------------------------------------------------------------
# the commands, end to end with a small random checkpoint


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """skimage's astronaut (512x512) and coffee (400x600) photographs saved as PNG files."""
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(d / f"{name}.png")
    return d


def test_viz_command_writes_side_by_side_strips_and_grid(tmp_path, photos, tiny_checkpoint, capsys):
    from PIL import Image

    from openradio.cli import main
    from openradio.inputs.imageio import load_image, resize_to_multiple
    from openradio.verify.testing import make_tiny_checkpoint

    other = make_tiny_checkpoint(tmp_path / "other.pth.tar", seed=1)
    out = tmp_path / "viz"
    rc = main(
        [
            "viz",
            str(photos / "astronaut.png"),
            str(photos / "coffee.png"),
            "--version",
            str(tiny_checkpoint),
            "--version",
            str(other),
            "--adaptor",
            "dino_v2",
            "--resolutions",
            "128,192,100",
            "--panel-height",
            "96",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "wrote 10 PNGs" in capsys.readouterr().out  # 4 sbs + 4 strips + 2 grids
    label = "tiny_radio"  # the fixture's file stem names the model
    for name in ("astronaut", "coffee"):
        src = load_image(photos / f"{name}.png")
        x = resize_to_multiple(src, 128, 16)  # first resolution, aspect kept, sides multiples of 16
        h, w = x.shape[-2:]
        sbs = np.asarray(Image.open(out / "sbs" / f"{name}__{label}.png").convert("RGB"))
        assert sbs.shape == (h, 2 * w, 3)  # two panels wide
        np.testing.assert_array_equal(sbs[:, :w], tensor_to_uint8(x))  # left: the resized input
        right = sbs[:, w:].astype(float)
        assert right.std() > 20  # right: a colour map, not a blank or a copy of the input
        assert np.abs(right - sbs[:, :w]).mean() > 20
        # strip: input + one panel per resolution (128, 192 and 100 -> 96 after rounding)
        strip = Image.open(out / "strip" / f"{name}__{label}.png")
        panel_w = round(w * 96 / h)
        assert strip.size[0] == 4 * panel_w + 3 * 4
        grid = Image.open(out / "grid" / f"{name}.png")
        assert grid.size[0] > strip.size[0] * 2 // 3 and grid.size[1] > 2 * 64  # two rows of 64-px panels
    assert (h, w) == (128, 192)  # coffee keeps its 2:3 aspect


def test_viz_command_reports_a_corrupt_image(tmp_path, photos, tiny_checkpoint, capsys):
    from openradio.cli import main

    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not the rest of a jpeg")
    rc = main(
        [
            "viz",
            str(photos / "astronaut.png"),
            str(bad),
            "--version",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "holiday.jpg" in err and "cannot read image" in err
    assert not (tmp_path / "o").exists()  # failed before writing anything
    rc = main(
        [
            "viz",
            str(photos / "astronaut.png"),
            "--version",
            str(tiny_checkpoint),
            "--resolutions",
            "512,abc",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "--resolutions" in capsys.readouterr().err


def test_viz_video_command_end_to_end(tmp_path, tiny_checkpoint, capsys):
    from openradio.cli import main

    src = write_video(tmp_path / "in.mp4", _moving_square_frames(n=12), fps=12)
    rc = main(
        [
            "viz-video",
            str(src),
            "--version",
            str(tiny_checkpoint),
            "--resolution",
            "64",
            "--batch-size",
            "5",
            "--side-by-side",
            "--out",
            str(tmp_path / "out.mp4"),
        ]
    )
    assert rc == 0
    info = probe_video(tmp_path / "out.mp4")
    # 48x64 frames -> shorter side 64 -> 64x85 -> 64x80 (multiples of 16); side by side doubles the width
    assert (info.num_frames, info.height, info.width) == (12, 64, 160)
    assert "12 frames" in capsys.readouterr().out
    rc = main(
        ["viz-video", str(tmp_path / "nope.mp4"), "--version", str(tiny_checkpoint), "--out", str(tmp_path / "x.mp4")]
    )
    assert rc == 2 and "nope.mp4" in capsys.readouterr().err
