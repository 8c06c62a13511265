"""Hostile and broken checkpoint files: every loader refuses code-running pickles before any code
runs, and every broken file is one line that says what the file is and what to do."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

import openradio
from openradio.formats.official import load_checkpoint_file
from openradio.formats.safeload import CheckpointError


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text.strip(), text
    assert len(text) < 400, text
    return text


# -- item 3: the file is not a checkpoint at all -------------------------------------------------
def _png(p: Path) -> Path:
    Image.new("RGB", (8, 8), (200, 30, 30)).save(p, format="PNG")
    return p


def _jpeg(p: Path) -> Path:
    Image.new("RGB", (8, 8)).save(p, format="JPEG")
    return p


@pytest.mark.parametrize(
    "maker,name,says",
    [
        (_png, "model.pth.tar", "not a PyTorch checkpoint: looks like a PNG image"),
        (_jpeg, "model.pth", "not a PyTorch checkpoint: looks like a JPEG image"),
        (
            lambda p: p.write_text('{"args": {}, "weights": [1, 2]}') and p,
            "model.pth.tar",
            "not a PyTorch checkpoint: looks like a JSON document",
        ),
        (
            lambda p: p.write_text("hello, this is a note\n") and p,
            "notes.pt",
            "not a PyTorch checkpoint: looks like a text file",
        ),
        (lambda p: p.write_bytes(b"") and p, "empty.pth.tar", "is empty (0 bytes)"),
    ],
)
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
    assert "miniz" not in text and "PytorchStreamReader" not in text  # the zip library's text: --debug only
    assert "PytorchStreamReader" in str(info.value.__cause__)  # ... where it is kept


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


# -- every loader refuses a pickle that would run code, and the code never runs ----------------------
class _Evil:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _evil_files(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    marker = tmp_path / "PWNED"
    evil = _Evil(marker)
    files = {}
    files["zip"] = tmp_path / "zip.pth.tar"
    torch.save({"args": evil, "state_dict": {"x": torch.zeros(2)}}, files["zip"])
    files["legacy"] = tmp_path / "legacy.pth.tar"
    torch.save({"args": evil, "state_dict": {}}, files["legacy"], _use_new_zipfile_serialization=False)
    files["raw"] = tmp_path / "raw.pth.tar"
    files["raw"].write_bytes(pickle.dumps({"state_dict": evil}, protocol=2))
    assert not marker.exists()
    return marker, files


def test_official_loader_refuses_code_running_pickles(tmp_path):
    marker, files = _evil_files(tmp_path)
    for kind, path in files.items():
        for load in (load_checkpoint_file, lambda p: openradio.radio_model(str(p), progress=False)):
            with pytest.raises(CheckpointError, match="refusing to load") as info:
                load(path)
            _one_line(info.value)
            assert "posix.mkdir" in str(info.value) or "os.mkdir" in str(info.value), (kind, str(info.value))
    # a newer pickle protocol: refused as well (the safe unpickler stops at the first unknown opcode)
    raw4 = tmp_path / "raw4.pth.tar"
    raw4.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=4))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(raw4)
    _one_line(info.value)
    assert not marker.exists(), "unpickling ran code"


def test_training_state_loader_refuses_code_running_pickles(tmp_path):
    from openradio.distill.checkpointing import CheckpointManager

    marker, files = _evil_files(tmp_path)
    mgr = CheckpointManager(tmp_path / "ckpts")
    mgr.dir.mkdir()
    for step, path in enumerate(files.values(), 1):
        mgr.path_for(step).write_bytes(path.read_bytes())
        with pytest.raises(CheckpointError, match="refusing to load") as info:
            mgr.load(step)
        _one_line(info.value)
    with (
        pytest.warns(UserWarning, match="skipping unreadable checkpoint"),
        pytest.raises(RuntimeError, match="none of the 3 checkpoints"),
    ):
        mgr.load_latest()
    assert not marker.exists(), "unpickling ran code"


def test_teacher_weights_loader_refuses_code_running_pickles(tmp_path):
    from openradio.teachers import load_state_dict_file

    marker, files = _evil_files(tmp_path)
    for path in files.values():
        with pytest.raises(CheckpointError, match="refusing to load") as info:
            load_state_dict_file(path)
        _one_line(info.value)
    # a pickle disguised as safetensors (HF folders, teacher weights): refused, one line
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(files["zip"].read_bytes())
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(disguised)
    _one_line(info.value)
    assert not marker.exists(), "unpickling ran code"


def test_hf_folder_with_a_pickle_for_weights_is_refused(tmp_path, good_checkpoint):
    from openradio.formats.hf import save_hf

    marker, files = _evil_files(tmp_path)
    folder = tmp_path / "hf"
    save_hf(openradio.radio_model(str(good_checkpoint), progress=False), folder, version="mini")
    (folder / "model.safetensors").write_bytes(files["zip"].read_bytes())
    with pytest.raises(CheckpointError) as info:
        openradio.radio_model(str(folder), progress=False)
    _one_line(info.value)
    assert not marker.exists()


# -- broken files: one line each -----------------------------------------------------------------------
def test_bit_flipped_checkpoint_is_caught(tmp_path, good_checkpoint):
    """torch.load does not verify the zip's CRC-32s: a flipped bit in the weights would load silently."""
    data = bytearray(good_checkpoint.read_bytes())
    for frac in (0.3, 0.6, 0.9):
        d = bytearray(data)
        d[int(len(d) * frac)] ^= 0x10
        path = tmp_path / f"flip{frac}.pth.tar"
        path.write_bytes(bytes(d))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint_file(path)
        text = _one_line(info.value)
        assert "corrupt" in text and path.name in text


