"""The Hugging Face layout: config.json + model.safetensors, read without running repository code."""

from __future__ import annotations

import json

import pytest
import torch

import openradio
from openradio.formats.hf import save_hf
from openradio.formats.safeload import CheckpointError
from openradio.verify.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def norm_ckpt(tmp_path_factory):
    teachers = [
        dict(name="clip", type="open_clip"),
        dict(name="dino_v2", type="dino_v2"),
        dict(name="sam", type="sam", use_summary=False, fd_upsample_factor=2),
    ]
    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("hf") / "t.pth.tar",
        depth=8,
        teachers=teachers,
        head_dims={"clip": (8, 8), "dino_v2": (12, 12), "sam": (None, 6)},
    )


def test_round_trip_through_hf_folder(norm_ckpt, tmp_path):
    names = ["clip", "dino_v2", "sam"]
    ref = openradio.radio_model(str(norm_ckpt), adaptor_names=names)
    folder = save_hf(ref, tmp_path / "hf")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["args"]["dtype"] == "float32" and cfg["adaptor_names"] == names
    got = openradio.radio_model(str(folder), adaptor_names=names)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        a, b = ref(x, feature_fmt="NCHW"), got(x, feature_fmt="NCHW")
    for n in ["backbone", *names]:
        assert torch.equal(a[n].features, b[n].features) and torch.equal(a[n].summary, b[n].summary), n
    # ViTDet is applied (the official Hugging Face model silently ignores it)
    w = openradio.radio_model(str(folder), vitdet_window_size=2)
    assert w.windowed_block_indices == [0, 2, 4, 6]
    with torch.no_grad():
        assert not torch.allclose(w(x, feature_fmt="NCHW").features, a["backbone"].features, atol=1e-4)


def test_hf_hub_reference_uses_snapshot_download(norm_ckpt, tmp_path, monkeypatch):
    folder = save_hf(openradio.radio_model(str(norm_ckpt)), tmp_path / "repo")
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, **kw):
        calls.append((repo_id, kw.get("allow_patterns")))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    m = openradio.radio_model("hf-hub:nvidia/RADIO-B")
    assert calls[0][0] == "nvidia/RADIO-B" and "*.safetensors" in calls[0][1]
    assert m.embed_dim == 64

    def offline(repo_id, **kw):
        raise OSError("connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(RuntimeError, match="pass its folder instead"):
        openradio.radio_model("hf-hub:nvidia/RADIO-L")


def test_corrupt_or_foreign_hf_weights(norm_ckpt, tmp_path):
    folder = save_hf(openradio.radio_model(str(norm_ckpt)), tmp_path / "bad")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        openradio.radio_model(str(folder))
    from safetensors.torch import save_file

    save_file({"vision_model.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="radio_model"):
        openradio.radio_model(str(folder))
