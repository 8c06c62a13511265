"""Every official backbone name at sizes no fixture has: build, write in the official format,
load back, same outputs. Structural facts of each name are checked against the families spec."""

from __future__ import annotations

import pytest
import torch

import openradio
from openradio.formats.official import backbone_state_to_official, load_checkpoint_file
from openradio.model import vit_families
from openradio.verify.testing import make_tiny_checkpoint

V4_TEACHERS = [
    dict(name="siglip2-g", type="siglip2", model="siglip2-g-384", input_size=384),
    dict(name="dino_v3", type="dino_v3", model="dinov3_vit7b16", input_size=512, spatial_mlp_version="attn"),
    dict(
        name="sam3", type="sam3", model="sam3", input_size=1008, use_summary=False, fd_upsample_factor=2, token_slot=0
    ),
]
V4_DIMS = {"siglip2-g": (24, 20), "dino_v3": (18, 22), "sam3": (10, 12)}

CASES = {
    # name: (arch, model_kwargs, extra make_tiny_checkpoint arguments)
    "mlpnorm": ("vit_huge_patch16_224_mlpnorm", {}, dict(model_norm=True)),
    "huge": ("vit_huge_patch16_224", {}, {}),
    "giant_scaled_ln": ("vit_giant_patch16_224", {"scaled_ln": True}, {}),
    "v3_base": ("vit_base_patch16_v2_224", {}, dict(cpe_num_registers=3)),
    "v3_large_reg": ("vit_large_patch16_v2_224", {"reg_tokens": 2}, {}),
    "so400m": ("vit_so400m_patch16_224", {}, dict(teachers=V4_TEACHERS, head_dims=V4_DIMS, cpe_num_registers=1)),
    "so400m_v2": ("vit_so400m_v2_patch16_224", {}, {}),
    "dinov2": ("dino_v2_g_student", {}, dict(cls_token_per_teacher=False, cpe_num_registers=4)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_family_round_trip(tmp_path, case):
    arch, kwargs, extra = CASES[case]
    # D=48 with 3 heads: head dim 16, the DINOv2 students' test convention (families spec §6.5)
    path = make_tiny_checkpoint(
        tmp_path / f"{case}.pth.tar",
        arch=arch,
        embed_dim=48,
        depth=4,
        num_heads=3,
        model_kwargs=kwargs,
        seed=3,
        **extra,
    )
    chk = load_checkpoint_file(path)
    names = [t["name"] for t in chk["args"].teachers]
    model = openradio.radio_model(str(path), adaptor_names=names, text_towers=False)
    # the checkpoint keys are the official ones for that name
    keys = set(chk["state_dict"])
    if arch == "dino_v2_g_student":
        assert "base_model.inner.blocks.0.mlp.w12.weight" in keys and "base_model.inner.mask_token" in keys
    if arch.endswith("_v2_224"):
        assert "base_model.blocks.0.ls1.gamma" in keys and "base_model.reg_token" in keys
    if arch.endswith("mlpnorm"):
        assert model.blocks[0].mlp.norm.eps == 1e-5 and "base_model.blocks.0.mlp.norm.weight" in keys
    x = torch.rand(1, 3, 112 if arch == "dino_v2_g_student" else 128, 224 if arch == "dino_v2_g_student" else 192)
    with torch.no_grad():
        a = model(x)
        again = openradio.radio_model(str(path), adaptor_names=names, text_towers=False)(x)
    for name in a:
        assert torch.equal(a[name].summary, again[name].summary) and torch.equal(a[name].features, again[name].features)
        assert torch.isfinite(a[name].features).all()


def test_so400m_mlp_width_truncates_like_the_registered_ratio():
    m = vit_families.build_family_vit("vit_so400m_patch16_224", dict(embed_dim=48, depth=1, num_heads=3))
    assert m.blocks[0].mlp.fc1.out_features == int(48 * 4304 / 1152) == 179
    m = vit_families.build_family_vit("vit_so400m_v2_patch16_224", dict(embed_dim=32, depth=1, num_heads=2))
    assert m.blocks[0].mlp.fc1.out_features == 120


def test_released_sizes_of_each_name():
    """Defaults equal the released networks (families spec §0) — built on the meta device."""
    want = {
        "vit_huge_patch16_224": (1280, 32, 16, 5120),
        "vit_giant_patch16_224": (1536, 40, 24, 6144),
        "vit_so400m_patch16_224": (1152, 27, 16, 4304),
        "vit_so400m_v2_patch16_224": (1152, 27, 16, 4320),
        "vit_large_patch16_v2_224": (1024, 24, 16, 4096),
    }
    with torch.device("meta"):
        for name, (D, depth, heads, hidden) in want.items():
            m = vit_families.build_family_vit(name, {})
            assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads, m.blocks[0].mlp.fc1.out_features) == (
                D,
                depth,
                heads,
                hidden,
            ), name
        s = vit_families.build_dinov2_student("dino_v2_g_student", {})
        assert (s.embed_dim, len(s.blocks), s.blocks[0].attn.num_heads, s.blocks[0].mlp.fc2.in_features) == (
            1536,
            40,
            24,
            4096,
        )


def test_scaled_ln_scales_each_block_by_its_depth():
    m = vit_families.build_family_vit("vit_giant_patch16_224", dict(embed_dim=32, depth=3, num_heads=2, scaled_ln=True))
    x = torch.randn(2, 5, 32)
    for i, blk in enumerate(m.blocks):
        plain = torch.nn.functional.layer_norm(x, (32,), blk.norm1.weight, blk.norm1.bias, eps=1e-6)
        torch.testing.assert_close(blk.norm1(x), plain * (i + 1) ** -0.5)
    with pytest.raises(ValueError, match="scaled_ln"):
        vit_families.build_family_vit("vit_huge_patch16_224", dict(scaled_ln=True))


def test_dinov2_student_with_other_prefix_warns_and_keeps_official_token_layout(tmp_path):
    """4 CLS + 4 registers on the DINOv2 student: the official code reads features from token 5
    (3 register tokens leak into NLC features, NCHW fails). openradio does the same and says why."""
    path = make_tiny_checkpoint(
        tmp_path / "d.pth.tar", arch="dino_v2_g_student", embed_dim=32, depth=2, num_heads=2, register_multiple=8
    )
    with pytest.warns(UserWarning, match="prefix tokens"):
        model = openradio.radio_model(str(path), text_towers=False)
    out = model(torch.rand(1, 3, 56, 56))
    assert out.features.shape[1] == 16 + 3 and out.summary.shape == (1, 32)


def test_damp_keys_load_in_either_form(tmp_path):
    """A DAMP checkpoint may store plain or parametrised weights; both load to the same model."""
    path = make_tiny_checkpoint(
        tmp_path / "p.pth.tar", arch="vit_base_patch16_v2_224", embed_dim=32, depth=2, num_heads=2, damp=0.1
    )
    chk = load_checkpoint_file(path)
    plain = openradio.radio_model(str(path), text_towers=False)
    sd = {}
    for k, v in chk["state_dict"].items():
        if k.startswith("base_model.") and k.endswith(".weight") and v.ndim == 2 and "pos_embed" not in k:
            k = k[: -len(".weight")] + ".parametrizations.weight.original"
        sd[k] = v
    chk["state_dict"] = sd
    torch.save(chk, tmp_path / "q.pth.tar")
    param = openradio.radio_model(str(tmp_path / "q.pth.tar"), text_towers=False)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(plain(x).features, param(x).features)


def test_backbone_key_conversion_round_trips():
    state = {"inner.blocks.0.mlp.w12.weight": torch.zeros(1), "inner.blocks.0.ls1.gamma": torch.zeros(1)}
    from openradio.formats.official import backbone_state_from_official

    ours = backbone_state_from_official(state, "dino_v2_g_student")
    assert set(ours) == {"inner.blocks.0.mlp.fc1.weight", "inner.blocks.0.ls1.gamma"}
    assert set(backbone_state_to_official(ours, "dino_v2_g_student")) == set(state)
    assert set(backbone_state_from_official({"blocks.1.ls2.grandma": torch.zeros(1)}, "vit_base_patch16_v2_224")) == {
        "blocks.1.ls2.gamma"
    }


@pytest.mark.parametrize(
    "version,fixture,window,windowed",
    [
        ("c-radio_v4-h", "c_radio_v4_so400m_ema", 4, [0, 2, 4, 6]),  # no schedule: 4 global
        ("radio_v2.1", "radio_v2_mlpnorm_bf16", 4, [0, 1, 2, 3, 4, 6, 7]),  # 5 windowed, then 1 global
        ("radio_v2.5-g", "radio_v25g_dinov2", None, []),
    ],
)
def test_load_by_released_name_from_the_cache(tmp_path, monkeypatch, version, fixture, window, windowed):
    """Loading by name finds the released file name in torch.hub's cache (no download here) and
    applies the release's settings: patch, resolutions, adaptors, ViTDet schedule."""
    import shutil

    from conftest import families_dir

    from openradio.formats.resolve import cached_checkpoint_path
    from openradio.versions import VERSIONS

    if families_dir() is None:
        pytest.skip("official-families fixtures not found")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    v = VERSIONS[version]
    dst = cached_checkpoint_path(version)
    assert dst.name == v.url.split("?")[0].rsplit("/", 1)[-1]
    dst.parent.mkdir(parents=True)
    shutil.copy(families_dir() / f"{fixture}.pth.tar", dst)
    model = openradio.radio_model(
        version, adaptor_names=list(v.adaptors), vitdet_window_size=window, text_towers=False, progress=False
    )
    assert model.version == version
    assert (model.patch_size, model.max_resolution) == (v.patch_size, v.max_resolution)
    assert tuple(model.preferred_resolution) == v.preferred_resolution
    assert isinstance(model.preferred_resolution, openradio.Resolution)
    assert list(model.adaptors) == list(v.adaptors)
    assert model.windowed_block_indices == windowed


def test_hf_layout_round_trip_of_the_dinov2_student(tmp_path):
    """The Hugging Face layout keeps the official key names (w12/w3) and loads back identically."""
    from safetensors.torch import load_file

    from openradio.formats.hf import save_hf

    path = make_tiny_checkpoint(
        tmp_path / "d.pth.tar",
        arch="dino_v2_g_student",
        embed_dim=32,
        depth=2,
        num_heads=2,
        cls_token_per_teacher=False,
        cpe_num_registers=4,
    )
    model = openradio.radio_model(str(path), adaptor_names=["clip"], text_towers=False)
    save_hf(model, tmp_path / "hf")
    keys = set(load_file(str(tmp_path / "hf" / "model.safetensors")))
    assert "radio_model.model.inner.blocks.0.mlp.w12.weight" in keys
    again = openradio.radio_model(str(tmp_path / "hf"), adaptor_names=["clip"], text_towers=False)
    x = torch.rand(1, 3, 56, 84)
    assert torch.equal(model(x)["clip"].features, again(x)["clip"].features)


def test_versions_name_existing_fixtures_for_their_construction_path():
    """`openradio versions` says which parity fixture covers each release; every fixture it
    names exists (vendored in tests/fixtures) and was made with that backbone name."""
    from conftest import REPO

    from openradio.commands.versions import version_records
    from openradio.formats.official import load_checkpoint_file

    records = {r["name"]: r for r in version_records()}
    assert records["c-radio_v4-h"]["default"]
    assert "attn" in records["c-radio_v4-so400m"]["construction"]
    named = {f for r in records.values() for f in r["parity_fixtures"]}
    assert "official-families/radio_v25g_dinov2" in records["radio_v2.5-g"]["parity_fixtures"]
    for ref in named:
        folder, variant = ref.split("/")
        d = REPO / "tests" / "fixtures" / folder
        if not (d / "expected.pt").is_file():
            d = REPO.parent / "shared" / "fixtures" / folder
        if not (d / "expected.pt").is_file():
            continue  # not vendored in this checkout
        chk = load_checkpoint_file(d / f"{variant}.pth.tar")
        covering = [r for r in records.values() if ref in r["parity_fixtures"]]
        fixture_arch = chk["args"].model
        same_path = [
            r
            for r in covering
            if r["arch"] == fixture_arch
            or (not vit_families.is_family(r["arch"]) and not vit_families.is_family(fixture_arch))
        ]
        assert same_path or any("attn" in r["construction"] for r in covering), ref
