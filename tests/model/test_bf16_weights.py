"""`radio_model(..., dtype=torch.bfloat16)`: the backbone held in bf16, and the fused oneDNN block
that runs it on CPUs with native bf16 (openradio.model.fused_cpu)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import openradio
from openradio.model import fused_cpu

FUSED = fused_cpu.onednn_bf16_matmuls()


@pytest.fixture(scope="module")
def photos():
    from openradio.inputs.imageio import image_to_tensor
    from openradio.inputs.sample_data import load_sample_image

    return [image_to_tensor(load_sample_image(n)) for n in ("astronaut", "coffee", "chelsea")]


def _resize(img, model, side=128):
    from openradio.inputs.imageio import resize_to_multiple

    return resize_to_multiple(img, side, int(model.min_resolution_step))


def test_bf16_weights_hold_the_backbone_in_bf16_and_track_float32(tiny_checkpoint, photos):
    m32 = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], text_towers=False)
    mbf = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], text_towers=False, dtype=torch.bfloat16)
    assert {p.dtype for p in mbf.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in mbf.adaptors["clip"].parameters()} == {torch.float32}  # heads stay float32
    with torch.inference_mode():
        for img in photos:
            x = _resize(img, m32)[None]
            ref, got = m32(x), mbf(x)
            for name in ("backbone", "clip"):
                assert got[name].summary.dtype == torch.float32 or name == "backbone"
                cos = F.cosine_similarity(got[name].summary.float(), ref[name].summary, dim=-1)
                assert cos.min() >= 0.999, (name, cos)
                fcos = F.cosine_similarity(got[name].features.float(), ref[name].features, dim=-1)
                assert fcos.mean() >= 0.999, (name, fcos.mean())
    with pytest.raises(ValueError, match="dtype must be"):
        m32.set_compute_dtype(torch.int8)


@pytest.mark.skipif(not FUSED, reason="oneDNN has no bf16 matmuls on this CPU (no AVX512-BF16/AMX)")
def test_fused_block_equals_the_plain_block_within_bf16_rounding(tiny_checkpoint):
    model = openradio.radio_model(str(tiny_checkpoint), text_towers=False, dtype=torch.bfloat16)
    block = model.model.blocks[1]
    assert fused_cpu.fusable(block)
    torch.manual_seed(0)
    x = torch.randn(2, 40, block.attn.qkv.in_features).to(torch.bfloat16)
    with torch.inference_mode():
        assert fused_cpu.applies(block, x)
        want = block(x).float()
        got = fused_cpu.block_forward(block, x).float()
        # a few bf16 ulps (2^-8 relative) of the activations: the add order and oneDNN's GELU differ
        bound = 4 * 2.0**-8 * want.abs().amax()
        assert (got - want).abs().max() <= bound
        # a deliberately wrong block (the MLP's residual dropped) is far outside that bound
        broken = copy.deepcopy(block)
        broken.mlp.fc2.bias.data += 1.0
        assert (fused_cpu.block_forward(broken, x).float() - want).abs().max() > bound
    # float32, autograd or training never take the fused path
    with torch.no_grad():
        assert not fused_cpu.applies(block, x.float())
        block.train()
        assert not fused_cpu.applies(block, x)
        block.eval()
        assert fused_cpu.applies(block, x)
    assert torch.is_grad_enabled() and not fused_cpu.applies(block, x)


@pytest.mark.skipif(not FUSED, reason="oneDNN has no bf16 matmuls on this CPU (no AVX512-BF16/AMX)")
def test_packed_weights_give_the_plain_weights_bits_and_follow_weight_changes(tiny_checkpoint, monkeypatch):
    model = openradio.radio_model(str(tiny_checkpoint), text_towers=False, dtype=torch.bfloat16)
    block = model.model.blocks[0]
    torch.manual_seed(0)

    def both(x):
        monkeypatch.setattr(fused_cpu, "PACK_WEIGHTS", True)
        packed = fused_cpu.block_forward(block, x)
        monkeypatch.setattr(fused_cpu, "PACK_WEIGHTS", False)
        return packed, fused_cpu.block_forward(block, x)

    def close(packed, plain):
        # the same bits on AMX (measured); elsewhere a kernel may sum in another order: a few bf16
        # ulps of the activations, as between the fused and the plain block
        return (packed.float() - plain.float()).abs().max() <= 4 * 2.0**-8 * plain.float().abs().amax()

    with torch.inference_mode():
        for b, n in ((1, 1), (1, 37), (3, 500), (1, 2048), (2, 1600)):  # row counts around PACK_ROWS
            packed, plain = both(torch.randn(b, n, block.attn.qkv.in_features).to(torch.bfloat16))
            assert close(packed, plain), (b, n)
        fc1 = block.mlp.fc1
        monkeypatch.setattr(fused_cpu, "PACK_WEIGHTS", True)
        first = fused_cpu.packed_weight(fc1)
        assert fused_cpu.packed_weight(fc1) is first  # packed once
        assert first.is_mkldnn  # oneDNN's own layout, not the plain weight
    x = torch.randn(1, 40, block.attn.qkv.in_features).to(torch.bfloat16)
    with torch.no_grad():
        fc1.weight.mul_(-1.0)  # an in-place edit: the packed copy must follow it
        assert fused_cpu.packed_weight(fc1) is not first
        packed, plain = both(x)
        assert close(packed, plain)
        fc1.weight.mul_(-1.0)
        assert not close(fused_cpu.block_forward(block, x), packed)  # a stale pack would match


@pytest.mark.skipif(not FUSED, reason="oneDNN has no bf16 matmuls on this CPU (no AVX512-BF16/AMX)")
def test_fused_path_runs_in_plain_vitdet_and_packed_passes(tiny_checkpoint, photos, monkeypatch):
    mbf = openradio.radio_model(str(tiny_checkpoint), text_towers=False, dtype=torch.bfloat16)
    m32 = openradio.radio_model(str(tiny_checkpoint), text_towers=False)
    calls = []
    real = fused_cpu.block_forward
    monkeypatch.setattr(fused_cpu, "block_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    imgs = [_resize(p, m32) for p in photos[:2]]
    with torch.inference_mode():
        for kw in ({}, {"vitdet_window": 2}):
            calls.clear()
            x = imgs[0][None]
            got, ref = mbf(x, **kw), m32(x, **kw)
            assert len(calls) == len(mbf.model.blocks), kw
            assert F.cosine_similarity(got.summary.float(), ref.summary, dim=-1).min() >= 0.999
        calls.clear()
        outs = mbf.forward_images(imgs)
        refs = m32.forward_images(imgs)
        assert calls, "the packed pass did not use the fused block"
        for o, r in zip(outs, refs):
            assert F.cosine_similarity(o.summary.float(), r.summary, dim=-1).min() >= 0.999
    assert np.isfinite(got.features.float().numpy()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_position_encoding_cache_gives_the_same_values_and_follows_the_grid(tiny_checkpoint, dtype):
    model = openradio.radio_model(str(tiny_checkpoint), text_towers=False, dtype=dtype)
    pg = model.patch_generator
    with torch.no_grad():
        fresh = pg._resample_position_encoding(5, 7)
        first = pg.eval_position_encoding(5, 7)
        assert torch.equal(first, fresh) and pg.eval_position_encoding(5, 7) is first  # kept
        pg.pos_embed.mul_(2)  # an in-place change bumps the version: resampled again
        again = pg.eval_position_encoding(5, 7)
        assert again is not first and torch.equal(again, pg._resample_position_encoding(5, 7))
    model.set_compute_dtype(torch.float16)  # a new grid tensor: the cache starts over
    with torch.no_grad():
        assert pg.eval_position_encoding(5, 7).dtype == torch.float16
    # a grid made under inference_mode keeps no version counter: resampled on every call, not kept
    with torch.inference_mode():
        inf = copy.deepcopy(model).patch_generator
        assert inf.pos_embed.is_inference()
        got = inf.eval_position_encoding(5, 7)
        assert torch.equal(got, pg.eval_position_encoding(5, 7)) and inf.eval_position_encoding(5, 7) is not got
    # with autograd nothing is kept and the encoding carries the gradient
    pg.pos_embed.requires_grad_(True)
    pe = pg.eval_position_encoding(5, 7)
    assert pe.requires_grad
