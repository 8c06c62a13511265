"""Every output is written under a temporary name and renamed: a command killed mid-write leaves no
partial file under the final name (the previous file, if any, stays intact), and a later run
removes the dead writer's temporary file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from openradio.atomicio import atomic_path, partial_name, write_text

REPO = Path(__file__).resolve().parents[2]

# run the CLI with one writer replaced by one that writes part of the file, then SIGKILLs itself
DYING = r"""
import os, signal, sys
def die(fp_or_path, n=1000):
    if hasattr(fp_or_path, "write"):
        fp_or_path.write(b"x" * n); fp_or_path.flush()
    else:
        with open(fp_or_path, "wb") as f:
            f.write(b"x" * n); f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
kind = sys.argv[1]
if kind == "png":
    from PIL import Image
    Image.init()
    Image.SAVE["PNG"] = lambda im, fp, filename, *a, **k: die(fp)
elif kind == "safetensors":
    import safetensors.torch
    safetensors.torch.save_file = lambda tensors, filename, metadata=None: die(filename)
elif kind == "csv":
    import csv
    class Dying:
        def __init__(self, f, *a, **k): self.f = f
        def writerow(self, row): die(self.f.buffer if hasattr(self.f, "buffer") else self.f)
        writerows = writerow
        def writeheader(self): die(self.f.buffer if hasattr(self.f, "buffer") else self.f)
    csv.writer = Dying
from openradio.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _run(kind, argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", DYING, kind, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


@pytest.fixture()
def photo(tmp_path):
    p = tmp_path / "photo.png"
    Image.new("RGB", (48, 40), (30, 140, 200)).save(p)
    return p


def test_killed_picture_writer_leaves_no_partial_picture(tmp_path, photo, tiny_checkpoint):
    out = tmp_path / "viz"
    argv = [
        "viz",
        str(photo),
        "--version",
        str(tiny_checkpoint),
        "--resolutions",
        "32",
        "--no-progress",
        "--out",
        str(out),
    ]
    r = _run("png", argv, tmp_path)
    assert r.returncode == -signal.SIGKILL, r.stderr
    final = out / "sbs" / "photo.png"
    assert not final.exists()  # nothing under the final name ...
    left = list((out / "sbs").glob(".photo.partial-*.png"))
    assert len(left) == 1 and left[0].stat().st_size == 1000  # ... the half-written bytes are in the temp
    from openradio.cli import main

    assert main(argv) == 0  # a rerun writes the file and tidies up
    with Image.open(final) as im:
        im.load()
    assert not list((out / "sbs").glob(".photo.partial-*"))


def test_killed_features_writer_keeps_the_previous_file(tmp_path, photo, tiny_checkpoint):
    out = tmp_path / "f.safetensors"
    argv = [
        "features",
        str(photo),
        "--version",
        str(tiny_checkpoint),
        "--resolution",
        "32",
        "--no-progress",
        "--out",
        str(out),
    ]
    from openradio.cli import main

    assert main(argv) == 0
    before = out.read_bytes()
    r = _run("safetensors", argv, tmp_path)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert out.read_bytes() == before
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert len(list(f.keys())) == 2


def test_killed_csv_writer_leaves_no_partial_table(tmp_path, tiny_checkpoint):
    from _evalutils import make_image_folder

    data = make_image_folder(tmp_path / "imgs", classes=("chelsea", "coffee"), variants=range(2))
    out = tmp_path / "knn"
    r = _run(
        "csv",
        [
            "knn",
            "--train",
            str(data),
            "--val",
            str(data),
            "--version",
            str(tiny_checkpoint),
            "--resolution",
            "32",
            "--k",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (out / "knn.csv").exists()


def test_atomic_path_on_error_leaves_nothing(tmp_path):
    target = tmp_path / "a" / "report.md"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert not target.exists() and not list(target.parent.iterdir())
    write_text(target, "whole")
    assert target.read_text() == "whole" and partial_name(target).name.startswith(".report.partial-")
