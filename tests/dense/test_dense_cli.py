"""`openradio segment` and `openradio finetune seg` end to end on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from openradio.cli import main

from ._synth import write_layout


def test_segment_command_on_photographs(tiny_checkpoint, tmp_path, capsys):
    from openradio.inputs.sample_data import write_sample_images
    from openradio.model.text import write_random_text_tower

    imgs = tmp_path / "photos"
    write_sample_images(imgs, names=["chelsea", "coffee"], max_side=96)
    cfg, weights = write_random_text_tower(tmp_path / "text", "tiny-clip-text", embed_dim=32)
    out = tmp_path / "seg"
    rc = main(
        [
            "segment",
            str(imgs),
            "--version",
            str(tiny_checkpoint),
            "--prompts",
            "cat, cup ,table",
            "--text-model",
            str(cfg),
            "--text-weights",
            str(weights),
            "--resolution",
            "64",
            "--window",
            "32",
            "--templates",
            "simple",
            "--threshold",
            "-1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    for stem in ("chelsea", "coffee"):
        lab = np.array(Image.open(out / f"{stem}_labels.png"))
        assert lab.min() >= 1 and lab.max() <= 3  # threshold -1: no background
        assert (out / f"{stem}_overlay.png").is_file()
        scores = json.loads((out / f"{stem}_scores.json").read_text())
        assert scores["prompts"] == ["cat", "cup", "table"] and scores["settings"]["attention"] == "scra"
    assert "wrote 2 label maps" in capsys.readouterr().out


def test_segment_command_errors(tiny_checkpoint, tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert (
        main(["segment", str(img), "--version", str(tiny_checkpoint), "--prompts", " , ", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "--prompts is empty" in capsys.readouterr().err


def test_finetune_command_and_resume(tiny_checkpoint, tmp_path, capsys):
    root = write_layout(tmp_path / "voc", "voc")
    out = tmp_path / "run"
    argv = [
        "finetune",
        "seg",
        "--version",
        str(tiny_checkpoint),
        "--data",
        str(root),
        "--resolution",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "0.05",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "(voc), 21 classes" in text and "mIoU" in text
    for name in ("head.safetensors", "head.json", "last.pt", "metrics.jsonl", "predictions.png"):
        assert (out / name).is_file(), name
    # --resume on a finished run trains nothing more and gives the same numbers
    first = (out / "metrics.jsonl").read_text()
    assert main(argv + ["--resume"]) == 0
    assert (out / "metrics.jsonl").read_text() == first
    assert (
        main(
            [
                "finetune",
                "seg",
                "--version",
                str(tiny_checkpoint),
                "--data",
                str(root),
                "--mode",
                "last:x",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "--mode" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,says",
    [
        (["--data", "MISSING"], "not found"),
        (["--train", "X"], "not found"),
    ],
)
def test_finetune_command_bad_data(tiny_checkpoint, tmp_path, capsys, argv, says):
    argv = [a.replace("MISSING", str(tmp_path / "nope")).replace("X", str(tmp_path / "nope2")) for a in argv]
    assert main(["finetune", "seg", "--version", str(tiny_checkpoint), "--out", str(tmp_path / "o")] + argv) == 2
    assert says in capsys.readouterr().err
