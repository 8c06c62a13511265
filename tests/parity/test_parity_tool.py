"""`openradio parity` and openradio.verify.parity: the comparison catches wrong outputs, reports them per
case, and the kernel-settings matrix runs each setting in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from openradio.cli import main as cli_main
from openradio.verify import parity

REPO = Path(__file__).resolve().parents[2]
CASE = "global_NLC/16x16"


def _small_fixtures(src: Path, dst: Path, mutate=None) -> Path:
    """A fixtures folder with one case per checkpoint (links to the real checkpoints)."""
    E = torch.load(src / "expected.pt", weights_only=True)
    for v in E["variants"].values():
        v["cases"] = {CASE: v["cases"][CASE]}
        (dst / v["checkpoint"]).symlink_to(src / v["checkpoint"])
    if mutate:
        mutate(E)
    torch.save(E, dst / "expected.pt")
    return dst


def test_small_fixtures_pass_within_noise(official_fixtures, tmp_path):
    d = _small_fixtures(official_fixtures, tmp_path)
    res = parity.compare_fixtures(d)
    # 2 checkpoints x (backbone + 4 adaptors) x (features + summary)
    assert len(res) == 20
    assert all(r.within_noise and r.dtype_ok and r.shape_ok for r in res)
    s = parity.summarize(res)
    assert s["tensors"] == 20 and s["within_noise"] == 20 and s["max_abs_diff"] < 1e-4
    # the digest fingerprints our outputs: same run -> same digest; one output per tensor
    assert len({r.digest for r in res}) == 20 and all(len(r.digest) == 12 for r in res)
    assert parity.summarize(parity.compare_fixtures(d))["outputs_digest"] == s["outputs_digest"]


def test_wrong_value_and_dtype_are_reported(official_fixtures, tmp_path, capsys):
    def mutate(E):
        case = E["variants"]["tiny_radio_v25_half"]["cases"][CASE]["expected"]
        case["clip"]["summary"][0, 5] += 1e-3  # a wrong value, far above rounding noise
        case["sam"]["dtype"] = "torch.bfloat16"  # the official output had another dtype

    d = _small_fixtures(official_fixtures, tmp_path, mutate)
    res = {r.where: r for r in parity.compare_fixtures(d) if r.variant == "tiny_radio_v25_half"}
    # the digest is of openradio's outputs, not of the reference: unchanged by the tampering
    clean = {
        r.where: r.digest for r in parity.compare_fixtures(official_fixtures, cases=[f"tiny_radio_v25_half:{CASE}"])
    }
    assert {w: r.digest for w, r in res.items()} == clean
    wrong = res[f"{CASE}/clip/summary"]
    assert not wrong.within_noise and wrong.max_abs_diff == pytest.approx(1e-3, rel=0.01)
    assert not res[f"{CASE}/sam/features"].dtype_ok
    assert res[f"{CASE}/backbone/features"].within_noise

    rc = cli_main(["parity", "--fixtures", str(d)])
    out = capsys.readouterr().out
    assert rc == 1
    line = next(ln for ln in out.splitlines() if ln.startswith(f"tiny_radio_v25_half:{CASE}"))
    assert "WRONG dtype/shape" in line
    assert next(ln for ln in out.splitlines() if ln.startswith(f"tiny_radio_v25_norm:{CASE}")).endswith("ok")


def test_strict_requires_bit_equality(official_fixtures, tmp_path, capsys):
    """Expected outputs replaced by our own: --strict passes; one ulp off in one tensor fails it
    (and only it) while the noise-bounded check still passes."""
    import openradio

    ours: dict = {}
    for v in ("tiny_radio_v25_half", "tiny_radio_v25_norm"):
        E = torch.load(official_fixtures / "expected.pt", weights_only=True)
        C = E["variants"][v]["cases"][CASE]
        m = openradio.radio_model(str(official_fixtures / f"{v}.pth.tar"), adaptor_names=C["adaptor_names"])
        with torch.no_grad():
            out = m(E["inputs"][C["input"]].float() / 255, **C["kwargs"])
        ours[v] = out

    def own_outputs(E):
        for v, out in ours.items():
            want = E["variants"][v]["cases"][CASE]["expected"]
            for name, leaf in want.items():
                leaf["features"] = out[name].features.float().clone()
                leaf["summary"] = out[name].summary.float().clone()
                leaf.pop("features_token_index", None)

    (tmp_path / "same").mkdir()
    d = _small_fixtures(official_fixtures, tmp_path / "same", own_outputs)
    assert cli_main(["parity", "--fixtures", str(d), "--strict"]) == 0
    assert "20/20 tensors bit-exact" in capsys.readouterr().out

    def one_ulp(E):
        own_outputs(E)
        f = E["variants"]["tiny_radio_v25_norm"]["cases"][CASE]["expected"]["dino_v2"]["features"]
        f.view(-1)[7] = torch.nextafter(f.view(-1)[7], torch.tensor(float("inf")))

    (tmp_path / "ulp").mkdir()
    d2 = _small_fixtures(official_fixtures, tmp_path / "ulp", one_ulp)
    assert cli_main(["parity", "--fixtures", str(d2), "--strict"]) == 1
    assert "19/20 tensors bit-exact" in capsys.readouterr().out
    assert cli_main(["parity", "--fixtures", str(d2)]) == 0


def test_json_output_and_matrix_subprocess(official_fixtures, tmp_path):
    d = _small_fixtures(official_fixtures, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "openradio.cli", "parity", "--fixtures", str(d), "--json", "-"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["summary"]["tensors"] == len(res["results"]) == 20
    assert res["platform"]["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()

    out_json = tmp_path / "matrix.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "openradio.cli",
            "parity",
            "--fixtures",
            str(d),
            "--matrix",
            "--setting",
            "",
            "--setting",
            "ATEN_CPU_CAPABILITY=default,OMP_NUM_THREADS=1",
            "--json",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out_json.read_text())["matrix"]
    assert [r["env"] for r in rows] == [{}, {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}]
    # the child really ran under the requested setting
    assert rows[1]["aten_cpu_capability"] == "DEFAULT"
    assert all(r["tensors"] == 20 for r in rows)
    assert "ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1" in proc.stdout


def test_env_settings_follow_the_cpu():
    avx2 = parity.env_settings({"avx2", "fma"})
    assert {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"} in avx2
    assert not any("avx512" in str(e).lower() for e in avx2)
    avx512_flags = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    avx512 = parity.env_settings(avx512_flags)
    assert {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AVX512", "OMP_NUM_THREADS": "1"} in avx512
    assert len({json.dumps(e, sort_keys=True) for e in avx512}) == len(avx512) == 4 * 4 * 2
    assert {} in parity.env_settings(set())
    # a lowered ATen ISA on an AVX-512 CPU comes with oneDNN held to AVX2 (bf16 SDPA crashes otherwise)
    assert {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"} in avx512
    assert all(
        e.get("ONEDNN_MAX_CPU_ISA") == ("AVX2" if e.get("ATEN_CPU_CAPABILITY") in ("default", "avx2") else None)
        for e in avx512
    )
    # an AMX CPU also tries its bf16 matmuls without AMX (the kernels of a Zen 4)
    amx = parity.env_settings(avx512_flags | {"avx512_bf16", "amx_bf16"})
    assert len(amx) == 5 * 4 * 2 and {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"} in amx
    assert parity.aten_capabilities(avx512_flags) == ["default", "avx2", "avx512"]
    assert parity.aten_capabilities({"avx2", "fma", "avx512f"}) == ["default", "avx2"]  # no BW/VL/DQ: ATen stays AVX2
    assert parity.aten_capabilities(set()) == ["default"]


def test_parse_setting():
    from openradio.commands.parity import parse_setting

    assert parse_setting("") == {}
    assert parse_setting("MKL_CBWR=AVX2, OMP_NUM_THREADS=1") == {"MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1"}
    with pytest.raises(ValueError, match="VAR=VALUE"):
        parse_setting("MKL_CBWR")


def test_missing_fixtures_folder_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["parity", "--fixtures", str(tmp_path)]) == 2
    assert "expected.pt" in capsys.readouterr().err


def test_case_patterns_select_and_reject(official_fixtures, capsys):
    E = parity.load_expected(official_fixtures)
    assert parity.case_ids(E, ["*16x16"]) == [("tiny_radio_v25_half", CASE), ("tiny_radio_v25_norm", CASE)]
    norm_vitdet = parity.case_ids(E, ["tiny_radio_v25_norm:vitdet8_*"])
    assert norm_vitdet and all(v == "tiny_radio_v25_norm" and c.startswith("vitdet8_") for v, c in norm_vitdet)
    assert parity.case_ids(E, None) == parity.case_ids(E)
    with pytest.raises(ValueError, match="no case matches"):
        parity.select_cases(E, ["nothing"])
    assert cli_main(["parity", "--fixtures", str(official_fixtures), "--cases", "nothing"]) == 2
    assert "no case matches" in capsys.readouterr().err


def test_parity_command_defaults_to_the_vendored_fixtures(monkeypatch):
    from openradio.cli import build_parser

    monkeypatch.delenv("OPENRADIO_FIXTURES", raising=False)
    args = build_parser().parse_args(["parity"])
    assert Path(args.fixtures) == REPO / "tests" / "fixtures" / "official-mini"
