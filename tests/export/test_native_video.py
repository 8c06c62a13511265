"""Temporally packed video (transformers' ``video_temporal_patch_size``, the vision encoder of
Nemotron-3-Nano-Omni) through transformers-native folders, both ways, bit for bit in float32."""

from __future__ import annotations

import json

import pytest
import torch
from _native_radio import Case, assert_same_outputs, load, random_hf_model, tiny_openradio_checkpoint

from openradio.formats.hf import save_hf, save_transformers
from openradio.formats.official import load_checkpoint_file, official_state_dict, save_checkpoint

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "RadioModel"):
    pytest.skip("this transformers release has no native RadioModel", allow_module_level=True)

torch.set_num_threads(1)

# temporal patch 1 is an image model (transformers refuses 1: it tells clips by their channel count)
CASES = [
    Case(temporal=2),
    Case(temporal=4, registers=0, cls=1),
    Case(temporal=2, swiglu=True, layerscale=True, cls=4),
    Case(temporal=4, layerscale=True, registers=5),
    Case(temporal=None, registers=0, cls=4),
]


@pytest.mark.parametrize("case", CASES, ids=Case.id)
def test_transformers_video_folder_loads_exactly(case, tmp_path):
    hf = random_hf_model(transformers, case)
    hf.save_pretrained(tmp_path / "native")
    model = load(tmp_path / "native")
    assert_same_outputs(hf, model, case)


@pytest.mark.parametrize("case", CASES, ids=Case.id)
def test_openradio_video_model_to_transformers_exactly(case, tmp_path):
    ckpt = tiny_openradio_checkpoint(tmp_path / "t.pth.tar", case)  # the .pth.tar route carries the projection
    model = load(ckpt)
    assert model.temporal_patch_size == case.temporal
    folder = save_transformers(model, tmp_path / "native")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["video_temporal_patch_size"] == case.temporal
    hf = transformers.RadioModel.from_pretrained(folder).eval()
    assert (hf.embeddings.video_patch_projection is None) == (case.temporal is None)
    assert_same_outputs(hf, model, case)
    back = load(folder)  # and the folder reads back into the same model
    if case.temporal:
        clips = torch.rand(1, case.temporal, 3, 24, 40)
        with torch.no_grad():
            assert torch.equal(back(clips).features, model(clips).features)


def test_video_projection_survives_every_route(tmp_path):
    """.pth.tar -> Hugging Face layout -> transformers native -> Hugging Face layout: same clips, same output."""
    case = Case(temporal=2, swiglu=True, layerscale=True)
    ref = load(tiny_openradio_checkpoint(tmp_path / "t.pth.tar", case))
    hf_folder = save_hf(ref, tmp_path / "hf")
    assert "radio_model.model.patch_generator.video_embedder.weight" in _keys(hf_folder / "model.safetensors")
    native = save_transformers(load(hf_folder), tmp_path / "native")
    again = save_hf(load(native), tmp_path / "hf2")
    from_native = load(native)  # and back to the .pth.tar layout: args and weights carry the projection
    pth = save_checkpoint(tmp_path / "back.pth.tar", from_native.args, official_state_dict(from_native))
    assert load_checkpoint_file(pth)["args"].video_temporal_patch_size == 2
    clips = torch.rand(2, 2, 3, 32, 48)
    with torch.no_grad():
        want = ref(clips)
        for folder in (hf_folder, native, again, pth):
            got = load(folder)(clips)
            assert torch.equal(got.features, want.features) and torch.equal(got.summary, want.summary), folder


def test_clip_errors_say_what_to_do(tmp_path):
    model = load(tiny_openradio_checkpoint(tmp_path / "t.pth.tar", Case(temporal=2)))
    with pytest.raises(ValueError, match=r"clips must hold 2 frames .*\.reshape\(-1, 2, C, H, W\)"):
        model(torch.rand(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="get_nearest_supported_resolution"):
        model(torch.rand(1, 2, 3, 30, 32))
    with pytest.raises(ValueError, match="forward_video takes clips"):
        model.forward_video(torch.rand(1, 3, 32, 32))
    image_model = load(tiny_openradio_checkpoint(tmp_path / "i.pth.tar", Case()))
    with pytest.raises(ValueError, match="no temporal .*cpe_video_mode"):
        image_model(torch.rand(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="RGB images with 3 channels"):
        image_model(torch.rand(1, 6, 32, 32))  # packed clips, but this model has no video projection


def test_native_video_folder_without_transformers_installed_reads_with_safetensors_only(tmp_path, monkeypatch):
    """Loading a native folder needs no transformers: only its config.json and safetensors."""
    import sys

    hf = random_hf_model(transformers, Case(temporal=2))
    hf.save_pretrained(tmp_path / "native")
    monkeypatch.setitem(sys.modules, "transformers", None)
    model = load(tmp_path / "native")
    assert model.temporal_patch_size == 2


def _keys(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return set(f.keys())
