"""Compare openradio with outputs the official RADIO code produced (a parity-fixtures folder).

A fixtures folder holds official-format checkpoints and ``expected.pt`` (layout
``radio-parity-fixtures/1``: inputs, and per checkpoint the cases with their official outputs).
:func:`compare_fixtures` runs every case through :func:`openradio.radio_model` and yields one
:class:`Comparison` per stored tensor. The test suite (``tests/parity/test_parity.py``) and
``openradio parity`` both use it, so there is one definition of "the same as the official".

Bit equality of float32 outputs also depends on the CPU's kernels (BLAS code path, vector width
of ATen's reductions), not only on the order of operations. :func:`platform_info` records what
decides those, and :func:`env_settings` lists the switches worth trying on a given CPU
(``openradio parity --matrix`` runs the comparison once per setting, each in a fresh process).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

import openradio
from openradio.runtime import KERNEL_ENV, cpu_flags, cpu_model

FORMAT = "radio-parity-fixtures/1"
# A mismatch no larger than this times the tensor's largest magnitude is float32 rounding noise
# (a few ulps accumulated over 12 blocks); any logic error is orders of magnitude above it.
NOISE = 4e-6
# Unit roundoff u = 2^-p of the low-precision dtypes a model may compute in (p = significand bits
# without the implicit one: 7 for bfloat16, 10 for float16, so u = 2^-8 and 2^-11).
UNIT_ROUNDOFF = {"torch.bfloat16": 2.0**-8, "torch.float16": 2.0**-11}
# Rounding sites per ViT block on the residual stream's path: the attention and MLP branch outputs
# and the two residual additions, each stored in the compute dtype.
ROUNDINGS_PER_BLOCK = 4


def low_precision_bound(compute_dtype: str, depth: int) -> tuple[float, float] | None:
    """``(max_rel, rms_rel)`` bounds for a model that computes in bfloat16/float16, or None for float32.

    Derivation. Two correct implementations (the official code on one CPU kind, openradio on another)
    accumulate in float32 in different orders and vector widths, so each value they store in the
    compute dtype can round to different neighbours: a disagreement of at most one ulp, 2u relative
    (u the unit roundoff). A ViT block adds ROUNDINGS_PER_BLOCK = r such roundings to the residual
    stream, and pre-norm residual blocks pass a perturbation on with a gain near one. The roundings
    are independent, so after L blocks their disagreements add in quadrature: the relative RMS of
    the difference is at most u * sqrt(r * L) (each site contributes at most u RMS: a one-ulp flip of
    probability < 1/2), and the largest single difference, measured against the tensor's largest
    magnitude, at most two ulps of that growth, 2u * sqrt(r * L). For radio_v2.1's bf16 family case
    (L = 9): 4.7 % max, 2.3 % RMS; measured between AVX2 and AVX-512/AMX kernels: 1.5 % and 1.0 %.
    Adaptor heads computing in float32 on those backbone outputs inherit the same relative bound.
    A logic error (a crop shifted by one pixel, another adaptor's head, a wrong resampling) moves the
    outputs by 40-100 % and fails both; an eps change that bf16 cannot resolve (1e-5 vs 1e-3 inside a
    LayerNorm) is invisible in the model's own output by construction and is caught by the float32
    families, which run the same code."""
    u = UNIT_ROUNDOFF.get(str(compute_dtype))
    if u is None:
        return None
    growth = (ROUNDINGS_PER_BLOCK * max(depth, 1)) ** 0.5
    return 2 * u * growth, u * growth


@dataclass
class Comparison:
    variant: str
    case: str
    where: str  # case/output/field, e.g. "global_NLC/224x224/clip/summary"
    max_abs_diff: float
    max_abs_value: float
    exact: bool
    dtype_ok: bool = True
    shape_ok: bool = True
    digest: str = ""  # of our output tensor's bytes: equal digests = identical bits on two machines
    compute_dtype: str = "torch.float32"  # the dtype the model's blocks compute in
    depth: int = 0  # the number of blocks the model has (the rounding bound grows with it)
    rms_rel_diff: float = 0.0  # ||got - want|| / ||want||

    @property
    def bound(self) -> str:
        """The rule this comparison is held to, in words (for reports)."""
        lp = low_precision_bound(self.compute_dtype, self.depth)
        if lp is None:
            return f"float32 rounding ({NOISE:g} x max magnitude)"
        return (
            f"{self.compute_dtype.removeprefix('torch.')} rounding over {self.depth} blocks "
            f"(max {lp[0]:.3g} x max magnitude, RMS {lp[1]:.3g})"
        )

    @property
    def within_noise(self) -> bool:
        """Within the rounding noise of the dtype the model computes in (see :func:`low_precision_bound`)."""
        if not (self.dtype_ok and self.shape_ok):
            return False
        lp = low_precision_bound(self.compute_dtype, self.depth)
        if lp is None:
            return self.max_abs_diff <= NOISE * max(self.max_abs_value, 1.0)
        max_rel, rms_rel = lp
        return self.max_abs_diff <= max_rel * self.max_abs_value and self.rms_rel_diff <= rms_rel

    def ok(self, strict: bool) -> bool:
        return self.dtype_ok and self.shape_ok and (self.exact if strict else self.within_noise)


def load_expected(fixdir: str | Path) -> dict:
    fixdir = Path(fixdir)
    path = fixdir / "expected.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a parity-fixtures folder holds expected.pt and the "
            "checkpoints it names (e.g. shared/fixtures/official-v2.5)"
        )
    E = torch.load(path, weights_only=True)
    if not isinstance(E, dict) or E.get("format") != FORMAT:
        raise ValueError(f"{path} is not a parity-fixtures file of format {FORMAT!r}")
    return E


def _tensor_compare(variant: str, case: str, where: str, got: torch.Tensor, want: torch.Tensor) -> Comparison:
    if got.shape != want.shape:
        return Comparison(
            variant, case, where, float("inf"), float(want.abs().max()) if want.numel() else 0.0, False, shape_ok=False
        )
    diff = (got - want).abs().max().item() if got.numel() else 0.0
    mag = want.abs().max().item() if want.numel() else 0.0
    ref = want.double().norm().item() if want.numel() else 0.0
    rms = (got.double() - want.double()).norm().item() / ref if ref else (0.0 if diff == 0 else float("inf"))
    digest = hashlib.sha1(got.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:12]
    return Comparison(variant, case, where, diff, mag, bool(torch.equal(got, want)), digest=digest, rms_rel_diff=rms)


def compare_leaf(variant: str, case: str, got, want: dict, where: str) -> Iterator[Comparison]:
    feats = got.features if hasattr(got, "features") else got
    idx = want.get("features_token_index")
    if idx is not None:
        feats = feats[:, idx] if feats.ndim == 3 else feats.flatten(2)[:, :, idx]
    c = _tensor_compare(variant, case, f"{where}/features", feats.float(), want["features"])
    c.dtype_ok = str(feats.dtype) == want["dtype"]
    yield c
    if "summary" in want:
        if not hasattr(got, "summary"):
            yield Comparison(variant, case, f"{where}/summary", float("inf"), 0.0, False, shape_ok=False)
        else:
            yield _tensor_compare(variant, case, f"{where}/summary", got.summary.float(), want["summary"])
    elif hasattr(got, "summary"):  # a bare tensor was expected
        yield Comparison(variant, case, f"{where}/summary", float("inf"), 0.0, False, shape_ok=False)


def run_case(model, E: dict, variant: str, case: str) -> Iterator[Comparison]:
    """Run one stored case on an already loaded model and compare every output tensor, each held
    to the rounding bound of the dtype the model computes in."""
    compute_dtype, depth = str(model.dtype), len(model.blocks)
    for c in _run_case(model, E, variant, case):
        c.compute_dtype, c.depth = compute_dtype, depth
        yield c


def _run_case(model, E: dict, variant: str, case: str) -> Iterator[Comparison]:
    C = E["variants"][variant]["cases"][case]
    x = E["inputs"][C["input"]].float() / 255
    with torch.no_grad():
        out = getattr(model, C["method"])(x, **C["kwargs"])
    want = C["expected"]
    if C["method"] == "forward":
        if C["adaptor_names"]:
            if set(out) != set(want):
                raise AssertionError(f"{case}: outputs {sorted(out)} != expected {sorted(want)}")
            for name in want:
                yield from compare_leaf(variant, case, out[name], want[name], f"{case}/{name}")
        else:
            yield from compare_leaf(variant, case, out, want, case)
        return
    if want["final"] is None:
        inter = out
    else:
        final, inter = out
        if isinstance(final, dict):  # with adaptors, `final` is {'backbone': ..., name: ...}
            if set(final) != set(want["final"]):
                raise AssertionError(f"{case}: final outputs {sorted(final)} != expected {sorted(want['final'])}")
            for name in want["final"]:
                yield from compare_leaf(variant, case, final[name], want["final"][name], f"{case}/final/{name}")
        else:
            yield from compare_leaf(variant, case, final, want["final"], f"{case}/final")
    if len(inter) != len(want["intermediates"]):
        raise AssertionError(f"{case}: {len(inter)} intermediates, expected {len(want['intermediates'])}")
    for i, (g, w) in enumerate(zip(inter, want["intermediates"])):
        yield from compare_leaf(variant, case, g, w, f"{case}/intermediate{i}")


class ModelCache:
    """Loads each (checkpoint, adaptors, window) once."""

    def __init__(self, fixdir: str | Path):
        self.fixdir = Path(fixdir)
        self._models: dict = {}

    def get(self, checkpoint: str, adaptor_names, window):
        key = (checkpoint, tuple(adaptor_names or ()), window)
        if key not in self._models:
            self._models[key] = openradio.radio_model(
                str(self.fixdir / checkpoint),
                adaptor_names=list(adaptor_names or []),
                vitdet_window_size=window,
                progress=False,
            )
        return self._models[key]


def case_ids(E: dict, patterns: list[str] | None = None) -> list[tuple[str, str]]:
    """(variant, case) pairs; with ``patterns``, only those whose ``variant:case`` matches one of
    the shell-style patterns (e.g. ``'*16x16'``, ``'tiny_radio_v25_norm:*'``)."""
    ids = [(v, c) for v, V in E["variants"].items() for c in V["cases"]]
    if patterns:
        ids = [(v, c) for v, c in ids if any(fnmatch.fnmatchcase(f"{v}:{c}", p) for p in patterns)]
    return ids


def select_cases(E: dict, patterns: list[str] | None) -> list[tuple[str, str]]:
    """:func:`case_ids`, but an error when patterns match nothing."""
    ids = case_ids(E, patterns)
    if not ids:
        v, c = case_ids(E)[0]
        raise ValueError(f"no case matches {patterns}; cases look like '{v}:{c}' (shell-style patterns)")
    return ids


def compare_fixtures(
    fixdir: str | Path,
    *,
    progress: Callable[[str], None] | None = None,
    cache: ModelCache | None = None,
    expected: dict | None = None,
    cases: list[str] | None = None,
) -> list[Comparison]:
    """Every stored output tensor of every case (or of the cases matching the patterns
    ``cases``, see :func:`case_ids`), compared; nothing is asserted here.
    ``expected``: the already loaded ``expected.pt`` of ``fixdir``, if the caller has it."""
    E = expected if expected is not None else load_expected(fixdir)
    cache = cache or ModelCache(fixdir)
    ids = select_cases(E, cases)
    out: list[Comparison] = []
    for variant, case in ids:
        C = E["variants"][variant]["cases"][case]
        model = cache.get(E["variants"][variant]["checkpoint"], C["adaptor_names"], C["vitdet_window_size"])
        out.extend(run_case(model, E, variant, case))
        if progress:
            progress(f"{variant}:{case}")
    return out


def summarize(results: list[Comparison]) -> dict:
    finite = [r.max_abs_diff for r in results if r.max_abs_diff != float("inf")]
    return {
        "tensors": len(results),
        "exact": sum(r.exact for r in results),
        "within_noise": sum(r.within_noise for r in results),
        "max_abs_diff": max(finite) if finite else 0.0,
        "failed_checks": sum(not (r.dtype_ok and r.shape_ok) for r in results),
        # one digest of all our outputs: two machines (or kernel settings) with the same value
        # computed identical bits
        "outputs_digest": hashlib.sha1("".join(r.digest for r in results).encode()).hexdigest()[:12],
    }


def model_properties(model) -> dict:
    """The properties a fixture's ``properties`` records, read from an openradio model."""

    block = model.blocks[0]
    return {
        "patch_size": model.patch_size,
        "max_resolution": model.max_resolution,
        "preferred_resolution": model.preferred_resolution,
        "window_size": model.window_size,
        "min_resolution_step": model.min_resolution_step,
        "num_summary_tokens": model.num_prefix_tokens,
        "num_cls_tokens": model.num_cls_tokens,
        "num_registers": model.num_registers,
        "embed_dim": model.embed_dim,
        "summary_dim": model.summary_dim,
        "summary_idxs": model.summary_idxs.tolist(),
        "adaptor_names": list(model.adaptors),
        "adaptor_head_idx": {k: a.head_idx for k, a in model.adaptors.items()},
        "adaptor_upsample_factor": {k: a.upsample_factor for k, a in model.adaptors.items()},
        "adaptor_feature_head_type": {k: type(a.feat_mlp).__name__ for k, a in model.adaptors.items()},
        "num_blocks": len(model.blocks),
        "num_heads": block.attn.num_heads,
        "pos_embed_grid": [model.patch_generator.grid_size] * 2,
        "patch_generator_prefix_tokens": model.patch_generator.num_prefix_tokens,
        "has_final_norm": not isinstance(model.model.norm, nn.Identity),
        "has_layer_scale": not isinstance(block.ls1, nn.Identity),
        "mlp_hidden": block.mlp.fc2.in_features,
        "has_feature_normalizer": not isinstance(model.feature_normalizer, nn.Identity),
        "has_intermediate_feature_normalizer": model.inter_feature_normalizer is not None,
        "backbone_dtype": str(model.dtype),
        "windowed_blocks": model.windowed_block_indices,
    }


# -- platform ------------------------------------------------------------------------------------
def platform_info() -> dict:
    """What decides float32 kernel results on this machine."""
    import timm  # lazy: timm costs ~2 s to import; `openradio parity --matrix` needs only its version

    flags = cpu_flags()
    blas = ""
    try:
        cfg = torch.__config__.show()
        blas = next((ln.strip() for ln in cfg.splitlines() if "BLAS_INFO" in ln or "LAPACK_INFO" in ln), "")
    except Exception:  # noqa: BLE001 - purely informational
        pass
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "avx512": any(f.startswith("avx512") for f in flags),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "blas": blas,
        "env": {
            k: os.environ[k]
            for k in (*KERNEL_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TIMM_FUSED_ATTN")
            if k in os.environ
        },
    }


def platform_matches(recorded: dict) -> bool:
    """Whether this machine computes float32 with the kernels of the machine that recorded a
    fixture set (its ``expected.pt['platform']``): same CPU vendor/model line, same vector ISA
    (ATen capability, AVX-512 and AMX presence) and the same torch release. Only then can stored
    outputs be expected bit for bit; elsewhere they hold within float32 rounding."""
    flags = cpu_flags()
    rec_avx512 = recorded.get("avx512_flags")
    if rec_avx512 is None and isinstance(recorded.get("flags"), dict):
        rec_avx512 = [k for k, v in recorded["flags"].items() if v and k.startswith("avx512")]
    rec_amx = recorded.get("amx_flags")
    if rec_amx is None and isinstance(recorded.get("flags"), dict):
        rec_amx = [k for k, v in recorded["flags"].items() if v and k.startswith("amx")]
    cpu = recorded.get("cpu_model") or recorded.get("cpu") or ""
    checks = [
        bool(cpu) and cpu_model().startswith(cpu),
        recorded.get("torch_cpu_capability", recorded.get("aten_cpu_capability"))
        == torch.backends.cpu.get_cpu_capability(),
        bool(rec_avx512) == any(f.startswith("avx512") for f in flags),
        bool(rec_amx) == any(f.startswith("amx") for f in flags),
        str(recorded.get("torch", "")).split("+")[0] == torch.__version__.split("+")[0],
    ]
    return all(checks)


def platform_line(info: dict) -> str:
    return (
        f"platform: {info['cpu']} | ATen {info['aten_cpu_capability']} | AVX-512 "
        f"{'yes' if info['avx512'] else 'no'} | torch {info['torch']} | timm {info['timm']} | "
        f"{info['threads']} threads"
    )


# ATen's CPU capabilities from the lowest to the highest, with the CPU flags each needs (ATen picks
# avx512 only with F, BW, VL and DQ; see aten/src/ATen/native/DispatchStub.cpp).
ATEN_CAPABILITIES = (
    ("default", ()),
    ("avx2", ("avx2", "fma")),
    ("avx512", ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
)


def aten_capabilities(flags: set[str] | None = None) -> list[str]:
    """The ``ATEN_CPU_CAPABILITY`` values this CPU can run, lowest first (always ``'default'``)."""
    flags = cpu_flags() if flags is None else flags
    return [name for name, need in ATEN_CAPABILITIES if all(f in flags for f in need)]


def capability_env(capability: str, flags: set[str] | None = None) -> dict[str, str]:
    """The environment that runs ATen's ``capability`` kernels on this CPU, and only those.

    On a CPU with AVX-512 (and so oneDNN's AVX-512/AMX micro-kernels), a lowered ATen capability
    must be paired with a lowered oneDNN ISA. torch's flash-attention CPU kernel asks oneDNN whether
    it can pack bf16/fp16 operands for its brgemm, and oneDNN says yes from the CPU flags, while the
    VNNI packing routine itself is compiled only into ATen's avx512 kernels: bf16 SDPA under
    ``ATEN_CPU_CAPABILITY=avx2`` or ``default`` on such a CPU dies with "pack_vnni2 is only supported
    when avx512 is supported" (torch 2.14). ``ONEDNN_MAX_CPU_ISA=AVX2`` makes oneDNN decline, the
    kernel takes its unpacked path, and the run is what an AVX2-only CPU would compute with
    ATen's kernels of that capability."""
    flags = cpu_flags() if flags is None else flags
    env = {"ATEN_CPU_CAPABILITY": capability}
    if capability != "avx512" and "avx512f" in flags:
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    return env


def kernel_sets(flags: set[str] | None = None) -> list[dict[str, str]]:
    """One environment per CPU kernel set this CPU can run, lowest first: each ATen capability
    (:func:`capability_env`), and on a CPU with AMX also AVX-512 with oneDNN held to
    ``AVX512_CORE_BF16``: oneDNN's bf16 matmuls as a native-bf16 CPU without AMX (Zen 4) runs them,
    which sum bf16 products in another order than the AMX tiles do (the official-families outputs
    take other bits under it). It is not a whole Zen 4: ATen's flash-attention kernel still uses
    AMX under that setting (``benchmarks/bench_attention.py`` times it above the capped matmul
    peak)."""
    flags = cpu_flags() if flags is None else flags
    capabilities = aten_capabilities(flags)
    envs = [capability_env(c, flags) for c in capabilities]
    if "avx512" in capabilities and "avx512_bf16" in flags and any(f.startswith("amx") for f in flags):
        envs.append({"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    return envs


def env_settings(flags: set[str] | None = None) -> list[dict[str, str]]:
    """Kernel switches worth trying on this CPU: ATen's vector ISA x MKL's code path x threads.

    Only ISAs the CPU has are listed (asking for a missing one makes the library fall back
    silently, which would repeat another row); a lowered ATen ISA comes with the oneDNN ISA
    that keeps it runnable, and an AMX CPU also runs its bf16 kernels without AMX
    (:func:`kernel_sets`)."""
    flags = cpu_flags() if flags is None else flags
    kernels = [{}, *kernel_sets(flags)]
    mkl = ["", "COMPATIBLE"]
    if "avx2" in flags:
        mkl.append("AVX2")
    if "avx512f" in flags:
        mkl.append("AVX512")
    out = []
    for kernel_env in kernels:
        for m in mkl:
            for threads in ("", "1"):
                env = dict(kernel_env)
                if m:
                    env["MKL_CBWR"] = m
                if threads:
                    env["OMP_NUM_THREADS"] = threads
                out.append(env)
    return out


def describe_env(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items()) or "(defaults)"


def as_dicts(results: list[Comparison]) -> list[dict]:
    return [asdict(r) | {"within_noise": r.within_noise} for r in results]
