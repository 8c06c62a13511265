"""Issue 14 item 9: a missing file or bad argument fails before torch and the model stack load
(so in well under a second): checked here as "torch was never imported" rather than by timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "import sys, openradio.cli as c\n"
    "rc = c.main(sys.argv[1:])\n"
    "heavy = sorted(m for m in ('torch', 'timm', 'open_clip', 'numpy') if m in sys.modules)\n"
    "print('HEAVY', ','.join(heavy))\n"
    "sys.exit(rc)\n"
)


@pytest.mark.parametrize(
    "argv,says",
    [
        (
            ["features", "/nope/a.jpg", "--version", "radio_v2.5-b", "--out", "{tmp}/f.safetensors"],
            "image not found: /nope/a.jpg",
        ),
        (
            ["features", "{img}", "--version", "/nope/model.pth.tar", "--out", "{tmp}/f.safetensors"],
            "checkpoint file not found: /nope/model.pth.tar",
        ),
        (
            ["features", "{img}", "--version", "radio_v9", "--out", "{tmp}/f.safetensors"],
            "Unknown RADIO version 'radio_v9'",
        ),
        (
            ["viz", "{img}", "/nope/b.png", "--version", "radio_v2.5-b", "--out", "{tmp}/v"],
            "image not found: /nope/b.png",
        ),
        (["viz-video", "/nope/in.mp4", "--version", "radio_v2.5-b", "--out", "{tmp}/o.mp4"], "input video not found"),
        (
            ["zero-shot", "--version", "radio_v2.5-b", "--data", "/nope/val", "--out", "{tmp}/zs"],
            "data not found: /nope/val",
        ),
        (
            ["knn", "--train", "/nope/train", "--val", "/nope/val", "--version", "radio_v2.5-b"],
            "data not found: /nope/train",
        ),
        (
            ["mode-switch", "--version", "radio_v2.5-b", "--data", "/nope/d", "--out", "{tmp}/ms"],
            "data not found: /nope/d",
        ),
        (["export", "/nope/run", "--out", "{tmp}/x.pth.tar"], "/nope/run has no checkpoints/ folder"),
        (
            ["export", "/nope/m.pth.tar", "--out", "{tmp}/x.onnx", "--format", "onnx"],
            "checkpoint file not found: /nope/m.pth.tar",
        ),
        (["bench", "--version", "/nope/m.pth"], "checkpoint file not found: /nope/m.pth"),
        (["demo", "--version", "/nope/m.pth.tar", "--out", "{tmp}/d"], "checkpoint file not found: /nope/m.pth.tar"),
        (["train", "/nope/c.yaml"], "config file not found: /nope/c.yaml"),
    ],
)
def test_missing_input_fails_before_torch_loads(tmp_path, argv, says):
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n")
    argv = [a.format(tmp=tmp_path, img=img) for a in argv]
    p = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"openradio {argv[0]}: error: ") and says in lines[0], p.stderr
    assert "HEAVY \n" in p.stdout, f"imported before failing: {p.stdout}"


def test_python_dash_m_cli_gives_one_line_errors(tmp_path):
    """`python -m openradio.cli` is the same program as `openradio` (its errors are caught too)."""
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "openradio.cli",
            "features",
            "/nope/a.jpg",
            "--version",
            "radio_v2.5-b",
            "--out",
            str(tmp_path / "f.safetensors"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 2 and p.stderr.strip() == "openradio features: error: image not found: /nope/a.jpg", p.stderr
