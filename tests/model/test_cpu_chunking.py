"""CPU inference runs the blocks on groups of whole images (``model.cpu_chunk_tokens``): the
outputs are those of the whole batch in one pass (issue 16: MFU at 512 px batch 8)."""

from __future__ import annotations

import pytest
import torch

import openradio
from openradio.model.radio import CPU_CHUNK_TOKENS
from openradio.verify.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("chunk") / "m.pth.tar")
    return openradio.radio_model(str(path), adaptor_names=["clip", "sam"], text_towers=False).eval()


def _block_passes(model, fn) -> tuple[object, list[int]]:
    """Run ``fn`` and return its result and the batch size of every pass through the first block."""
    seen: list[int] = []
    handle = model.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    try:
        return fn(), seen
    finally:
        handle.remove()


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in out[k]]
    return list(out)


@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("fmt", ["NLC", "NCHW"])
def test_chunked_batch_equals_one_pass(model, window, fmt):
    x = torch.rand(5, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    n = 64 // 16 * (96 // 16) + model.num_prefix_tokens  # tokens per image
    with torch.inference_mode():
        model.cpu_chunk_tokens = 0
        whole, passes_whole = _block_passes(model, lambda: model(x, feature_fmt=fmt, vitdet_window=window))
        model.cpu_chunk_tokens = 2 * n  # two images per pass: passes of 2, 2, 1
        chunked, passes = _block_passes(model, lambda: model(x, feature_fmt=fmt, vitdet_window=window))
        model.cpu_chunk_tokens = CPU_CHUNK_TOKENS
    assert passes_whole == [5]
    # ViTDet folds windows into the batch dimension of windowed blocks: count images, not rows
    per_image = passes_whole[0] // 5
    assert passes == [2 * per_image, 2 * per_image, per_image]
    for a, b in zip(_flatten(whole), _flatten(chunked)):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_chunking_only_in_cpu_inference_of_large_batches(model):
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    n = (64 // 16) ** 2 + model.num_prefix_tokens
    model.cpu_chunk_tokens = n  # one image per pass where it applies
    try:
        with torch.inference_mode():
            _, passes = _block_passes(model, lambda: model(x))
            assert passes == [1, 1, 1, 1]
            _, passes = _block_passes(model, lambda: model(x[:1]))
            assert passes == [1]
        with torch.no_grad():
            _, passes = _block_passes(model, lambda: model(x))
            assert passes == [1, 1, 1, 1]
        # with gradients (training, feature fine-tuning) the batch stays whole: autograd keeps
        # every activation anyway, so there is no cache to save
        _, passes = _block_passes(model, lambda: model(x))
        assert passes == [4]
        model.cpu_chunk_tokens = 4 * n  # the whole batch fits: one pass
        with torch.inference_mode():
            _, passes = _block_passes(model, lambda: model(x))
            assert passes == [4]
        model.cpu_chunk_tokens = n // 2  # fewer tokens than one image: still one whole image per pass
        with torch.inference_mode():
            _, passes = _block_passes(model, lambda: model(x))
            assert passes == [1] * 4
    finally:
        model.cpu_chunk_tokens = CPU_CHUNK_TOKENS


def test_default_keeps_a_512px_image_pair_per_pass(model):
    """The default groups two 512 px ViT-B/16 images (2 x 1032 tokens) per pass, the best of the
    settings measured at 512 px batch 8 (benchmarks/README.md); 224 px batch 8 stays whole."""
    with torch.inference_mode():
        assert model._chunk_size(torch.empty(8, (512 // 16) ** 2 + 8, 4)) == 2
        assert model._chunk_size(torch.empty(8, (224 // 16) ** 2 + 8, 4)) == 8
        assert model._chunk_size(torch.empty(2, (1024 // 16) ** 2 + 8, 4)) == 1
