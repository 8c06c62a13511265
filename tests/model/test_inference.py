"""Inference beyond the shared fixtures: ViTDet intermediates, other configurations, API details."""

from __future__ import annotations

import pytest
import torch

import openradio
from openradio.formats.official import load_checkpoint_file
from openradio.verify.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def deep_ckpt(tmp_path_factory):
    # 8 blocks -> ViTDet period 2: blocks 0, 2, 4, 6 windowed
    return make_tiny_checkpoint(tmp_path_factory.mktemp("deep") / "deep.pth.tar", depth=8, seed=1)


def test_vitdet_forward_intermediates_matches_forward(deep_ckpt):
    m = openradio.radio_model(str(deep_ckpt), vitdet_window_size=2)
    assert m.windowed_block_indices == [0, 2, 4, 6]
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        out = m(x, feature_fmt="NLC")
        final, inter = m.forward_intermediates(x, indices=[-1], output_fmt="NLC", return_prefix_tokens=True)
    assert torch.equal(inter[-1].features, out.features)
    assert torch.equal(inter[-1].summary, out.summary)
    assert torch.equal(final.features, out.features)
    # windowing really changes the result (not silently global)
    g = openradio.radio_model(str(deep_ckpt))
    with torch.no_grad():
        assert not torch.allclose(g(x).features, out.features, atol=1e-4)


