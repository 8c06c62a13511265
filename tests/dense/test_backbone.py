"""openradio.backbone / SimpleFeaturePyramid: shapes, strides, ViTDet, gradients, torchvision heads."""

from __future__ import annotations

import pytest
import torch

import openradio
from openradio.dense.backbone import RadioBackbone, dinov2_block_indices
from openradio.model.neck import SimpleFeaturePyramid


def _check(bb, H, W):
    out = bb(torch.rand(1, 3, H, W))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert bb.strides == {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
    for name, f in out.items():
        s = bb.strides[name]
        assert f.shape == (1, bb.out_channels, -(-H // s), -(-W // s)), name
    return out


@pytest.mark.parametrize("H,W", [(224, 224), (512, 512), (160, 256), (96, 100)])
def test_pyramid_shapes_and_strides(tiny_model, H, W):
    bb = openradio.backbone(tiny_model, out_channels=32).eval()
    with torch.no_grad():
        _check(bb, H, W)
    assert [f["reduction"] for f in bb.feature_info] == [4, 8, 16, 32, 64]
    assert all(f["num_chs"] == 32 for f in bb.feature_info)


def test_pyramid_vitdet_mode(tiny_model):
    bb = openradio.backbone(tiny_model, out_channels=16, vitdet_window=4).eval()
    with torch.no_grad():
        out = _check(bb, 128, 192)
        # the windowed run differs from the global one (the window is really used)
        glob = openradio.backbone(tiny_model, out_channels=16).eval()
        glob.neck.load_state_dict(bb.neck.state_dict())
        assert not torch.allclose(glob(torch.rand(1, 3, 128, 192))["2"], out["2"])
        # 96 is not a multiple of 16 * 4: padded inside, cropped back
        _check(bb, 96, 160)


def test_block_maps_match_forward_intermediates(tiny_model):
    bb = openradio.backbone(tiny_model, out_indices=[0, 1, 2, 3], pyramid=False).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        out = bb(x)
        want = tiny_model.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
    assert list(out) == ["block0", "block1", "block2", "block3"]
    for got, w in zip(out.values(), want):
        assert torch.equal(got, w)
    assert bb.out_channels == tiny_model.embed_dim and set(bb.strides.values()) == {16}


def test_multi_level_inputs(tiny_model):
    bb = openradio.backbone(tiny_model, out_indices=[0, 1, 2, 3], out_channels=8, extra_pool=False).eval()
    assert bb.neck.num_inputs == 4 and list(bb.strides) == ["0", "1", "2", "3"]
    with torch.no_grad():
        out = bb(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match="one per level"):
        SimpleFeaturePyramid(64, num_inputs=3)


def test_gradients_reach_backbone(tiny_model):
    bb = openradio.backbone(tiny_model, out_channels=16).train()
    assert not bb.model.patch_generator.training  # CPE jitter off by default
    out = bb(torch.rand(2, 3, 64, 64))
    sum(f.square().mean() for f in out.values()).backward()
    for name in (
        "model.model.patch_generator.embedder.weight",
        "model.model.blocks.0.attn.qkv.weight",
        "model.model.blocks.3.mlp.fc2.weight",
        "neck.stages.0.resample.0.weight",
    ):
        g = dict(bb.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_torchvision_fpn_consumes_output(tiny_model):
    from torchvision.ops import FeaturePyramidNetwork

    bb = openradio.backbone(tiny_model, out_channels=16).eval()
    fpn = FeaturePyramidNetwork([bb.channels[n] for n in bb.strides], out_channels=8)
    with torch.no_grad():
        feats = bb(torch.rand(1, 3, 64, 96))
        out = fpn(feats)
    assert list(out) == list(feats)
    assert all(o.shape[1] == 8 and o.shape[-2:] == f.shape[-2:] for o, f in zip(out.values(), feats.values()))


def test_faster_rcnn_train_step(tiny_model):
    from torchvision.models.detection import FasterRCNN

    torch.manual_seed(0)
    bb = openradio.backbone(tiny_model, out_channels=16)
    det = FasterRCNN(
        bb,
        num_classes=3,
        min_size=64,
        max_size=96,
        image_mean=[0.0] * 3,
        image_std=[1.0] * 3,
        rpn_batch_size_per_image=16,
        box_batch_size_per_image=16,
        representation_size=32,
    ).train()
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 8.0, 50.0, 60.0], [0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([2, 1])},
    ]
    losses = det(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert bb.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("route", ["hf", "transformers"])
def test_feature_info_same_across_formats(tiny_checkpoint, tmp_path, route):
    """.pth.tar, the Hugging Face layout and a transformers-native folder: the same dense interface."""
    a = openradio.radio_model(str(tiny_checkpoint), text_towers=False)
    if route == "hf":
        from openradio.formats.hf import save_hf

        folder = save_hf(a, tmp_path / "hf")
    else:
        pytest.importorskip("transformers")
        from openradio.formats.hf import save_transformers

        folder = save_transformers(a, tmp_path / "native")
    b = openradio.radio_model(str(folder), text_towers=False)
    assert a.feature_info == b.feature_info == [dict(module=f"blocks.{i}", num_chs=64, reduction=16) for i in range(4)]
    x = torch.rand(1, 3, 64, 64)
    ba = RadioBackbone(a, out_indices=2, pyramid=False).eval()
    bb = openradio.backbone(str(folder), out_indices=2, pyramid=False).eval()
    assert ba.feature_info == bb.feature_info
    with torch.no_grad():
        torch.testing.assert_close(ba(x)["block2"], bb(x)["block2"], rtol=1e-5, atol=1e-5)
        want = a.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        got = b.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_dinov2_block_indices():
    assert dinov2_block_indices(12) == [2, 5, 8, 11]
    assert dinov2_block_indices(24) == [4, 11, 17, 23]
    assert dinov2_block_indices(32) == [7, 15, 23, 31]
    assert dinov2_block_indices(4) == [0, 1, 2, 3]
