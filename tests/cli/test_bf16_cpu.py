"""Issue 14 item 8: bf16 autocast on a CPU without native bf16 (AVX2-only, e.g. AMD Zen 3) is
emulated and ~50x slower: the library's autocast helper and `--amp` warn once, saying what to do."""

from __future__ import annotations

import warnings

import pytest
import torch

from openradio import runtime


@pytest.fixture(autouse=True)
def fresh_warning_state(monkeypatch):
    monkeypatch.setattr(runtime, "_WARNED_SLOW_BF16", False)


@pytest.mark.parametrize(
    "flags,native",
    [
        ({"avx2", "fma"}, False),
        ({"avx2", "avx512f"}, False),
        ({"avx512f", "avx512_bf16"}, True),
        ({"avx2", "amx_bf16", "amx_tile"}, True),
    ],
)
def test_native_bf16_detection_from_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: flags)
    assert runtime.cpu_has_native_bf16() is native


def test_this_avx2_machine_warns_once(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2", "fma"})
    with pytest.warns(UserWarning, match=r"bf16 autocast on this CPU .* float32") as rec:
        with runtime.autocast(torch.device("cpu"), True):
            torch.ones(2, 2) @ torch.ones(2, 2)
    assert len([w for w in rec if "bf16" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second use says nothing more
        with runtime.autocast(torch.device("cpu"), True):
            y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16  # autocast is still applied: the warning does not change results


def test_native_bf16_cpu_and_amp_off_are_silent(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx512_bf16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with runtime.autocast(torch.device("cpu"), True):
            pass
        monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2"})
        with runtime.autocast(torch.device("cpu"), False):
            y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
    assert not runtime.slow_bf16(torch.device("cuda"))


def test_amp_flag_prints_one_warning_line(monkeypatch, tmp_path, tiny_checkpoint, capsys):
    from PIL import Image

    from openradio.cli import main

    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2"})
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 32), (90, 120, 200)).save(img)
    rc = main(
        [
            "features",
            str(img),
            "--version",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--amp",
            "--resolution",
            "32",
            "--no-progress",
            "--out",
            str(tmp_path / "f.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0
    lines = [ln for ln in err.splitlines() if "bf16" in ln]
    assert len(lines) == 1 and lines[0].startswith("openradio features: warning: bf16 autocast on this CPU"), err
    assert "drop --amp" in lines[0]
