"""Teachers: tiny random configurations of the real architectures, shapes, freezing, weight files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from openradio.teachers import (
    DINOv2Teacher,
    OpenCLIPTeacher,
    SAMTeacher,
    Teacher,
    TeacherOutput,
    TranslationEquivariantTeacher,
    build_teacher,
)

# (config, second resolution) for tiny versions of every real teacher family.
TINY_CONFIGS = {
    "clip": (
        {"name": "clip", "type": "open_clip", "model": "ViT-H-14-378-quickgelu", "pretrained": "dfn5b", "tiny": True},
        84,
    ),
    "siglip": (
        {
            "name": "siglip",
            "type": "open_clip",
            "model": "ViT-SO400M-14-SigLIP-384",
            "pretrained": "webli",
            "tiny": True,
        },
        84,
    ),
    "dino_v2": (
        {"name": "dino_v2", "type": "dino_v2", "model": "dinov2_vitg14_reg", "pretrained": True, "tiny": True},
        84,
    ),
    "dino_v2_noreg": (
        {"name": "dino_v2", "type": "dino_v2", "model": "vit_base_patch14_dinov2", "pretrained": False, "tiny": True},
        84,
    ),
    "sam": ({"name": "sam", "type": "sam", "model": "samvit_huge_patch16", "pretrained": True, "tiny": True}, 96),
}


def _build(key: str, seed: int = 0, **extra) -> Teacher:
    torch.manual_seed(seed)
    cfg, _ = TINY_CONFIGS[key]
    return build_teacher({**cfg, **extra})


def _images(n: int = 2, size: int = 70, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def teachers() -> dict[str, Teacher]:
    return {k: _build(k) for k in TINY_CONFIGS}


@pytest.mark.parametrize("key", list(TINY_CONFIGS))
def test_tiny_shapes_at_two_resolutions(teachers: dict[str, Teacher], key: str) -> None:
    t = teachers[key]
    _, second = TINY_CONFIGS[key]
    x = _images()
    for res in (None, second):
        out = t(x, res)
        assert isinstance(out, TeacherOutput)
        side = (t.input_size if res is None else res) // t.patch_size
        assert out.features.shape == (2, t.feature_dim, side, side)
        assert t.grid_size(res) == (side, side)
        if t.summary_dim is None:
            assert out.summary is None
        else:
            assert out.summary.shape == (2, t.summary_dim)
        assert torch.isfinite(out.features).all()
    # A (h, w) resolution gives a rectangular grid.
    out = t(x, (t.patch_size * 3, t.patch_size * 5))
    assert out.features.shape[-2:] == (3, 5)


def test_documented_attributes(teachers: dict[str, Teacher]) -> None:
    assert teachers["clip"].patch_size == 14 and teachers["sam"].patch_size == 16
    assert teachers["sam"].summary_dim is None
    assert [teachers[k].multi_resolution for k in ("clip", "siglip", "dino_v2", "sam")] == [False, False, True, True]
    assert teachers["dino_v2"].num_registers == 4 and teachers["dino_v2_noreg"].num_registers == 0
    # Each family keeps its own normalisation.
    assert torch.allclose(teachers["siglip"].pixel_std.flatten(), torch.full((3,), 0.5))
    assert not torch.allclose(teachers["clip"].pixel_mean, teachers["dino_v2"].pixel_mean)


def test_frozen(teachers: dict[str, Teacher]) -> None:
    t = teachers["dino_v2"]
    assert not any(p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training and not any(m.training for m in t.modules())
    x = _images().requires_grad_(True)
    out = t(x)
    assert out.features.grad_fn is None and out.summary.grad_fn is None


def test_resize_and_normalise(teachers: dict[str, Teacher]) -> None:
    t = teachers["dino_v2"]
    x = _images(size=t.input_size)
    # Already the right size: normalisation only, no resampling.
    assert torch.equal(t.preprocess(x), (x - t.pixel_mean) / t.pixel_std)
    big = _images(size=140)
    expected = F.interpolate(big, size=(56, 56), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(t.preprocess(big), (expected - t.pixel_mean) / t.pixel_std)
    with pytest.raises(ValueError, match="multiple of its patch size"):
        t(x, 60)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        t(torch.rand(3, 56, 56))


def test_clip_matches_open_clip_forward(teachers: dict[str, Teacher]) -> None:
    """At the native size, the teacher's targets are exactly open_clip's encode_image and tokens."""
    t = teachers["clip"]
    x = t.preprocess(_images())
    v = t.model
    v.output_tokens = True
    try:
        pooled, tokens = v(x)
    finally:
        v.output_tokens = False
    out = t(_images())
    assert torch.allclose(out.summary, pooled, atol=1e-6)
    g = t.input_size // t.patch_size
    assert torch.allclose(out.features, tokens.reshape(2, g, g, -1).permute(0, 3, 1, 2), atol=1e-6)


def test_siglip_matches_open_clip_tower(teachers: dict[str, Teacher]) -> None:
    t = teachers["siglip"]
    x = t.preprocess(_images())
    expected = t.model.head(t.model.trunk(x))  # what open_clip's TimmModel.forward computes
    assert torch.allclose(t(_images()).summary, expected, atol=1e-6)


def test_dinov2_summary_is_normed_cls(teachers: dict[str, Teacher]) -> None:
    t = teachers["dino_v2"]
    x = t.preprocess(_images())
    tokens = t.model.forward_features(x)
    out = t(_images())
    assert torch.allclose(out.summary, tokens[:, 0], atol=1e-6)
    # Patch tokens follow CLS + 4 registers.
    assert torch.allclose(out.features.flatten(2).transpose(1, 2), tokens[:, 5:], atol=1e-6)


def test_sam_pad_to_input(teachers: dict[str, Teacher]) -> None:
    padded = _build("sam", pad_to_input=True)
    padded.load_state_dict(teachers["sam"].state_dict())
    x = _images()
    out = padded(x, 32)  # 32 px -> 2x2 grid cut from the 4x4 grid of a 64 px canvas
    assert out.features.shape == (2, padded.feature_dim, 2, 2)
    norm = padded.preprocess(x, 32)
    full = padded.model.forward_features(F.pad(norm, (0, 32, 0, 32)))
    assert torch.allclose(out.features, full[:, :, :2, :2], atol=1e-6)
    # Without padding the encoder sees a 2x2 grid only: a different result.
    assert not torch.allclose(teachers["sam"](x, 32).features, out.features, atol=1e-4)


@pytest.mark.parametrize("key", list(TINY_CONFIGS))
def test_weights_file_round_trip(tmp_path, teachers: dict[str, Teacher], key: str) -> None:
    ref = teachers[key]
    path = tmp_path / f"{key}.pt"
    torch.save(ref.state_dict(), path)
    other = _build(key, seed=123)
    x = _images()
    assert not torch.allclose(other(x).features, ref(x).features)  # really different random weights
    loaded = _build(key, seed=123, weights=str(path))
    a, b = ref(x), loaded(x)
    assert torch.equal(a.features, b.features)
    if a.summary is not None:
        assert torch.equal(a.summary, b.summary)


def test_library_checkpoint_layouts(tmp_path, teachers: dict[str, Teacher]) -> None:
    x = _images()
    # A full open_clip CLIP checkpoint (image tower under 'visual.', plus a text tower) in safetensors.
    from safetensors.torch import save_file

    clip = teachers["clip"]
    full = {f"visual.{k}": v.contiguous() for k, v in clip.model.state_dict().items()}
    full["token_embedding.weight"] = torch.zeros(10, 4)
    save_file(full, str(tmp_path / "clip.safetensors"))
    loaded = _build("clip", seed=5, weights=str(tmp_path / "clip.safetensors"))
    assert torch.equal(loaded(x).features, clip(x).features)
    # An official segment_anything checkpoint: 'image_encoder.' prefix, 'mlp.lin' names, other heads.
    sam = teachers["sam"]
    official = {f"image_encoder.{k.replace('mlp.fc', 'mlp.lin')}": v for k, v in sam.model.state_dict().items()}
    official["image_encoder.neck.0.weight"] = torch.zeros(16, 32, 1, 1)
    official["mask_decoder.iou_token.weight"] = torch.zeros(1, 8)
    torch.save({"model": official}, tmp_path / "sam.pth")
    loaded = _build("sam", seed=5, weights=str(tmp_path / "sam.pth"))
    assert torch.equal(loaded(x).features, sam(x).features)


def test_wrong_weights_file_is_a_clear_error(tmp_path, teachers: dict[str, Teacher]) -> None:
    torch.save(teachers["dino_v2"].state_dict(), tmp_path / "dino.pt")
    with pytest.raises(RuntimeError, match="do not match"):
        _build("dino_v2_noreg", weights=str(tmp_path / "dino.pt"))
    with pytest.raises(FileNotFoundError):
        _build("sam", weights=str(tmp_path / "missing.pt"))


def test_build_teacher_errors() -> None:
    with pytest.raises(ValueError, match="Unknown teacher type"):
        build_teacher({"name": "x", "type": "nope"})
    with pytest.raises(ValueError, match="does not take"):
        build_teacher({"name": "sam", "tiny": True, "pretrained": False, "colour": "red"})
    with pytest.raises(ValueError, match="needs a 'name'"):
        build_teacher({"type": "sam"})


def test_arch_overrides() -> None:
    t = build_teacher(
        {
            "name": "dino_v2",
            "model": "vit_small_patch14_dinov2",
            "pretrained": False,
            "tiny": True,
            "overrides": {"embed_dim": 24, "depth": 1},
        }
    )
    assert isinstance(t, DINOv2Teacher) and t.feature_dim == 24 and len(t.model.blocks) == 1
    c = OpenCLIPTeacher("ViT-H-14-378-quickgelu", pretrained=False, tiny=True, arch_overrides={"embed_dim": 12})
    assert c.summary_dim == 12 and c(_images()).summary.shape == (2, 12)
    s = SAMTeacher(pretrained=False, tiny=True, arch_overrides={"embed_dim": 48, "num_heads": 4})
    assert s.feature_dim == 48 and s(_images()).features.shape[1] == 48
    # input_size sets the native resolution used when none is given.
    d = DINOv2Teacher("vit_small_patch14_dinov2", pretrained=False, tiny=True, input_size=28)
    assert d.input_size == 28 and d(_images()).features.shape[-2:] == (2, 2)
    with pytest.raises(ValueError, match="not a multiple of its patch size"):
        DINOv2Teacher("vit_small_patch14_dinov2", pretrained=False, tiny=True, input_size=30)


def test_translation_equivariant_teacher() -> None:
    torch.manual_seed(0)
    t = TranslationEquivariantTeacher(patch_size=8, input_size=32, feature_dim=6)
    x = _images(1, 32)
    canvas = torch.zeros(1, 3, 48, 48)
    canvas[:, :, 8:40, 16:48] = x
    shifted = t(canvas, 48).features[:, :, 1:5, 2:6]
    assert torch.allclose(shifted, t(x).features, atol=1e-6)
    assert t(x).summary.shape == (1, 8)


def test_open_clip_pretrained_mechanism_with_local_file(tmp_path) -> None:
    """``pretrained`` goes through open_clip.create_model (here with a registered small config and a
    local checkpoint file instead of a download), and the targets equal open_clip's encode_image."""
    import json

    import open_clip

    cfg = {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 56, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "openradio-test-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    clip = open_clip.create_model("openradio-test-tiny-clip").eval()
    torch.save(clip.state_dict(), tmp_path / "full.pt")
    t = OpenCLIPTeacher("openradio-test-tiny-clip", pretrained=str(tmp_path / "full.pt"))
    assert (t.summary_dim, t.feature_dim, t.input_size) == (16, 32, 56)
    x = _images(size=56)
    with torch.no_grad():
        expected = clip.encode_image((x - t.pixel_mean) / t.pixel_std)
    assert torch.allclose(t(x).summary, expected, atol=1e-6)
    # Only the image tower is kept.
    assert sum(p.numel() for p in t.parameters()) == sum(p.numel() for p in clip.visual.parameters())
