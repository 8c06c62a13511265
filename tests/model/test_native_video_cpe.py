"""CPE video mode (``model.cpe_video_mode(t)``, one position viewport per clip) through the
.pth.tar, Hugging Face and transformers-native routes, in ``forward_images``/packing, and for
temporally packed clips."""

from __future__ import annotations

import pytest
import torch

import openradio
import openradio.model.packed as packed_mod
from openradio.formats.hf import save_hf
from openradio.verify.testing import make_tiny_checkpoint

torch.set_num_threads(1)
ROUTES = ["pth", "hf", "native"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("routes")
    ckpt = make_tiny_checkpoint(d / "t.pth.tar", embed_dim=32, depth=2, cpe_max_size=128)
    ref = openradio.radio_model(str(ckpt))
    out = {"pth": ckpt, "hf": save_hf(ref, d / "hf")}
    try:
        from openradio.formats.hf import save_transformers

        out["native"] = save_transformers(ref, d / "native")
    except ImportError:
        pass
    return out


def _training(source):
    m = openradio.radio_model(str(source)).train()
    m.patch_generator.pos_dropout = 0.0  # a crop per clip, never a dropped encoding
    return m


def _still(n=4, h=32, w=48):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(3)).expand(n, -1, -1, -1)


def _viewports_shared(f: torch.Tensor, t: int) -> None:
    """Identical frames: equal features within each clip of t, different across clips."""
    for j in range(0, f.shape[0], t):
        for i in range(j + 1, j + t):
            assert torch.equal(f[j], f[i]), (j, i)
    for j in range(t, f.shape[0], t):
        assert not torch.equal(f[j - 1], f[j]), j


@pytest.mark.parametrize("route", ROUTES)
def test_one_viewport_per_clip_on_every_route(route, sources):
    if route not in sources:
        pytest.skip("transformers with a native RadioModel is not installed")
    m = _training(sources[route])
    x = _still()
    with torch.no_grad():
        torch.manual_seed(0)
        with m.cpe_video_mode(2):
            clips = m(x).features
        alone = m(x).features
    _viewports_shared(clips, 2)
    assert not torch.equal(alone[0], alone[1])  # outside video mode every frame has its own crop
    # the same model through every route: the same random viewports give the same outputs
    ref = _training(sources["pth"])
    with torch.no_grad():
        torch.manual_seed(0)
        with ref.cpe_video_mode(2):
            assert torch.equal(ref(x).features, clips)
    # eval: positions are the full grid for every frame, so video mode changes nothing (as officially)
    m.eval()
    with torch.no_grad():
        with m.cpe_video_mode(2):
            in_mode = m(x).features
        assert torch.equal(in_mode, m(x).features)


@pytest.mark.parametrize("route", ROUTES)
def test_forward_images_keeps_a_clip_in_one_viewport(route, sources, monkeypatch):
    if route not in sources:
        pytest.skip("transformers with a native RadioModel is not installed")
    m = _training(sources[route])
    frames = list(_still(6, 32, 32)[:4]) + list(_still(2, 48, 32))  # two clips of 32x32, one of 48x32
    with torch.no_grad(), m.cpe_video_mode(2):
        outs = m.forward_images(frames)
    assert [o.features.shape[1] for o in outs] == [4, 4, 4, 4, 6, 6]
    _viewports_shared(torch.cat([o.features for o in outs[:4]]), 2)
    assert torch.equal(outs[4].features, outs[5].features)
    with torch.no_grad(), m.cpe_video_mode(2):
        with pytest.raises(ValueError, match="whole clips of 2 frames, got 3"):
            m.forward_images(frames[:3])
        with pytest.raises(ValueError, match="must share one size"):
            m.forward_images(frames[3:5])
    # eval packing: clips are never split across packs, and the outputs are those without video mode
    m.eval()
    packs = []
    real = packed_mod.PackedRunner
    monkeypatch.setattr(packed_mod, "PackedRunner", lambda seqs, *a: (packs.append(len(seqs)), real(seqs, *a))[1])
    frames = list(_still(2, 32, 32)) + list(_still(2, 48, 32)) + list(_still(2, 32, 32))  # 12, 14, 12 tokens
    with torch.no_grad():
        with m.cpe_video_mode(2):
            packed = m.forward_images(frames, max_tokens=40)
        assert packs == [2, 2, 2]  # 24 + 28 tokens would pass 40: one clip per pack
        plain = m.forward_images(frames, max_tokens=40)
    assert packs[3:] == [3, 3]  # frame by frame the packs split the middle clip
    for a, b in zip(packed, plain):
        assert (a.features - b.features).abs().max() <= 1e-6


def test_cpe_video_mode_groups_packed_clips_too(tmp_path):
    """On a temporally packed model a batch row is a clip: video mode t shares a viewport across
    t consecutive clips (the tubes of one clip always share one: they are one token grid)."""
    ckpt = make_tiny_checkpoint(
        tmp_path / "v.pth.tar", embed_dim=32, depth=2, cpe_max_size=128, video_temporal_patch_size=2
    )
    m = _training(ckpt)
    clips = _still(2).unsqueeze(0).expand(4, -1, -1, -1, -1)  # 4 identical clips of 2 frames
    with torch.no_grad():
        with m.cpe_video_mode(2):
            _viewports_shared(m(clips).features, 2)
        with pytest.raises(ValueError, match="multiple of 2"):
            with m.cpe_video_mode(2):
                m(clips[:3])
    with pytest.raises(ValueError, match="positive number of frames"):
        with m.cpe_video_mode(0):
            pass
