"""The features file (openradio.formats.features): what the writer writes the reader reads back,
and the reader refuses other files and newer versions of the format by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from openradio.formats.features import FORMAT, FORMAT_NAME, FORMAT_VERSION, read_features, write_features


def test_round_trip_keeps_every_tensor_and_the_metadata(tmp_path):
    feats = {
        "cat": {
            "backbone": {"summary": torch.randn(1, 8), "features": torch.randn(1, 4, 3, 2)},
            "clip": {"summary": torch.randn(1, 5), "features": torch.randn(1, 6, 3, 2)},
        },
        "dog_1": {"backbone": {"summary": torch.randn(1, 8), "features": torch.randn(1, 4, 2, 2)}},
    }
    path = write_features(tmp_path / "f.safetensors", feats, {"outputs": ["backbone", "clip"], "square": False})
    back, meta = read_features(path)
    assert meta == {"format": FORMAT, "outputs": ["backbone", "clip"], "square": False}
    assert set(back) == {"cat", "dog_1"} and set(back["cat"]) == {"backbone", "clip"}
    for image, outputs in feats.items():
        for output, parts in outputs.items():
            for kind, t in parts.items():
                assert torch.equal(back[image][output][kind], t)


def test_reader_checks_the_format_and_its_version(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": json.dumps("pt")})
    with pytest.raises(ValueError, match="not an openradio features file"):
        read_features(other)
    newer = tmp_path / "newer.safetensors"
    save_file(
        {"a/backbone/summary": torch.zeros(1, 2)},
        str(newer),
        metadata={"format": json.dumps(f"{FORMAT_NAME}/{FORMAT_VERSION + 1}")},
    )
    with pytest.raises(ValueError, match="newer than this openradio reads"):
        read_features(newer)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot read"):
        read_features(text)
    with pytest.raises(ValueError, match="contains '/'"):
        write_features(tmp_path / "bad.safetensors", {"a/b": {"backbone": {"summary": torch.zeros(1, 2)}}}, {})
