"""Issue 14 item 5: ``preferred_resolution`` of a model loaded from a local file: the checkpoint's
own record, else the released version the file is, else timm's ``args.input_size``, else None."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

import openradio
from openradio.versions import VERSIONS

MINI = Path(__file__).resolve().parents[1] / "fixtures" / "official-mini" / "tiny_radio_v25_norm.pth.tar"


def _rewrite(dst: Path, **args) -> Path:
    with torch.serialization.safe_globals([argparse.Namespace]):
        chk = torch.load(MINI, weights_only=True)
    for k, v in args.items():
        setattr(chk["args"], k, v)
    torch.save(chk, dst)
    return dst


def test_recorded_preferred_resolution_wins(tmp_path):
    m = openradio.radio_model(
        str(_rewrite(tmp_path / "m.pth.tar", preferred_resolution=[256, 384], input_size=(3, 224, 224))), progress=False
    )
    assert m.preferred_resolution == openradio.Resolution(256, 384)
    assert isinstance(m.preferred_resolution, openradio.Resolution)


def test_training_input_size_is_the_fallback(tmp_path):
    m = openradio.radio_model(str(_rewrite(tmp_path / "m.pth.tar", input_size=(3, 192, 160))), progress=False)
    assert m.preferred_resolution == openradio.Resolution(192, 160)


def test_a_released_file_by_path_gets_its_versions_resolution(tmp_path):
    v = VERSIONS["radio_v2.5-b"]
    path = tmp_path / v.filename
    shutil.copy(MINI, path)
    m = openradio.radio_model(str(path), progress=False)
    assert m.preferred_resolution == openradio.Resolution(*v.preferred_resolution)


def test_nothing_recorded_is_none_as_documented():
    """As the official loader: a file that records no resolution has none (docs/api.md says so)."""
    assert openradio.radio_model(str(MINI), progress=False).preferred_resolution is None
    readme = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    assert "`preferred_resolution` is `None`" in readme


def test_trainer_export_records_its_training_resolution(tmp_path):
    """The trainer's export writes args.preferred_resolution (the largest resolution of the last stage)."""
    from openradio.distill.config import load_config
    from openradio.distill.student import preferred_resolution_of

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    assert preferred_resolution_of(cfg) == [128, 128]
