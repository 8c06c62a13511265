"""Loading safely: truncated, incomplete and tampered checkpoints; downloads and the hub cache."""

from __future__ import annotations

import argparse
import urllib.error
import zipfile

import pytest
import torch

import openradio
from openradio.formats.official import load_checkpoint_file, save_checkpoint
from openradio.formats.resolve import cached_checkpoint_path
from openradio.formats.safeload import CheckpointError
from openradio.verify.testing import make_tiny_checkpoint


def test_truncated_checkpoint_is_a_clear_error(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "truncated.pth.tar"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        openradio.radio_model(str(bad))


def test_missing_backbone_key_is_listed(tiny_checkpoint, tmp_path):
    chk = load_checkpoint_file(tiny_checkpoint)
    sd = dict(chk["state_dict"])
    del sd["base_model.blocks.1.mlp.fc2.bias"]
    path = save_checkpoint(tmp_path / "missing.pth.tar", chk["args"], sd)
    with pytest.raises(CheckpointError, match=r"missing keys: \['blocks.1.mlp.fc2.bias'\]"):
        openradio.radio_model(str(path))


def test_unexpected_backbone_key_is_listed(tiny_checkpoint, tmp_path):
    chk = load_checkpoint_file(tiny_checkpoint)
    sd = dict(chk["state_dict"])
    sd["base_model.blocks.0.extra.weight"] = torch.zeros(3)
    path = save_checkpoint(tmp_path / "extra.pth.tar", chk["args"], sd)
    with pytest.raises(CheckpointError, match="unexpected keys: .*blocks.0.extra.weight"):
        openradio.radio_model(str(path))


def test_wrong_shape_is_reported(tiny_checkpoint, tmp_path):
    chk = load_checkpoint_file(tiny_checkpoint)
    sd = dict(chk["state_dict"])
    sd["base_model.blocks.0.norm1.weight"] = torch.ones(7)
    path = save_checkpoint(tmp_path / "shape.pth.tar", chk["args"], sd)
    with pytest.raises(CheckpointError, match="blocks.0.norm1.weight has shape"):
        openradio.radio_model(str(path))


def _tampered_checkpoint(src, dst, marker):
    """Rewrite the checkpoint's pickle so that loading it would call os.system(touch marker)."""
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    chk = load_checkpoint_file(src)
    chk["args"].evil = Evil()
    torch.save(chk, dst)


def test_pickle_with_foreign_callable_is_refused_and_never_runs(tiny_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "tampered.pth.tar"
    _tampered_checkpoint(tiny_checkpoint, bad, marker)
    with zipfile.ZipFile(bad) as z:  # the file really carries the call
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        assert b"system" in z.read(pkl)
    with pytest.raises(CheckpointError, match="allow-list") as info:
        openradio.radio_model(str(bad))
    assert "system" in str(info.value)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "weights.pt"
    torch.save({"foo": torch.zeros(1)}, p)
    with pytest.raises(CheckpointError, match="not an official RADIO checkpoint"):
        openradio.radio_model(str(p))


def test_missing_file_and_unknown_version():
    with pytest.raises(FileNotFoundError):
        openradio.radio_model("/nonexistent/dir/model.pth.tar")
    with pytest.raises(ValueError, match="Known versions: .*radio_v2.5-b"):
        openradio.radio_model("radio_v9")


def test_released_name_loads_from_torch_hub_cache(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    dst = cached_checkpoint_path("radio_v2.5-b")
    assert str(dst).startswith(str(tmp_path))
    dst.parent.mkdir(parents=True)
    dst.write_bytes(tiny_checkpoint.read_bytes())

    def no_network(*a, **k):
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    m = openradio.radio_model("radio_v2.5-b", vitdet_window_size=2)
    assert m.preferred_resolution == (768, 768) and m.preferred_resolution.height == 768
    assert m.max_resolution == 2048 and m.patch_size == 16 and m.min_resolution_step == 32
    assert not m.training


def test_download_writes_cache_and_offline_error_names_path(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def fake_download(url, dst, progress=True):
        calls.append((url, progress))
        with open(dst, "wb") as f:
            f.write(tiny_checkpoint.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    m = openradio.radio_model("radio_v2.5-l", progress=False)
    assert calls and "radio-v2.5-l_half.pth.tar" in calls[0][0] and calls[0][1] is False
    assert m.version == "radio_v2.5-l" and m.max_resolution == 2048  # the release's settings
    assert cached_checkpoint_path("radio_v2.5-l").is_file()

    def offline(url, dst, progress=True):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as info:
        openradio.radio_model("radio_v2.5-h")
    assert str(cached_checkpoint_path("radio_v2.5-h")) in str(info.value)
    assert not cached_checkpoint_path("radio_v2.5-h").exists()


def test_vitdet_refused_for_versions_without_it():
    with pytest.raises(ValueError, match="vitdet_window_size is not supported for c-radio_v3-b"):
        openradio.radio_model("c-radio_v3-b", vitdet_window_size=8)


def test_torch_hub_local_entry_point(tiny_checkpoint):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    m = torch.hub.load(str(repo), "radio_model", source="local", version=str(tiny_checkpoint), adaptor_names=["clip"])
    assert isinstance(m, openradio.RADIOModel) and "clip" in m.adaptors and not m.training


def test_keywords_the_official_loader_ignores_pass_and_a_misspelt_one_warns(tiny_checkpoint, recwarn):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official examples' keywords: no warning at all
        openradio.radio_model(str(tiny_checkpoint), text_towers=False, return_spatial_features=True, neck_name=None)
    with pytest.warns(UserWarning, match=r"ignoring unknown keyword argument\(s\) adaptor_name\b"):
        m = openradio.radio_model(str(tiny_checkpoint), text_towers=False, adaptor_name=["clip"])
    assert "clip" not in m.adaptors  # ignored, as said


def _spectral_state(W, g):
    out = W.shape[0]
    u = torch.randn(out, generator=g)
    v = torch.randn(W.shape[1], generator=g)
    return u, v, torch.randn(1, 1, generator=g)


def _reference_spectral(W, u, v, scale, eps):
    """Independent float64 computation of the materialised weight (one power step)."""
    W, u, v = W.double(), u.double(), v.double()
    u = W @ v
    u = u / max(u.norm(), eps)
    v = W.T @ u
    v = v / max(v.norm(), eps)
    sigma = u @ (W @ v) + eps
    s = torch.nn.functional.softplus(scale.double()) + 0.05
    return W * s / sigma


def test_spectral_reparam_checkpoint_is_materialised(tiny_checkpoint, tmp_path):
    chk = load_checkpoint_file(tiny_checkpoint)
    sd = dict(chk["state_dict"])
    g = torch.Generator().manual_seed(0)
    refs = {}
    for layer in ("blocks.0.mlp.fc1", "blocks.2.attn.qkv"):
        W = sd.pop(f"base_model.{layer}.weight")
        sd[f"base_model.{layer}.parametrizations.weight.original"] = W
        if layer.endswith("qkv"):
            parts = []
            for j, Wj in enumerate(W.chunk(3)):
                u, v, s = _spectral_state(Wj, g)
                q = f"base_model.{layer}.parametrizations.weight.0.parts.{j}"
                sd.update({f"{q}._u": u, f"{q}._v": v, f"{q}.scale": s, f"{q}._sn_version": torch.tensor(2)})
                parts.append(_reference_spectral(Wj, u, v, s, 1e-6))
            refs[layer] = torch.cat(parts)
        else:
            u, v, s = _spectral_state(W, g)
            q = f"base_model.{layer}.parametrizations.weight.0"
            sd.update({f"{q}._u": u, f"{q}._v": v, f"{q}.scale": s, f"{q}._sn_version": torch.tensor(1)})
            refs[layer] = _reference_spectral(W, u, v, s, 1e-6)
    args = argparse.Namespace(**vars(chk["args"]))
    args.spectral_reparam = True
    path = save_checkpoint(tmp_path / "sr.pth.tar", args, sd)
    m = openradio.radio_model(str(path))
    got = dict(m.model.named_parameters())
    for layer, ref in refs.items():
        torch.testing.assert_close(got[f"{layer}.weight"].double(), ref, rtol=1e-5, atol=1e-6)
    # a parametrised layer without spectral state cannot be materialised: refuse
    del sd["base_model.blocks.0.mlp.fc1.parametrizations.weight.0._sn_version"]
    path = save_checkpoint(tmp_path / "sr_bad.pth.tar", args, sd)
    with pytest.raises(CheckpointError, match="blocks.0.mlp.fc1"):
        openradio.radio_model(str(path))


def test_heads_keyed_by_index_and_name_agree(tmp_path):
    a = make_tiny_checkpoint(tmp_path / "name.pth.tar", heads_by_name=True)
    b = make_tiny_checkpoint(tmp_path / "idx.pth.tar", heads_by_name=False)
    assert "_heads.2.fc1.weight" in load_checkpoint_file(b)["state_dict"]
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        oa = openradio.radio_model(str(a), adaptor_names=["dino_v2"])(x)
        ob = openradio.radio_model(str(b), adaptor_names=["dino_v2"])(x)
    assert torch.equal(oa["dino_v2"].features, ob["dino_v2"].features)


def test_every_route_ends_in_one_builder_and_the_model_says_what_it_was_built_from(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """Issue 26: the release/file, Hugging Face and transformers-native routes all build through
    formats.build.build_model; RADIOModel carries config, args and version from its constructor;
    return_checkpoint gives (model, checkpoint); one public prefix-token count."""
    from openradio.formats import build
    from openradio.formats.hf import save_hf
    from openradio.model.config import RadioConfig

    calls = []
    real = build.build_model
    monkeypatch.setattr(build, "build_model", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    model, chk = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], return_checkpoint=True)
    assert isinstance(chk, dict) and "args" in chk
    hf_dir = save_hf(model, tmp_path / "hf")
    from_hf = openradio.radio_model(str(hf_dir), adaptor_names="clip")
    assert len(calls) == 2 and all(isinstance(c, RadioConfig) for c in calls)
    assert isinstance(model.config, RadioConfig) and model.args.model == chk["args"].model
    assert model.version == str(tiny_checkpoint) and from_hf.version == str(hf_dir)
    assert model.num_prefix_tokens == model.num_summary_tokens == model.patch_generator.num_prefix_tokens
    assert model.vitdet_num_windowed is None and model.vitdet_num_global is None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["clip"].summary, from_hf(x)["clip"].summary)
