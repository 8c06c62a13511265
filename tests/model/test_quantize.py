"""openradio.quantize_dynamic: opt-in int8 linear layers for CPU inference (issue 16, item 4)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import openradio
from openradio.verify.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("q") / "m.pth.tar")
    return openradio.radio_model(str(path), adaptor_names=["clip"], text_towers=False)


def test_int8_close_to_float32_on_photographs(model):
    import numpy as np
    from PIL import Image

    from openradio.inputs.sample_data import load_sample_image

    x = torch.stack(
        [
            torch.from_numpy(np.array(Image.fromarray(load_sample_image(n)).convert("RGB").resize((128, 96))))
            .permute(2, 0, 1)
            .float()
            / 255
            for n in ("chelsea", "coffee")
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # silenced inside quantize_dynamic
        q = openradio.quantize_dynamic(model)
    lin = q.model.blocks[0].attn.qkv
    assert "quantized" in type(lin).__module__ and type(model.model.blocks[0].attn.qkv) is torch.nn.Linear
    assert type(q.model.patch_generator.embedder) is torch.nn.Linear  # stays float32
    with torch.no_grad():
        a, b = model(x), q(x)
    for k in ("backbone", "clip"):
        assert F.cosine_similarity(a[k].summary, b[k].summary).min() > 0.99
        assert F.cosine_similarity(a[k].features, b[k].features, dim=-1).mean() > 0.99
        assert not torch.equal(a[k].features, b[k].features)  # it did quantise
    # packed mixed resolutions run on the quantised model too (its blocks are still timm Blocks);
    # activations are quantised with one scale per call, so a pack is close to, not equal to,
    # one image alone
    with torch.no_grad():
        outs = q.forward_images([x[0], x[1, :, :64, :]])
        ref = q(x[:1])
    assert F.cosine_similarity(outs[0]["backbone"].features, ref["backbone"].features, dim=-1).min() > 0.99


def test_quantize_refuses_what_it_cannot_do(model):
    with pytest.raises(ValueError, match="float32"):
        openradio.quantize_dynamic(_bf16(model))
    with pytest.raises(TypeError, match="RADIOModel"):
        openradio.quantize_dynamic(torch.nn.Linear(2, 2))


def _bf16(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)
