"""Joint bilateral upsampling: shapes, chunking, normalisation, and sharper edges than bilinear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from openradio.dense.upsample import joint_bilateral_upsample, upsample_features


def _edge_scene(H=64, W=96, p=16):
    """Two colours split by a diagonal edge that crosses the patch grid; features = each patch's
    share of the 'bright' side (what a 1/16 feature map of the scene holds)."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    bright = (xx + 0.6 * yy > 45).float()
    img = torch.stack([0.1 + 0.8 * bright, 0.2 + 0.5 * bright, 0.9 - 0.7 * bright])
    feats = F.avg_pool2d(bright[None, None], p)[0]  # (1, h, w)
    feats = torch.cat([feats, 1 - feats])  # (2, h, w)
    return img, feats, bright


def test_shapes_batches_and_chunks():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 4, 6)
    img = torch.rand(2, 3, 64, 96)
    out = joint_bilateral_upsample(f, img)
    assert out.shape == (2, 5, 64, 96)
    small = joint_bilateral_upsample(f, img, max_elements=5 * 96 * 3)  # a few rows per chunk
    torch.testing.assert_close(small, out, rtol=1e-6, atol=1e-6)
    one = joint_bilateral_upsample(f[1], img[1])
    torch.testing.assert_close(one, out[1], rtol=1e-6, atol=1e-6)
    assert upsample_features(f, img, "bilinear").shape == (2, 5, 64, 96)
    assert joint_bilateral_upsample(f, img, size=(32, 48)).shape == (2, 5, 32, 48)
    with pytest.raises(ValueError, match="unknown upsampling"):
        upsample_features(f, img, "nearest")


def test_weights_are_normalised_and_differentiable():
    img = torch.rand(1, 3, 48, 48)
    const = torch.full((1, 3, 3, 3), 2.5)
    torch.testing.assert_close(joint_bilateral_upsample(const, img), torch.full((1, 3, 48, 48), 2.5))
    f = torch.randn(1, 4, 3, 3, requires_grad=True)
    joint_bilateral_upsample(f, img).sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    # a pixel never goes outside the range of its neighbours' features
    g = torch.rand(1, 1, 3, 3)
    out = joint_bilateral_upsample(g, img)
    assert out.min() >= g.min() - 1e-6 and out.max() <= g.max() + 1e-6


def test_edges_sharper_than_bilinear():
    img, feats, bright = _edge_scene()
    bil = upsample_features(feats, img, "bilinear")
    jbu = upsample_features(feats, img, "bilateral")
    err = lambda up: (up.argmax(0) != (1 - bright).long()).float().mean().item()  # noqa: E731
    mae = lambda up: (up[0] - bright).abs().mean().item()  # noqa: E731
    assert err(jbu) < 0.5 * err(bil)
    assert mae(jbu) < 0.5 * mae(bil)
