"""Issue 14 item 7: flags and messages are the same in every subcommand."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from openradio.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_takes_no_progress(name):
    p = _subparsers()[name]
    if name == "data":
        p = next(a for a in p._actions if a.dest == "data_command").choices["make-shards"]
    assert "--no-progress" in p.format_help(), name


def test_train_no_progress_turns_the_config_off(monkeypatch):
    import openradio.train

    seen = {}

    def fake_run(args):
        from openradio.distill.config import load_config

        seen["cfg"] = load_config(args.config, args.overrides)
        return 0

    monkeypatch.setattr(openradio.train, "run", fake_run)
    assert main(["train", str(REPO / "configs/tiny.yaml"), "data.path=/x", "--no-progress"]) == 0
    assert seen["cfg"].progress is False
    assert main(["train", str(REPO / "configs/tiny.yaml"), "data.path=/x"]) == 0
    assert seen["cfg"].progress is True


def test_make_shards_no_progress_and_warnings_are_one_line(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(src / f"{i}.png")
    (src / "broken.jpg").write_bytes(b"not an image at all")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert main(["data", "make-shards", str(src), str(tmp_path / "out"), "--verify", "--no-progress"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == [
        f"openradio data: warning: leaving out {src / 'broken.jpg'}: cannot decode image: "
        "not an image format PIL recognises"
    ], err
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_cli_warnings_do_not_leak_out_of_main():
    """The one-line warning format is only in force while a command runs."""
    before = warnings.showwarning
    main(["versions"])
    assert warnings.showwarning is before
