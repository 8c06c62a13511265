"""Tokens for VLMs: multi-layer features, pixel shuffle, ToMe-style merging."""

from __future__ import annotations

import pytest
import torch

import openradio
from openradio.model.vlm import merge_tokens, pixel_shuffle, pixel_unshuffle


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return openradio.radio_model(str(tiny_checkpoint), text_towers=False)


def test_layers_concat_and_mean(model):
    x = torch.rand(2, 3, 64, 96)
    D = model.embed_dim
    with torch.no_grad():
        final = model.vlm_tokens(x)
        ref = model(x)
        cat = model.vlm_tokens(x, layers=[1, -1])
        mean = model.vlm_tokens(x, layers=[1, -1], aggregate="mean")
        inter = model.forward_intermediates(x, indices=[1, 3], output_fmt="NLC", intermediates_only=True)
    assert final.tokens.shape == (2, 24, D) and final.grid == (4, 6)
    assert torch.equal(final.tokens, ref.features) and torch.equal(final.summary, ref.summary)
    assert cat.tokens.shape == (2, 24, 2 * D) and mean.tokens.shape == (2, 24, D)
    torch.testing.assert_close(cat.tokens, torch.cat(inter, dim=-1))
    torch.testing.assert_close(mean.tokens, (inter[0] + inter[1]) / 2)
    # positions: raster centres in patch units; every token is one patch
    assert final.positions[0, 0].tolist() == [0.5, 0.5] and final.positions[0, 7].tolist() == [1.5, 1.5]
    assert torch.equal(final.sizes, torch.ones(2, 24))


def test_pixel_shuffle_shapes_and_inverse(model):
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        out = model.vlm_tokens(x, layers=[-2, -1], compress="pixel_shuffle")
        plain = model.vlm_tokens(x, layers=[-2, -1])
    D = model.embed_dim
    assert out.tokens.shape == (1, 8, 4 * 2 * D) and out.grid == (2, 4)
    assert out.positions[0, 0].tolist() == [1.0, 1.0] and out.positions[0, 5].tolist() == [3.0, 3.0]
    assert torch.equal(out.sizes, torch.full((1, 8), 4.0))
    back, grid = pixel_unshuffle(out.tokens, out.grid, 2)
    assert grid == (4, 8) and torch.equal(back, plain.tokens)
    # by hand: token (0, 1) of the shuffled grid holds patches (0,2), (0,3), (1,2), (1,3) in that order
    t = plain.tokens.reshape(1, 4, 8, -1)
    expect = torch.cat([t[0, 0, 2], t[0, 0, 3], t[0, 1, 2], t[0, 1, 3]])
    assert torch.equal(out.tokens[0, 1], expect)
    r = torch.randn(3, 6 * 10, 5)
    s, g = pixel_shuffle(r, (6, 10), 2)
    assert torch.equal(pixel_unshuffle(s, g, 2)[0], r)
    with pytest.raises(ValueError, match="divisible by 2"):
        pixel_shuffle(torch.randn(1, 15, 4), (3, 5), 2)


def test_merge_keeps_weighted_mean(model):
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        plain = model.vlm_tokens(x)
        merged = model.vlm_tokens(x, compress="merge", num_tokens=7)
    assert merged.tokens.shape == (2, 7, model.embed_dim) and merged.grid is None
    assert torch.equal(merged.sizes.sum(1), torch.full((2,), 24.0))
    wmean = (merged.tokens * merged.sizes[..., None]).sum(1) / merged.sizes.sum(1, keepdim=True)
    torch.testing.assert_close(wmean, plain.tokens.mean(1), atol=1e-5, rtol=1e-5)
    cen = (merged.positions * merged.sizes[..., None]).sum(1) / 24
    torch.testing.assert_close(cen, plain.positions.mean(1))
    # with prior sizes, repeated merging, a budget of one token
    t, s = torch.randn(1, 50, 8), torch.rand(1, 50) + 0.5
    m, ms, _ = merge_tokens(t, 1, sizes=s)
    torch.testing.assert_close(m[0, 0], (t[0] * s[0, :, None]).sum(0) / s.sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ms.sum(), s.sum())
    # identical tokens merge first: two copies of each of 6 distinct tokens -> 6 tokens, sizes 2
    base = torch.randn(1, 6, 16)
    dup = base.repeat_interleave(2, dim=1)
    m, ms, _ = merge_tokens(dup, 6)
    assert torch.equal(ms, torch.full((1, 6), 2.0))
    assert torch.cdist(m[0], base[0]).min(dim=1).values.max() < 1e-5
    with pytest.raises(ValueError, match="num_tokens"):
        model.vlm_tokens(x, compress="merge")
