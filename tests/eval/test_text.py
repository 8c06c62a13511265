"""Text towers for the clip/siglip adaptors (openradio.model.text), with tiny random open_clip models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _evalutils import TINY_CLIP_EMBED_DIM, make_tiny_text_model, save_tiny_text_tower
from torch import nn

from openradio.model.text import (
    TextTower,
    attach_text_tower,
    attach_text_towers,
    maybe_attach_text_tower,
    text_tower_key,
)

TEXTS = ["a photo of a cat.", "a rocket on the launch pad", "coffee"]


def _stand_in_adaptor() -> nn.Module:
    # any module works as the carrier; the real adaptors are nn.Modules too
    return nn.Linear(4, 4)


def test_attach_built_model_matches_open_clip_and_drops_vision():
    reference = make_tiny_text_model(seed=3)
    adaptor = _stand_in_adaptor()
    tower = attach_text_tower(adaptor, {"model": "unused", "type": "open_clip"}, model=make_tiny_text_model(seed=3))

    assert isinstance(tower, TextTower) and adaptor.text_tower is tower
    assert tower.model.visual is None
    n_text = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("visual."))
    assert sum(p.numel() for p in tower.parameters()) == n_text  # only the text tower stays

    tokens = adaptor.tokenizer(TEXTS)
    assert tokens.dtype == torch.long and tokens.shape == (3, reference.context_length)
    import open_clip

    expected_tokens = open_clip.tokenizer.SimpleTokenizer(context_length=reference.context_length)(TEXTS)
    assert torch.equal(tokens, expected_tokens)

    with torch.no_grad():
        want = reference.encode_text(tokens)
    got = adaptor.encode_text(tokens)
    assert got.shape == (3, TINY_CLIP_EMBED_DIM)
    torch.testing.assert_close(got, want)
    got_n = adaptor.encode_text(tokens, normalize=True)
    torch.testing.assert_close(got_n, F.normalize(want, dim=-1))
    torch.testing.assert_close(got_n.norm(dim=-1), torch.ones(3))
    # a single string is a batch of one
    assert adaptor.tokenizer("coffee").shape == (1, reference.context_length)


def test_local_weights_file_and_config_json(tmp_path):
    cfg, weights = save_tiny_text_tower(tmp_path, seed=5)
    reference = make_tiny_text_model(seed=5)
    adaptor = _stand_in_adaptor()
    conf = {"name": "clip", "type": "open_clip", "model": str(cfg), "pretrained": "dfn5b"}
    tower = attach_text_tower(adaptor, conf, weights=weights)
    tokens = adaptor.tokenizer(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(adaptor.encode_text(tokens), reference.encode_text(tokens))
    # the key names the file (not the download tag), and is what text_tower_key predicts without loading
    assert tower.key == text_tower_key(str(cfg), "dfn5b", weights=weights)
    assert "file:" in tower.key and str(weights.resolve()) in tower.key


def test_lazy_attach_builds_on_first_use_only(tmp_path):
    cfg, weights = save_tiny_text_tower(tmp_path)
    adaptor = _stand_in_adaptor()
    conf = {"name": "clip", "type": "open_clip", "model": str(cfg), "pretrained": "dfn5b"}
    assert maybe_attach_text_tower(adaptor, conf, weights=weights) is True
    assert "text_tower" not in adaptor._modules  # nothing loaded yet
    assert adaptor.text_tower_key == text_tower_key(str(cfg), "dfn5b", weights=weights)
    emb = adaptor.encode_text(adaptor.tokenizer(TEXTS), normalize=True)
    assert emb.shape == (3, TINY_CLIP_EMBED_DIM)
    assert isinstance(adaptor._modules["text_tower"], TextTower)
    # non-text teachers are left alone
    other = _stand_in_adaptor()
    assert maybe_attach_text_tower(other, {"name": "dino_v2", "type": "dino_v2", "model": "dinov2_vitg14_reg"}) is False
    assert not hasattr(other, "encode_text")


def test_clear_errors(tmp_path):
    adaptor = _stand_in_adaptor()
    with pytest.raises(FileNotFoundError, match="text tower weights"):
        attach_text_tower(adaptor, {"model": "ViT-B-32", "pretrained": "openai"}, weights=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        attach_text_tower(adaptor, {"model": "no-such-arch", "pretrained": "x"})
    with pytest.raises(ValueError, match="no 'model'"):
        attach_text_tower(adaptor, {"name": "clip"})
    attach_text_tower(adaptor, {}, model=make_tiny_text_model())
    with pytest.raises(ValueError, match="token ids"):
        adaptor.encode_text(torch.zeros(5, dtype=torch.long))


def test_attach_text_towers_on_loaded_model(tmp_path, tiny_checkpoint):
    import openradio

    cfg, weights = save_tiny_text_tower(tmp_path, seed=1)
    model = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip", "dino_v2"], progress=False)
    # the tiny checkpoint names the real DFN CLIP; point the clip teacher at the tiny architecture instead
    model.adaptors["clip"].teacher_conf["model"] = str(cfg)
    names = attach_text_towers(model, weights={"clip": weights})
    assert names == ["clip"]
    assert not hasattr(model.adaptors["dino_v2"], "encode_text")
    emb = model.adaptors["clip"].encode_text(model.adaptors["clip"].tokenizer(TEXTS), normalize=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        summary = model(x)["clip"].summary
    # the text embeddings live in the clip adaptor's summary space, so zero-shot can compare them
    assert emb.shape[-1] == summary.shape[-1]


def test_loader_text_towers_flag_uses_checkpoint_teachers(tiny_checkpoint, monkeypatch):
    """`radio_model(..., text_towers=True)` builds each open_clip teacher's tower from the checkpoint's
    teacher entry (the download itself is replaced by a tiny tower here: no network in tests)."""
    import openradio
    import openradio.model.text as text_mod
    from openradio.model.text import text_tower_from_model

    asked = []

    def fake_load(model_name, pretrained=None, **kw):
        asked.append((model_name, pretrained))
        return text_tower_from_model(make_tiny_text_model(seed=len(asked)), key=f"fake:{model_name}")

    monkeypatch.setattr(text_mod, "load_text_tower", fake_load)
    # the named towers' configs embed to 1024/1152 dims, the fake ones to the adaptors' width: skip the
    # width check that would (rightly) refuse the real towers for this tiny checkpoint
    monkeypatch.setattr(text_mod, "text_tower_problem", lambda *a, **k: None)
    model = openradio.radio_model(
        str(tiny_checkpoint), adaptor_names=["clip", "siglip", "sam"], progress=False, text_towers=True
    )
    confs = {n: model.adaptors[n].teacher_conf for n in ("clip", "siglip")}
    assert sorted(asked) == sorted((c["model"], c["pretrained"]) for c in confs.values())
    for n in ("clip", "siglip"):
        assert isinstance(model.adaptors[n].text_tower, TextTower)
        assert model.adaptors[n].encode_text(model.adaptors[n].tokenizer(TEXTS)).shape == (3, TINY_CLIP_EMBED_DIM)
    assert not hasattr(model.adaptors["sam"], "encode_text")
