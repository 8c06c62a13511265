"""Issue 14 item 4 (first half): a text tower whose embedding width differs from the adaptor's
summaries is refused before anything is built or downloaded, in one line."""

from __future__ import annotations

import pytest
from _evalutils import make_image_folder

from openradio.model.text import attach_text_tower, text_tower_problem


@pytest.fixture()
def no_open_clip_builds(monkeypatch):
    import open_clip

    def boom(*a, **k):
        raise AssertionError("a text tower was built")

    monkeypatch.setattr(open_clip, "create_model", boom)
    monkeypatch.setattr(open_clip, "create_model_from_pretrained", boom)


def test_cli_checks_dimensions_before_building(tmp_path, tiny_checkpoint, no_open_clip_builds, capsys):
    from openradio.cli import main

    data = make_image_folder(tmp_path / "imgs", classes=("chelsea", "coffee"), variants=range(1))
    rc = main(
        [
            "zero-shot",
            "--version",
            str(tiny_checkpoint),
            "--data",
            str(data),
            "--resolutions",
            "32",
            "--no-progress",
            "--no-cache",
            "--out",
            str(tmp_path / "zs"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "32-dim" in err and "1024-dim" in err and "ViT-H-14-378-quickgelu" in err, err
    assert "--text-model" in err


def test_library_checks_dimensions_eagerly_and_lazily(tiny_checkpoint, no_open_clip_builds):
    import openradio

    model = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], progress=False, text_towers=False)
    adaptor = model.adaptors["clip"]
    assert "32-dim" in text_tower_problem(adaptor, "ViT-H-14-378-quickgelu")
    with pytest.raises(ValueError, match="1024-dim"):
        attach_text_tower(adaptor, adaptor.teacher_conf)
    attach_text_tower(adaptor, adaptor.teacher_conf, lazy=True)  # loading a model stays quiet ...
    with pytest.raises(ValueError, match="1024-dim"):  # ... the first use says why not
        adaptor.tokenizer(["a cat"])