def test_bit_flipped_training_state_is_skipped(tmp_path):
    from openradio.distill.checkpointing import CheckpointManager

    mgr = CheckpointManager(tmp_path / "ckpts")
    mgr.save({"w": torch.arange(4096, dtype=torch.float32)}, 1)
    mgr.save({"w": torch.arange(4096, dtype=torch.float32) * 2}, 2)
    p = mgr.path_for(2)
    d = bytearray(p.read_bytes())
    d[len(d) // 2] ^= 0x01
    p.write_bytes(bytes(d))
    with pytest.warns(UserWarning, match="step-00000002.pt.*corrupt"):
        state, step = mgr.load_latest()
    assert step == 1 and torch.equal(state["w"], torch.arange(4096, dtype=torch.float32))


def _rewritten(src: Path, dst: Path, edit) -> Path:
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        chk = torch.load(src, weights_only=True)
    edit(chk)
    torch.save(chk, dst)
    return dst


def test_wrong_architecture_is_one_line(tmp_path, good_checkpoint):
    def other_width(chk):
        chk["args"].model_kwargs = dict(chk["args"].model_kwargs, embed_dim=64)

    path = _rewritten(good_checkpoint, tmp_path / "arch.pth.tar", other_width)
    with pytest.raises(CheckpointError) as info:
        openradio.radio_model(str(path), progress=False)
    text = _one_line(info.value)
    assert "does not match the checkpoint" in text or "shape" in text


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_wrong_dtype_is_one_line(tmp_path, good_checkpoint, dtype):
    def cast(chk):
        k = next(k for k in chk["state_dict"] if k.endswith("blocks.0.attn.qkv.weight"))
        chk["state_dict"][k] = chk["state_dict"][k].to(dtype)

    path = _rewritten(good_checkpoint, tmp_path / "dtype.pth.tar", cast)
    with pytest.raises(CheckpointError) as info:
        openradio.radio_model(str(path), progress=False)
    text = _one_line(info.value)
    assert "blocks.0.attn.qkv.weight" in text and str(dtype).replace("torch.", "") in text


def _loaders(tmp_path):
    """Each loader as path -> result, with where it expects its file."""
    from openradio.distill.checkpointing import CheckpointManager
    from openradio.teachers import load_state_dict_file

    mgr = CheckpointManager(tmp_path / "ckpts")

    def training_state(src: Path):
        mgr.dir.mkdir(exist_ok=True)
        mgr.path_for(7).write_bytes(src.read_bytes())
        return mgr.load(7)

    return {
        "official": load_checkpoint_file,
        "radio_model": lambda p: openradio.radio_model(str(p), progress=False),
        "training state": training_state,
        "teacher weights": load_state_dict_file,
    }


@pytest.mark.parametrize("damage", ["empty", "truncated", "bit flip", "png"])
def test_every_loader_gives_one_line_for_a_damaged_file(tmp_path, good_checkpoint, damage):
    data = good_checkpoint.read_bytes()
    bad = tmp_path / "damaged.pth.tar"
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "bit flip":
        d = bytearray(data)
        d[len(d) // 2] ^= 0x04
        bad.write_bytes(bytes(d))
    else:
        _png(bad)
    for name, load in _loaders(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load(bad)
        text = _one_line(info.value)
        assert {"empty": "empty", "truncated": "truncated", "bit flip": "checksum", "png": "PNG"}[damage] in text, (
            name,
            text,
        )
