"""transformers' native RadioModel, both ways, with random tiny models (no network)."""

from __future__ import annotations

import json

import pytest
import torch

import openradio
from openradio.formats.hf import save_transformers
from openradio.model.normalizers import FeatureNormalizer
from openradio.verify.testing import make_tiny_checkpoint

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "RadioModel"):
    pytest.skip("this transformers release has no native RadioModel", allow_module_level=True)

TOL = 1e-5
SIZES = [(64, 64), (48, 96)]  # square and non-square


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tf") / "t.pth.tar", depth=3)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


def test_openradio_to_native_transformers(tiny, tmp_path):
    names = ["clip", "sam"]
    ref = openradio.radio_model(str(tiny), adaptor_names=names, text_towers=False)
    folder = save_transformers(ref, tmp_path / "native")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "radio" and "args" not in cfg and "auto_map" not in cfg  # no remote code
    assert cfg["openradio"]["not_in_native_model"] == ["adaptors"]
    hf = transformers.RadioModel.from_pretrained(folder).eval()
    assert type(hf).__module__.startswith("transformers.models.radio")
    for h, w in SIZES:
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            a, b = ref(x)["backbone"], hf(pixel_values=x)
        assert _max_diff(a.summary, b.summary) <= TOL and _max_diff(a.features, b.features) <= TOL, (h, w)
    # packed variable-resolution input: the native class's image_grid_hw path equals one call per image
    imgs = [torch.rand(1, 3, *s) for s in SIZES]
    p = ref.patch_size
    patches = torch.cat(
        [
            im.reshape(3, s[0] // p, p, s[1] // p, p).permute(1, 3, 0, 2, 4).reshape(-1, 3 * p * p)
            for im, s in zip(imgs, SIZES)
        ]
    )
    grid = torch.tensor([[s[0] // p, s[1] // p] for s in SIZES])
    with torch.no_grad():
        packed = hf(pixel_values=patches, image_grid_hw=grid)
        singles = [ref(im)["backbone"] for im in imgs]
    assert _max_diff(packed.summary, torch.cat([s.summary for s in singles])) <= TOL
    assert _max_diff(packed.features, torch.cat([s.features[0] for s in singles])) <= TOL
    # and openradio reads the folder back completely, adaptors included, bit for bit
    back = openradio.radio_model(str(folder), adaptor_names=names)
    x = torch.rand(1, 3, 48, 96)
    with torch.no_grad():
        a, b = ref(x), back(x)
    for n in ["backbone", *names]:
        assert torch.equal(a[n].summary, b[n].summary) and torch.equal(a[n].features, b[n].features), n


def test_native_transformers_to_openradio(tmp_path):
    cfg = transformers.RadioConfig(
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        mlp_ratio=2.0,
        patch_size=8,
        max_img_size=256,
        num_cls_tokens=3,
        num_registers=5,
        summary_idxs=[2, 0],
    )
    torch.manual_seed(0)
    hf = transformers.RadioModel(cfg).eval()
    with torch.no_grad():  # every tensor random (biases start at zero, layer scales at one)
        for name, t in hf.named_parameters():
            t.copy_(
                torch.randn_like(t) * (0.5 if "layer_scale" in name else 0.05) + (1 if "layer_scale" in name else 0)
            )
    hf.save_pretrained(tmp_path / "native")
    model = openradio.radio_model(str(tmp_path / "native"))
    assert model.num_prefix_tokens == 8 and model.summary_idxs.tolist() == [2, 0] and model.patch_size == 8
    for h, w in [(32, 32), (24, 56)]:
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            a, b = hf(pixel_values=x), model(x)
        assert _max_diff(a.summary, b.summary) <= TOL and _max_diff(a.features, b.features) <= TOL, (h, w)
    with pytest.raises(ValueError, match="no adaptor heads"):
        openradio.radio_model(str(tmp_path / "native"), adaptor_names=["clip"])


def test_what_the_native_class_does_not_carry(tiny, tmp_path):
    ref = openradio.radio_model(str(tiny), text_towers=False)
    torch.manual_seed(1)
    fn = FeatureNormalizer(ref.embed_dim)
    fn.mean.normal_()
    fn.tx.copy_(torch.randn_like(fn.tx) * 0.1)
    ref.feature_normalizer = fn
    folder = save_transformers(ref, tmp_path / "phi")
    assert json.loads((folder / "config.json").read_text())["openradio"]["not_in_native_model"] == [
        "feature_normalizer"
    ]
    hf = transformers.RadioModel.from_pretrained(folder).eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        raw = ref.forward_intermediates(x, indices=[-1], intermediates_only=True, output_fmt="NLC")[0]
        native, ours = hf(pixel_values=x).features, ref(x).features
        back = openradio.radio_model(str(folder))(x).features
    assert _max_diff(native, raw) <= TOL  # the native class gives the un-normalised patch tokens
    assert _max_diff(native, ours) > 1e-2
    assert torch.equal(back, ours)  # openradio restores the normaliser from openradio.safetensors
    # a final LayerNorm has no place in the native class: refused, with the way out named
    ref.model.norm = torch.nn.LayerNorm(ref.embed_dim)
    with pytest.raises(ValueError, match="final LayerNorm"):
        save_transformers(ref, tmp_path / "bad")


def test_export_command_transformers_format(tiny, tmp_path):
    from openradio.cli import main

    out = tmp_path / "cli_native"
    assert main(["export", str(tiny), "--format", "transformers", "--adaptor", "dino_v2", "--out", str(out)]) == 0
    hf = transformers.AutoModel.from_pretrained(out).eval()  # the Auto classes resolve it natively too
    assert type(hf).__name__ == "RadioModel"
    ref = openradio.radio_model(str(tiny), text_towers=False)
    x = torch.rand(1, 3, 32, 80)
    with torch.no_grad():
        assert _max_diff(hf(pixel_values=x).features, ref(x).features) <= TOL
    assert list(openradio.radio_model(str(out), adaptor_names=["dino_v2"]).adaptors) == ["dino_v2"]


def test_bf16_model_keeps_its_dtype(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "bf.pth.tar", depth=2, dtype=torch.bfloat16)
    ref = openradio.radio_model(str(ckpt), text_towers=False)
    folder = save_transformers(ref, tmp_path / "bf")
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert transformers.RadioModel.from_pretrained(folder).dtype == torch.bfloat16
    back = openradio.radio_model(str(folder))
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert back.dtype == torch.bfloat16 and torch.equal(back(x).features, ref(x).features)
