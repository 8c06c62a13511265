"""openradio.segment: exact labels on a planted model, the self-correlating attention, and the
`openradio segment` command end to end on a photograph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import openradio
from openradio.dense.segment import SelfCorrelatingAttention, dense_text_features, segment, write_segmentation
from openradio.model.text import attach_text_tower

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class BagOfWordsText(nn.Module):
    """A text tower whose embedding of a text is the sum of its words' planted vectors: each
    colour word embeds to its own axis, every other token (templates, start/end) to zero."""

    context_length = 77

    def __init__(self, dim: int):
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        enc = SimpleTokenizer().encoder
        self.table = nn.Embedding(49408, dim)
        with torch.no_grad():
            self.table.weight.zero_()
            for k, word in enumerate(COLOURS):
                self.table.weight[enc[word + "</w>"], k] = 1.0

    def encode_text(self, tokens, normalize=False):
        e = self.table(tokens).sum(1)
        return F.normalize(e, dim=-1) if normalize else e


def _planted(tiny_checkpoint):
    """The tiny model with weights set so that a flat-colour patch's clip summary-head output is
    (almost) the colour's axis: identity blocks, no positions, a patch embedding that averages
    each (normalised) colour channel, and a summary head that passes the three channels on."""
    m = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], text_towers=False)
    p = m.patch_size
    with torch.no_grad():
        for b in m.blocks:
            for lin in (b.attn.proj, b.mlp.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
        m.patch_generator.pos_embed.zero_()
        emb = m.patch_generator.embedder
        emb.weight.zero_()
        if emb.bias is not None:
            emb.bias.zero_()
        for c in range(3):
            emb.weight[c, c * p * p : (c + 1) * p * p] = 1.0 / (p * p)
        head = m.adaptors["clip"].head_mlp
        head.fc1.weight.zero_()
        head.fc1.bias.zero_()
        head.fc1.weight[:3, :3] = torch.eye(3)
        for blk in head.blocks:
            blk[2].weight.zero_()
            blk[2].bias.zero_()
        for ln in [head.final[0]] + [blk[0] for blk in head.blocks]:
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        head.final[2].weight.zero_()
        head.final[2].bias.zero_()
        head.final[2].weight[:3, :3] = torch.eye(3)
    attach_text_tower(m.adaptors["clip"], {}, model=BagOfWordsText(32))
    return m


def _regions(transpose: bool = False, p: int = 16):
    """An image of flat colour stripes on the patch grid (1 = red, 2 = green, 3 = blue) and its
    label map. Stripes, not corners: bilinear upsampling of the patch scores keeps every pixel
    with its own patch across a straight edge (at a corner three patches can outvote it)."""
    lab = np.tile(np.array([1, 1, 2, 3, 3, 2], np.int64), (4, 1))
    if transpose:
        lab = lab.T.copy()
    lab = np.kron(lab, np.ones((p, p), np.int64))
    cols = np.array([(0, 0, 0)] + list(COLOURS.values()), np.float32)
    img = torch.from_numpy(cols[lab]).permute(2, 0, 1).contiguous()
    return img, torch.from_numpy(lab)


@pytest.mark.parametrize("attention", ["scra", "plain"])
@pytest.mark.parametrize("transpose", [False, True])
def test_planted_model_gives_the_exact_label_map(tiny_checkpoint, attention, transpose):
    m = _planted(tiny_checkpoint)
    img, want = _regions(transpose)
    r = segment(m, img, list(COLOURS), attention=attention, resolution=64, templates="simple")
    assert r.labels.shape == want.shape
    assert torch.equal(r.labels, want)
    assert r.scores.shape == (3,) + tuple(want.shape)
    # sliding windows at twice the size (every crop sees flat patches) give the same map
    r2 = segment(m, img, "red, green, blue", attention=attention, resolution=128, window=64, stride=32)
    assert torch.equal(r2.labels, want)
    # threshold: nothing reaches a cosine above 1, everything reaches -1
    assert (segment(m, img, list(COLOURS), resolution=64, threshold=1.01, templates="base").labels == 0).all()
    assert torch.equal(segment(m, img, list(COLOURS), resolution=64, threshold=-1.0, templates="base").labels, want)
    # ViTDet mode (2 x 2-patch windows): the same map
    r3 = segment(m, img, list(COLOURS), attention=attention, resolution=64, vitdet_window=2, templates="base")
    assert torch.equal(r3.labels, want)


def test_self_correlating_attention_formula_and_model_restored(tiny_checkpoint):
    torch.manual_seed(0)
    m = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], text_towers=False)
    attn = m.blocks[-1].attn
    x = torch.randn(2, 5, m.embed_dim)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    s = q.shape[-1] ** -0.5
    a = 0.5 * ((s * q @ q.transpose(-1, -2)).softmax(-1) + (s * k @ k.transpose(-1, -2)).softmax(-1))
    want = attn.proj((a @ v).transpose(1, 2).reshape(2, 5, -1))
    torch.testing.assert_close(SelfCorrelatingAttention(attn)(x), want, rtol=1e-5, atol=1e-6)

    img = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = m(img)["clip"].features
        scra = dense_text_features(m, img, attention="scra")
        plain = dense_text_features(m, img, attention="plain")
        after = m(img)["clip"].features
    assert m.blocks[-1].attn is attn
    assert torch.equal(before, after)
    assert scra.shape == plain.shape == (1, 32, 4, 4)
    assert not torch.allclose(scra, plain)
    torch.testing.assert_close(scra.norm(dim=1), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="unknown attention"):
        dense_text_features(m, img, attention="naclip")


def test_segment_writes_pictures_on_a_photograph(tiny_checkpoint, tmp_path, sample_images):
    m = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], text_towers=False)
    attach_text_tower(m.adaptors["clip"], {}, model=BagOfWordsText(32))
    img = F.interpolate(sample_images["chelsea"][None], size=(75, 100), mode="area")[0]
    r = segment(m, img, ["red", "green", "blue"], resolution=64, window=64, stride=32, templates="base")
    paths = write_segmentation(r, img, tmp_path, "chelsea")
    lab = Image.open(paths["labels"])
    assert lab.mode == "P" and lab.size == (100, 75)
    assert np.array_equal(np.array(lab), r.labels.numpy())
    assert Image.open(paths["overlay"]).size[1] >= 75
    scores = json.loads(paths["scores"].read_text())
    assert set(scores["classes"]) == {"red", "green", "blue", "background"}
    assert abs(sum(c["pixel_fraction"] for c in scores["classes"].values()) - 1) < 1e-6