def test_vitdet_intermediates_are_stateless(deep_ckpt):
    """Calling at another resolution first must not leave stale windows behind."""
    m = openradio.radio_model(str(deep_ckpt), vitdet_window_size=2)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = m.forward_intermediates(x, indices=[3, 7], output_fmt="NCHW", intermediates_only=True)
        m(torch.rand(1, 3, 128, 32))
        b = m.forward_intermediates(x, indices=[3, 7], output_fmt="NCHW", intermediates_only=True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_vitdet_dense_intermediates_match_manual_average(deep_ckpt):
    m = openradio.radio_model(str(deep_ckpt), vitdet_window_size=2)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        sparse = m.forward_intermediates(x, indices=list(range(8)), output_fmt="NLC", intermediates_only=True)
        dense = m.forward_intermediates(
            x, indices=[3, 7], output_fmt="NLC", intermediates_only=True, aggregation="dense", norm_alpha_scheme="none"
        )
    torch.testing.assert_close(dense[0], torch.stack(sparse[:4]).mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense[1], torch.stack(sparse[4:]).mean(0), rtol=1e-5, atol=1e-5)


def test_vitdet_equals_global_when_window_covers_image(deep_ckpt):
    """A single window spanning the whole grid differs from global attention only in that
    prefix tokens skip windowed blocks; check that rule explicitly via a manual computation."""
    m = openradio.radio_model(str(deep_ckpt), vitdet_window_size=4)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        got = m(x)
        xc = m.input_conditioner(x)
        t = m.patch_generator(xc)
        S = m.num_prefix_tokens
        for i, blk in enumerate(m.blocks):
            if i in m.windowed_block_indices:
                t = torch.cat([t[:, :S], blk(t[:, S:])], dim=1)
            else:
                t = blk(t)
    torch.testing.assert_close(got.features, t[:, S:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.summary, t[:, m.summary_idxs].flatten(1), rtol=1e-5, atol=1e-5)


def _manual_forward(m, x):
    """Reference forward written out with plain ops (global attention)."""
    xc = (x - m.input_conditioner.norm_mean) / m.input_conditioner.norm_std
    pg = m.patch_generator
    p = pg.patch_size
    B, C, H, W = x.shape
    h, w = H // p, W // p
    patches = xc.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C * p * p)
    tok = patches @ pg.embedder.weight.T
    R = pg.grid_size
    grid = pg.pos_embed.reshape(1, R, R, -1).permute(0, 3, 1, 2)
    side = max(h, w)
    pe = torch.nn.functional.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
    tok = tok + pe[:, :, :h, :w].flatten(2).transpose(1, 2)
    tok = torch.cat([pg.cls_token.token.expand(B, -1, -1), tok], 1)
    for blk in m.blocks:
        tok = blk(tok)
    return tok


@pytest.mark.parametrize(
    "overrides",
    [
        dict(embed_dim=96, num_heads=3, depth=3),  # other width / heads
        dict(register_multiple=16),  # 4 CLS + 12 registers
        dict(cpe_num_registers=2),  # explicit register count
        dict(cpe_max_size=256),  # 16 x 16 position grid
    ],
)
def test_other_configurations_match_manual_forward(tmp_path, overrides):
    path = make_tiny_checkpoint(tmp_path / "c.pth.tar", **overrides)
    m = openradio.radio_model(str(path))
    x = torch.rand(2, 3, 48, 80)
    with torch.no_grad():
        out = m(x)
        ref = _manual_forward(m, x)
    S = m.num_prefix_tokens
    torch.testing.assert_close(out.features, ref[:, S:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.summary, ref[:, [0, 1, 2]].flatten(1), rtol=1e-5, atol=1e-5)
    regs = overrides.get(
        "cpe_num_registers", (overrides.get("register_multiple", 8) - 4 % overrides.get("register_multiple", 8))
    )
    assert m.num_registers == regs and S == 4 + regs


def test_exact_grid_uses_parameter_untouched(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "g.pth.tar", cpe_max_size=128)  # 8 x 8 grid
    m = openradio.radio_model(str(path))
    assert m.patch_generator.grid_size == 8
    assert m.patch_generator.eval_position_encoding(8, 8) is m.patch_generator.pos_embed


def test_duplicate_teachers_and_token_slot(tmp_path):
    teachers = [
        dict(name="a", type="x", use_summary=False),
        dict(name="b", type="x"),
        dict(name="b", type="x", use_summary=False),
        dict(name="c", type="x", token_slot=0, use_summary=False),
        dict(name="a", type="x"),
    ]
    dims = {"a": (8, 8), "b": (8, 8), "c": (8, 8)}
    path = make_tiny_checkpoint(tmp_path / "d.pth.tar", teachers=teachers, head_dims=dims, heads_by_name=False)
    with pytest.raises(ValueError, match=r"Known names: \['a', 'b', 'b', 'c', 'a'\]"):
        openradio.radio_model(str(path), adaptor_names=["zzz"])
    m = openradio.radio_model(str(path), adaptor_names=["a", "b", "c"])
    # only the first teacher of each name counts: the second 'a' has a summary, the first not
    assert m.summary_idxs.tolist() == [1]
    assert m.num_cls_tokens == 3 and m.num_registers == 5
    assert m.adaptors["b"].head_idx == 1 and m.adaptors["c"].head_idx == 0
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        tokens = m.forward_tokens(m.input_conditioner(x))
    torch.testing.assert_close(out["c"].summary, m.adaptors["c"].head_mlp(tokens[:, 0]))
    torch.testing.assert_close(out["a"].summary, m.adaptors["a"].head_mlp(tokens[:, 0]))


def test_ema_weights_win(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "e.pth.tar", with_ema=True)
    chk = load_checkpoint_file(path)
    m = openradio.radio_model(str(path), adaptor_names=["clip"])
    want = chk["state_dict_ema"]["base_model.blocks.0.attn.qkv.weight"]
    assert torch.equal(m.blocks[0].attn.qkv.weight, want)
    assert not torch.equal(m.blocks[0].attn.qkv.weight, chk["state_dict"]["base_model.blocks.0.attn.qkv.weight"])
    assert torch.equal(m.adaptors["clip"].head_mlp.fc1.weight, chk["state_dict_ema"]["_heads.clip.fc1.weight"])


def test_bfloat16_checkpoint_dtypes(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "b.pth.tar", dtype=torch.bfloat16)
    m = openradio.radio_model(str(path), adaptor_names=["sam"])
    assert m.dtype == torch.bfloat16
    assert m.input_conditioner.norm_mean.dtype == torch.float32
    with torch.no_grad():
        out = m(torch.rand(1, 3, 32, 48), feature_fmt="NCHW")
        _, inter = m.forward_intermediates(torch.rand(1, 3, 32, 48), indices=2)
    assert out["backbone"].features.dtype == torch.bfloat16 and out["backbone"].summary.dtype == torch.bfloat16
    assert out["sam"].features.dtype == torch.float32 and out["sam"].summary.dtype == torch.float32
    # adaptor features are rounded to bf16 once before the float32 cast
    assert torch.equal(out["sam"].features, out["sam"].features.bfloat16().float())
    assert all(t.dtype == torch.bfloat16 for t in inter)


def test_upsampling_head_pixel_shuffle(tmp_path):
    teachers = [
        dict(name="clip", type="open_clip"),
        dict(name="sam", type="sam", fd_upsample_factor=3, use_summary=False),
    ]
    path = make_tiny_checkpoint(tmp_path / "u.pth.tar", teachers=teachers, head_dims={"clip": (8, 8), "sam": (None, 5)})
    m = openradio.radio_model(str(path), adaptor_names=["sam"])
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        nlc = m(x)["sam"].features
        nchw = m(x, feature_fmt="NCHW")["sam"].features
    assert nlc.shape == (1, 2 * 3 * 3 * 3, 5) and nchw.shape == (1, 5, 6, 9)
    # channel layout (u1 u2 c): token (i, j) of the coarse grid spreads over a 3x3 block
    torch.testing.assert_close(nchw.permute(0, 2, 3, 1).reshape(1, -1, 5), nlc)


def test_mlp_v1_heads_load_and_run(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "v1.pth.tar", mlp_version="v1", head_inner=2)
    chk = load_checkpoint_file(path)
    assert "_heads.clip.inner.1.0.weight" in chk["state_dict"]
    m = openradio.radio_model(str(path), adaptor_names=["clip", "dino_v2"])
    with torch.no_grad():
        x = torch.rand(1, 3, 32, 32)
        out = m(x)
        tokens = m.forward_tokens(m.input_conditioner(x))
    head = m.adaptors["clip"].head_mlp
    h = torch.relu(head.norm(head.fc1(tokens[:, 0])))
    for layer in head.inner:
        h = layer(h)
    torch.testing.assert_close(out["clip"].summary, head.fc2(h))
    assert out["clip"].summary.shape == (1, 32) and out["dino_v2"].features.shape == (1, 4, 48)
    assert len(m.adaptors["clip"].head_mlp.inner) == 2


def test_make_preprocessor_external(tiny_checkpoint):
    m = openradio.radio_model(str(tiny_checkpoint))
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        a = m(x)
        cond = m.make_preprocessor_external()
        b = m(cond(x))
    assert isinstance(m.input_conditioner, torch.nn.Identity)
    assert torch.equal(a.features, b.features) and torch.equal(a.summary, b.summary)


def test_training_mode_cpe_is_random_and_video_mode_shares_crops(tiny_checkpoint):
    m = openradio.radio_model(str(tiny_checkpoint))
    pg = m.patch_generator
    pg.train()
    pg.pos_dropout = 0.0
    a = pg.position_encoding(4, 3, 5)
    b = pg.position_encoding(4, 3, 5)
    assert a.shape == (4, 15, m.embed_dim) and not torch.equal(a, b)
    with pg.video_mode(2):
        v = pg.position_encoding(4, 3, 5)
    assert torch.equal(v[0], v[1]) and torch.equal(v[2], v[3]) and not torch.equal(v[1], v[2])
    pg.pos_dropout = 1.0
    assert torch.count_nonzero(pg.position_encoding(2, 3, 5)) == 0
    pg.eval()
    assert torch.equal(pg.position_encoding(1, 3, 5), pg.position_encoding(1, 3, 5))


def test_resolution_errors_and_helpers(tiny_checkpoint):
    m = openradio.radio_model(str(tiny_checkpoint), vitdet_window_size=2)
    assert m.min_resolution_step == 32
    with pytest.raises(ValueError, match="get_nearest_supported_resolution"):
        m(torch.rand(1, 3, 48, 64))
    assert m.get_nearest_supported_resolution(48, 80) == (64, 64)  # 1.5 -> 2, 2.5 -> 2
    with pytest.raises(ValueError, match="Unsupported feature_fmt: nlc"):
        m(torch.rand(1, 3, 64, 64), feature_fmt="nlc")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        m(torch.rand(3, 64, 64))


def test_forward_intermediates_index_forms(tiny_checkpoint):
    m = openradio.radio_model(str(tiny_checkpoint))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a = m.forward_intermediates(x, indices=2, intermediates_only=True)
        b = m.forward_intermediates(x, indices=[-2, -1, 3], intermediates_only=True)
    assert len(a) == 2 and len(b) == 2
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match="out of range"):
        m.forward_intermediates(x, indices=[9])
