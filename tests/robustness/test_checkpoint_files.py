"""Hostile and broken checkpoint files: every loader refuses code-running pickles before any code
runs, and every broken file is one line that says what the file is and what to do."""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import openradio
from openradio.checkpoint import CheckpointError, load_checkpoint_file


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text.strip(), text
    assert len(text) < 300, text
    return text


# -- item 3: the file is not a checkpoint at all -------------------------------------------------
def _png(p: Path) -> Path:
    Image.new("RGB", (8, 8), (200, 30, 30)).save(p, format="PNG")
    return p


def _jpeg(p: Path) -> Path:
    Image.new("RGB", (8, 8)).save(p, format="JPEG")
    return p


@pytest.mark.parametrize("maker,name,says", [
    (_png, "model.pth.tar", "not a PyTorch checkpoint: looks like a PNG image"),
    (_jpeg, "model.pth", "not a PyTorch checkpoint: looks like a JPEG image"),
    (lambda p: p.write_text('{"args": {}, "weights": [1, 2]}') and p, "model.pth.tar",
     "not a PyTorch checkpoint: looks like a JSON document"),
    (lambda p: p.write_text("hello, this is a note\n") and p, "notes.pt", "not a PyTorch checkpoint: looks like a text file"),
    (lambda p: p.write_bytes(b"") and p, "empty.pth.tar", "is empty (0 bytes)"),
])
def test_non_checkpoint_files_say_what_they_are(tmp_path, maker, name, says):
    path = maker(tmp_path / name) or tmp_path / name
    for load in (load_checkpoint_file, lambda p: openradio.radio_model(str(p), progress=False)):
        with pytest.raises(CheckpointError) as info:
            load(path)
        text = _one_line(info.value)
        assert says in text, text
        assert "allow-list" not in text


def test_truncated_checkpoint_is_one_short_line(tmp_path, good_checkpoint):
    data = good_checkpoint.read_bytes()
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(path)
    text = _one_line(info.value)
    assert "truncated or corrupt" in text and "cut.pth.tar" in text
    assert "miniz" not in text and "PytorchStreamReader" not in text   # the zip library's text: --debug only
    assert "PytorchStreamReader" in str(info.value.__cause__)            # ... where it is kept


def test_cli_debug_shows_the_zip_librarys_text(tmp_path, good_checkpoint, capsys):
    from openradio.cli import main
    data = good_checkpoint.read_bytes()
    path = tmp_path / "cut.pth.tar"
    path.write_bytes(data[: len(data) // 3])
    img = _png(tmp_path / "x.png")
    rc = main(["features", str(img), "--version", str(path), "--out", str(tmp_path / "f.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "miniz" not in err
    with pytest.raises(CheckpointError) as info:
        main(["--debug", "features", str(img), "--version", str(path), "--out", str(tmp_path / "f.safetensors")])
    assert "PytorchStreamReader" in str(info.value.__cause__)
