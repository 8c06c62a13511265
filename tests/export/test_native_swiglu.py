"""SwiGLU and layer-scale RADIOs (transformers' ``use_swiglu_ffn`` / ``layerscale_value``) through
transformers-native folders, both ways, bit for bit in float32; the config in general."""

from __future__ import annotations

import json

import pytest
import torch
from _native_radio import Case, assert_same_outputs, load, random_hf_model, tiny_openradio_checkpoint

from openradio.formats.hf import save_transformers

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "RadioModel"):
    pytest.skip("this transformers release has no native RadioModel", allow_module_level=True)

torch.set_num_threads(1)

# swiglu x layer scale x temporal patch (1 = images only) x registers x CLS tokens, plus activations and widths
CASES = [
    Case(swiglu=True),
    Case(swiglu=True, layerscale=True, registers=0, cls=1),
    Case(swiglu=True, temporal=4, cls=4, registers=7),
    Case(layerscale=True, cls=4, registers=0),
    Case(swiglu=True, mlp_ratio=16 / 3),
    Case(swiglu=True, mlp_ratio=4.0, layerscale=True, temporal=2),
    Case(hidden_act="gelu_pytorch_tanh", layerscale=True),
    Case(hidden_act="quick_gelu", registers=1),
    Case(hidden_act="silu", temporal=2, cls=1),
]


@pytest.mark.parametrize("case", CASES, ids=Case.id)
def test_transformers_swiglu_folder_loads_exactly(case, tmp_path):
    hf = random_hf_model(transformers, case)
    hf.save_pretrained(tmp_path / "native")
    model = load(tmp_path / "native")
    mlp = model.blocks[0].mlp
    assert (type(mlp).__name__ == "SwiGLU") == case.swiglu  # timm's SwiGLU: fc1_g (gate), fc1_x, fc2
    if case.swiglu:
        assert mlp.fc1_g.out_features == hf.encoder.layer[0].mlp.gate_proj.out_features
    assert_same_outputs(hf, model, case)


@pytest.mark.parametrize("case", CASES, ids=Case.id)
def test_openradio_swiglu_model_round_trips_through_save_transformers(case, tmp_path):
    model = load(tiny_openradio_checkpoint(tmp_path / "t.pth.tar", case))
    folder = save_transformers(model, tmp_path / "native")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["use_swiglu_ffn"] is case.swiglu and cfg["hidden_act"] == case.hidden_act
    hf = transformers.RadioModel.from_pretrained(folder).eval()
    assert_same_outputs(hf, model, case)
    back = load(folder)
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        assert torch.equal(back(x).features, model(x).features)
    # a second trip writes the same weights
    again = save_transformers(back, tmp_path / "again")
    from safetensors.torch import load_file

    a, b = load_file(str(folder / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_layer_norm_eps_and_no_qkv_bias(tmp_path):
    cfg = Case(swiglu=True, layerscale=True).hf_config(transformers)
    cfg.layer_norm_eps, cfg.qkv_bias = 1e-5, False
    torch.manual_seed(0)
    hf = transformers.RadioModel(cfg).eval()
    with torch.no_grad():
        for t in hf.parameters():
            t.copy_(torch.randn_like(t) * 0.1 + 1)
    hf.save_pretrained(tmp_path / "native")
    model = load(tmp_path / "native")
    assert model.blocks[0].norm1.eps == 1e-5 and model.blocks[0].attn.qkv.bias is None
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        assert torch.equal(hf(pixel_values=x).features, model(x).features)
    hf2 = transformers.RadioModel.from_pretrained(save_transformers(model, tmp_path / "back")).eval()
    assert hf2.config.layer_norm_eps == 1e-5 and hf2.config.qkv_bias is False
    with torch.no_grad():
        assert torch.equal(hf2(pixel_values=x).features, model(x).features)


def test_unsupported_activation_is_one_clear_error(tmp_path):
    hf = random_hf_model(transformers, Case())
    hf.save_pretrained(tmp_path / "native")
    cfg_path = tmp_path / "native" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hidden_act"] = "gelu_new"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hidden_act='gelu_new' is not supported"):
        load(tmp_path / "native")
