"""model.forward_images: images of different sizes in one packed sequence (issue 16, item 2)."""

from __future__ import annotations

import pytest
import torch

import openradio
import openradio.model.packed as packed_mod
from openradio.verify.testing import make_tiny_checkpoint

SIZES = [(64, 96), (128, 128), (64, 96), (192, 64), (32, 32)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("packed") / "m.pth.tar")
    return openradio.radio_model(str(path), adaptor_names=["clip", "sam"], text_towers=False)


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in SIZES]


@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("fmt", ["NLC", "NCHW"])
def test_packed_equals_one_image_at_a_time(model, window, fmt, monkeypatch):
    blocks_run = []
    orig = packed_mod.PackedRunner.run
    monkeypatch.setattr(packed_mod.PackedRunner, "run", lambda self, i, b: (blocks_run.append(i), orig(self, i, b))[1])
    images = _images()
    with torch.no_grad():
        outs = model.forward_images(images, feature_fmt=fmt, vitdet_window=window)
        refs = [model(im[None], feature_fmt=fmt, vitdet_window=window) for im in images]
    assert blocks_run == list(range(len(model.blocks)))  # one packed pass, not a loop
    assert len(outs) == len(images)
    for o, r in zip(outs, refs):
        assert set(o) == {"backbone", "clip", "sam"}
        for k in r:
            assert o[k].summary.shape == r[k].summary.shape and o[k].features.shape == r[k].features.shape
            assert (o[k].summary - r[k].summary).abs().max() <= 1e-5, k
            assert (o[k].features - r[k].features).abs().max() <= 1e-5, k


def test_packed_images_do_not_see_each_other(model):
    """Changing one image changes only its own output (block-diagonal attention)."""
    images = _images()
    other = list(images)
    other[1] = torch.rand_like(images[1])
    with torch.no_grad():
        a = model.forward_images(images, vitdet_window=None)
        b = model.forward_images(other, vitdet_window=None)
    for i in range(len(images)):
        same = torch.equal(a[i]["backbone"].features, b[i]["backbone"].features)
        assert same == (i != 1), i


def _count_packs(monkeypatch) -> list[int]:
    """A list that receives the token count of every pack forward_images runs."""
    sizes: list[int] = []
    real = packed_mod.PackedRunner

    def counting(seqs, pack, schedule):
        sizes.append(sum(s.shape[1] for s in seqs))
        return real(seqs, pack, schedule)

    monkeypatch.setattr(packed_mod, "PackedRunner", counting)
    return sizes


def test_packs_of_bounded_size_give_the_same_outputs(model, monkeypatch):
    sizes = _count_packs(monkeypatch)
    images = _images()
    with torch.no_grad():
        whole = model.forward_images(images, vitdet_window=2, max_tokens=0)  # one pack
        assert len(sizes) == 1
        parts = model.forward_images(images, vitdet_window=2, max_tokens=60)  # several packs
        # the same tokens in several packs; a pack over 60 tokens is one image larger than that
        assert len(sizes) > 2 and sum(sizes[1:]) == sizes[0] and min(sizes[1:]) < 60
    for a, b in zip(whole, parts):
        assert (a["clip"].features - b["clip"].features).abs().max() <= 1e-5
        assert (a["backbone"].summary - b["backbone"].summary).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="max_tokens"):
        model.forward_images(images, max_tokens=-1)


def test_cpu_inference_packs_up_to_the_models_block_pass_limit(model, monkeypatch):
    """The default ``max_tokens``: in CPU inference the model's ``cpu_chunk_tokens``; with grad
    (or with the limit off) one pack."""
    sizes = _count_packs(monkeypatch)
    images = _images()
    p = model.patch_size
    total = sum(im.shape[-2] // p * (im.shape[-1] // p) + model.num_prefix_tokens for im in images)
    old = model.cpu_chunk_tokens
    try:
        model.cpu_chunk_tokens = 60
        with torch.no_grad():
            ref = model.forward_images(images, vitdet_window=None, max_tokens=0)
            sizes.clear()
            out = model.forward_images(images, vitdet_window=None)
        assert len(sizes) > 1 and sum(sizes) == total
        for a, b in zip(ref, out):
            assert torch.equal(a["backbone"].features, b["backbone"].features)
        sizes.clear()
        with torch.enable_grad():
            model.forward_images(images, vitdet_window=None)
        assert sizes == [total]
        model.cpu_chunk_tokens = None
        sizes.clear()
        with torch.no_grad():
            model.forward_images(images, vitdet_window=None)
        assert sizes == [total]
    finally:
        model.cpu_chunk_tokens = old


def test_unpacked_fallback_and_bad_input(model):
    images = _images()[:2]
    with torch.no_grad():
        a = model.forward_images(images, packed=False)
        b = model.forward_images([im[None] for im in images])
    for x, y in zip(a, b):
        assert (x["backbone"].features - y["backbone"].features).abs().max() <= 1e-5
    assert model.forward_images([]) == []
    with pytest.raises(ValueError, match="list of images"):
        model.forward_images(images[0])
    with pytest.raises(ValueError, match="image 1 must be"):
        model.forward_images([images[0], torch.rand(2, 3, 32, 32)])
    with pytest.raises(ValueError, match="multiple of"):
        model.forward_images([torch.rand(3, 40, 32)])
