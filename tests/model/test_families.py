"""Every released RADIO family against outputs of the official code (tests/fixtures/official-families).

One tiny checkpoint per construction path (v2/v2.1 MLP-norm bf16, v2.5-H with normalisers, the
v2.5-g DINOv2 student, C-RADIOv2-g, C-RADIOv3 with LayerScale/reg_token/DAMP keys and an
upsampling head, C-RADIOv4 SO400M with EMA weights, token_slot and the attention feature head).
Outputs must be bit-identical where the recorded platform matches this machine, and within float32
rounding elsewhere, or bfloat16 rounding for the family that computes in bf16 (the fixture README
explains why the bits follow the CPU kind; openradio.verify.parity.low_precision_bound derives the bound).
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import families_dir

import openradio
from openradio.formats.official import (
    backbone_state_from_official,
    load_checkpoint_file,
    official_state_dict,
    select_state,
    split_state,
)
from openradio.verify import parity

FIXDIR = families_dir()
pytestmark = pytest.mark.skipif(FIXDIR is None, reason="official-families fixtures not found")
E = parity.load_expected(FIXDIR) if FIXDIR else {"variants": {}}
SAME_PLATFORM = bool(FIXDIR) and parity.platform_matches(E.get("platform") or {})
STRICT = SAME_PLATFORM or os.environ.get("OPENRADIO_STRICT_PARITY") == "1"
VARIANTS = list(E["variants"])
_cache = parity.ModelCache(FIXDIR) if FIXDIR else None


def load(variant, adaptor_names, window):
    return _cache.get(E["variants"][variant]["checkpoint"], adaptor_names, window)


def _case_ids():
    return [pytest.param(v, c, id=f"{v}:{c}") for v, c in parity.case_ids(E)] if FIXDIR else []


@pytest.mark.parametrize("variant,case", _case_ids())
def test_case_matches_official(variant, case):
    C = E["variants"][variant]["cases"][case]
    model = load(variant, C["adaptor_names"], C["vitdet_window_size"])
    results = list(parity.run_case(model, E, variant, case))
    assert results
    for r in results:
        assert r.dtype_ok and r.shape_ok, r.where
        if STRICT:
            assert r.exact, f"{r.where}: not bit-exact (max abs diff {r.max_abs_diff:.3g}) on the fixtures' platform"
        else:
            assert r.within_noise, (
                f"{r.where}: max abs diff {r.max_abs_diff:.3g} (relative RMS {r.rms_rel_diff:.3g}) beyond {r.bound}"
            )


def test_recorded_platform_is_described():
    # the comparison mode depends on it: make the choice visible in the log
    print(f"official-families platform match: {SAME_PLATFORM} ({parity.platform_line(parity.platform_info())})")
    assert E["platform"]["torch"].startswith("2.")


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_sha256(variant):
    V = E["variants"][variant]
    assert hashlib.sha256((FIXDIR / V["checkpoint"]).read_bytes()).hexdigest() == V["checkpoint_sha256"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_properties(variant):
    V = E["variants"][variant]
    got = parity.model_properties(load(variant, V["adaptor_names"], None))
    for k, want in V["properties"].items():
        want = dict(want) if isinstance(want, dict) else want
        assert got[k] == want, f"{k}: {got[k]!r} != {want!r}"
    for tag, P in V["properties_vitdet"].items():
        got = parity.model_properties(load(variant, V["adaptor_names"], P["window_size"]))
        for k, want in P.items():
            want = dict(want) if isinstance(want, dict) else want
            assert got[k] == want, f"{tag}/{k}: {got[k]!r} != {want!r}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_error_messages(variant):
    V = E["variants"][variant]
    for name, err in V["errors"].items():
        call, want = err["call"], err["error"]
        with pytest.raises(ValueError) as info:
            if call["method"] == "load":
                openradio.radio_model(
                    str(FIXDIR / V["checkpoint"]),
                    adaptor_names=call["adaptor_names"],
                    vitdet_window_size=call["vitdet_window_size"],
                )
            else:
                load(variant, call["adaptor_names"], call["vitdet_window_size"])(
                    torch.zeros(call["input_shape"]), **call["kwargs"]
                )
        assert str(info.value) == want["message"], name


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_official_key_is_used_and_written_back(variant):
    """Nothing in the checkpoint is ignored, and the model writes the same official keys back
    (DAMP parametrised weights come back folded to plain ``weight``, LayerScale as ``gamma``:
    both forms load in the official code)."""
    V = E["variants"][variant]
    chk = load_checkpoint_file(FIXDIR / V["checkpoint"])
    state, _ = select_state(chk)
    model = load(variant, V["adaptor_names"], None)
    written = official_state_dict(model, heads_by_name=False)

    def norm(k):
        k = k.replace(".parametrizations.weight.original", ".weight")
        return k.replace(".grandma", ".gamma")

    names = [t["name"] for t in chk["args"].teachers]
    used_heads = {str(names.index(n)) for n in V["adaptor_names"]} | set(V["adaptor_names"])

    def head_key(k):  # '_heads.clip.fc1.weight' -> '_heads.<index>.fc1.weight'
        fam, key, rest = (k.split(".", 2) + ["", ""])[:3]
        if fam in ("_heads", "_feature_projections"):
            return f"{fam}.{names.index(key) if key in names else key}.{rest}"
        return k

    want = {
        head_key(norm(k))
        for k in state
        if not k.startswith(("_heads.", "_feature_projections.")) or k.split(".")[1] in used_heads
    }
    assert {head_key(k) for k in written} == want
    backbone, _ = split_state(state)
    ours = backbone_state_from_official(backbone, chk["args"].model)
    for k, v in model.model.state_dict().items():
        src = ours.get(k)
        if src is None:  # folded DAMP weight
            src = ours[k.replace(".weight", ".parametrizations.weight.original")]
        assert torch.equal(v.float(), src.float()), k


def test_attn_head_nchw_is_the_nlc_result_on_the_grid():
    """The official code crashes on an 'attn' feature head with feature_fmt='NCHW'
    (official_crashes['attn_feature_head_NCHW']); openradio returns the NLC result laid on the
    (h, w) grid."""
    V = E["variants"]["c_radio_v4_so400m_ema"]
    crash = V["official_crashes"]["attn_feature_head_NCHW"]
    assert "upsample_factor" in crash["error"]["message"]
    model = load("c_radio_v4_so400m_ema", crash["call"]["adaptor_names"], None)
    x = E["inputs"]["192x256"][:1].float() / 255
    with torch.no_grad():
        nlc = model(x, feature_fmt="NLC")["dino_v3"].features
        nchw = model(x, feature_fmt="NCHW")["dino_v3"].features
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    assert nchw.shape == (1, nlc.shape[-1], h, w)
    assert torch.equal(nchw, nlc.reshape(1, h, w, -1).permute(0, 3, 1, 2))


def test_attn_head_matches_the_spec_step_by_step():
    """An independent re-computation of the C-RADIOv4 attention feature head from the written
    maths (families spec §8.3) with plain torch functions, on the fixture's weights."""
    model = load("c_radio_v4_so400m_ema", ["dino_v3"], None)
    head = model.adaptors["dino_v3"].feat_mlp
    sd = {k: v.float() for k, v in head.state_dict().items()}
    torch.manual_seed(0)
    x = torch.randn(2, 37, model.embed_dim)
    D, nh = x.shape[-1], 16
    y = x
    for k in range(2):
        p = f"blocks.{k}."
        a = F.layer_norm(y, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = (a @ sd[p + "attn.qkv.weight"].t()).reshape(2, 37, 3, nh, D // nh).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        o = F.linear(o.transpose(1, 2).reshape(2, 37, D), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = y + o * sd[p + "ls1.gamma"]
        m = F.layer_norm(y, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        m = F.linear(
            F.gelu(F.linear(m, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
            sd[p + "mlp.fc2.weight"],
            sd[p + "mlp.fc2.bias"],
        )
        y = y + m * sd[p + "ls2.gamma"]
    y = F.linear(y, sd["mlp.fc1.weight"], sd["mlp.fc1.bias"])
    y = F.layer_norm(y, (y.shape[-1],), sd["mlp.final.0.weight"], sd["mlp.final.0.bias"], eps=1e-5)
    y = F.linear(F.gelu(y), sd["mlp.final.2.weight"], sd["mlp.final.2.bias"])
    with torch.no_grad():
        got = head(x)
    torch.testing.assert_close(got, y, rtol=1e-5, atol=1e-6)


def test_dinov2_student_ignores_model_kwargs_and_reads_sizes_from_weights():
    chk = load_checkpoint_file(FIXDIR / "radio_v25g_dinov2.pth.tar")
    assert chk["args"].model_kwargs == {}
    model = load("radio_v25g_dinov2", [], None)
    V = E["variants"]["radio_v25g_dinov2"]
    h = V["official_harness"]["tiny_dinov2"]
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (
        h["embed_dim"],
        h["depth"],
        h["num_heads"],
    )
    # patch bias, SwiGLU [gate | value], final norm always on
    assert model.patch_generator.embedder.bias is not None
    assert not isinstance(model.model.norm, torch.nn.Identity)


BF16 = "radio_v2_mlpnorm_bf16"
BF16_CASE = "global_NLC/192x256"


def _bf16_results(mutate_model=None, mutate_input=None):
    import copy

    C = E["variants"][BF16]["cases"][BF16_CASE]
    model = openradio.radio_model(
        str(FIXDIR / E["variants"][BF16]["checkpoint"]),
        adaptor_names=C["adaptor_names"],
        vitdet_window_size=C["vitdet_window_size"],
        progress=False,
    )
    if mutate_model:
        mutate_model(model)
    E2 = E
    if mutate_input:
        E2 = copy.copy(E)
        E2["inputs"] = {**E["inputs"], C["input"]: mutate_input(E["inputs"][C["input"]])}
    return list(parity.run_case(model, E2, BF16, BF16_CASE))


def test_bf16_family_is_held_to_the_bf16_bound():
    """The bf16 family case is compared within bfloat16 rounding grown over its depth, not float32's;
    the bound is the derived one (2u sqrt(4L) max, u sqrt(4L) RMS with u = 2^-8)."""
    res = _bf16_results()
    assert {r.compute_dtype for r in res} == {"torch.bfloat16"} and {r.depth for r in res} == {9}
    max_rel, rms_rel = parity.low_precision_bound("torch.bfloat16", 9)
    assert max_rel == pytest.approx(2 * 2**-8 * 6) and rms_rel == pytest.approx(2**-8 * 6)
    assert all(r.within_noise for r in res), [r.where for r in res if not r.within_noise]
    # float32 models keep the float32 bound
    assert parity.low_precision_bound("torch.float32", 9) is None


@pytest.mark.parametrize(
    "wrong", ["crop_shifted_1px", "resize_not_crop", "adaptor_head_swapped", "mlp_norm_eps_0.1", "block_skipped"]
)
def test_a_wrong_bf16_model_fails_the_bf16_bound(wrong):
    """Deliberately wrong models (crop, resampling, head, eps, depth) still fail the bf16 bound."""
    import torch.nn.functional as F

    mutate_model = mutate_input = None
    if wrong == "crop_shifted_1px":

        def mutate_input(x):
            return torch.roll(x, 1, -1)
    elif wrong == "resize_not_crop":

        def mutate_input(x):
            small = F.interpolate(x.float(), scale_factor=0.5, mode="bilinear", align_corners=False)
            return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False).round().to(x.dtype)
    elif wrong == "adaptor_head_swapped":

        def mutate_model(m):  # dino_v2's feature head answers for openai_clip (the heads with equal shapes)
            a, b = m.adaptors["dino_v2"].feat_mlp, m.adaptors["openai_clip"].feat_mlp
            b.load_state_dict(a.state_dict())
    elif wrong == "mlp_norm_eps_0.1":

        def mutate_model(m):
            for blk in m.blocks:
                blk.mlp.norm.eps = 0.1
    elif wrong == "block_skipped":

        def mutate_model(m):
            m.model.blocks[4] = torch.nn.Identity()

    res = _bf16_results(mutate_model, mutate_input)
    assert not all(r.within_noise for r in res), f"{wrong}: passed the bf16 bound"
