"""`openradio demo`: the bundled photographs, the embedded recipe, the offline run end to end through
the CLI (few steps, few resolutions), the released-model path on a local checkpoint with a tiny
teacher, and the one-line error when a release cannot be downloaded."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import openradio
from openradio import demo as demo_mod
from openradio.cli import main as cli_main
from openradio.demo import DemoSettings, run_demo, tiny_recipe
from openradio.inputs.sample_data import (
    EVAL_IMAGES,
    SAMPLE_IMAGES,
    available_images,
    load_sample_image,
    write_sample_images,
    write_sample_split,
)

REPO = Path(__file__).resolve().parents[2]

SMALL = dict(
    mode_switch_resolutions=(64, 96, 128),
    viz_resolutions=(64, 128),
    viz_images=1,
    bench_resolutions=(64,),
    bench_batch_size=2,
    bench_iters=1,
    eval_batch_size=4,
)


# -- sample photographs --------------------------------------------------------------------------------
def test_demo_reads_the_shipped_recipe_which_is_package_data():
    """One tiny recipe: the repository's configs/ is the package's openradio/configs/, which the
    package ships (so an installed demo reads the same file)."""
    import tomllib

    from openradio.distill.config import shipped_recipe

    assert (REPO / "configs").resolve() == (REPO / "openradio" / "configs").resolve()
    assert shipped_recipe("tiny") == (REPO / "openradio" / "configs" / "tiny.yaml")
    assert tiny_recipe() == yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "configs/*.yaml" in data["openradio"]
    with pytest.raises(FileNotFoundError, match="shipped: radio_v2.5-b, radio_v2.5-l, tiny"):
        shipped_recipe("nope")
    assert "TINY_RECIPE_YAML" not in (REPO / "openradio" / "demo" / "__init__.py").read_text()


def test_sample_split_is_disjoint_real_rgb_and_capped(tmp_path):
    split = write_sample_split(tmp_path, max_side=256)
    train = {p.stem for p in split.train}
    held = {p.stem for p in split.eval}
    assert not train & held
    assert held == set(available_images(EVAL_IMAGES))
    assert len(train) >= 12  # more than one batch of the tiny recipe's low-res partition (8)
    assert sorted(p.name for p in split.train_dir.iterdir()) == sorted(p.name for p in split.train)
    for p in split.train + split.eval:
        with Image.open(p) as im:
            assert im.mode == "RGB"
            assert max(im.size) <= 256
            arr = np.asarray(im)
        assert arr.std() > 5  # a photograph, not a blank canvas
    # the written astronaut is the scikit-image photograph, resized
    from skimage import data

    with Image.open(split.train_dir / "astronaut.png") as im:
        written = np.asarray(im.resize((64, 64), Image.Resampling.BILINEAR)).astype(float)
    ref = np.asarray(Image.fromarray(data.astronaut()).resize((64, 64), Image.Resampling.BILINEAR)).astype(float)
    assert np.abs(written - ref).mean() < 3


def test_greyscale_images_become_rgb_and_existing_files_are_kept(tmp_path):
    img = load_sample_image("camera")
    assert img.shape[2] == 3 and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], img[..., 1])
    (path,) = write_sample_images(tmp_path, ["coins"])
    before = path.stat().st_mtime_ns
    write_sample_images(tmp_path, ["coins"])
    assert path.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="unknown sample image 'lena'"):
        write_sample_images(tmp_path, ["lena"])


def test_sklearn_images_are_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if not installed
    names = available_images()
    assert "china" not in names and "flower" not in names
    assert "astronaut" in names
    assert set(names) == {n for n, s in SAMPLE_IMAGES.items() if s.source == "skimage"}


# -- the offline demo through the CLI --------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    mp = pytest.MonkeyPatch()
    # the CLI builds its settings from DemoSettings(): make them small for the test
    mp.setattr(demo_mod, "DemoSettings", lambda: DemoSettings(**SMALL))
    try:
        rc = cli_main(["demo", "--out", str(out), "--steps", "4", "--no-progress"])
    finally:
        mp.undo()
    assert rc == 0
    return out


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_offline_report_files(offline_report):
    out = offline_report
    for name in (
        "report.md",
        "report.html",
        "summary.json",
        "model.pth.tar",
        "mode_switch.csv",
        "throughput.csv",
        "training_metrics.csv",
        "mode_switch.png",
        "training.png",
    ):
        assert (out / name).is_file(), name
    pngs = sorted(out.glob("*.png")) + sorted((out / "pictures").glob("*.png"))
    assert len(pngs) == 3  # mode switch, training, one picture grid
    for p in pngs:
        with Image.open(p) as im:
            im.load()
            assert im.width > 100 and im.height > 100
            assert np.asarray(im.convert("L")).std() > 1  # something was drawn
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert sorted(srcs) == sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))
    assert sorted(srcs) == sorted(p.relative_to(out).as_posix() for p in pngs)
    assert "Mode switching" in md and "Throughput" in md and "Training" in md


def test_offline_metrics_are_finite(offline_report):
    out = offline_report
    ms = _read_csv(out / "mode_switch.csv")
    assert {(r["teacher"], r["model"]) for r in ms} == {
        (t, m) for t in ("dino_v2", "sam") for m in ("trained", "untrained")
    }
    assert {int(r["resolution"]) for r in ms} == {64, 96, 128}
    for r in ms:
        for k in ("mse", "cos_error", "fidelity", "teacher_variance"):
            assert math.isfinite(float(r[k])) and float(r[k]) >= 0, (k, r)
    bench = _read_csv(out / "throughput.csv")
    assert [int(r["resolution"]) for r in bench] == [64]
    assert float(bench[0]["images_per_s"]) > 0 and math.isfinite(float(bench[0]["speed_ratio"]))
    train = _read_csv(out / "training_metrics.csv")
    assert [int(r["step"]) for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) for r in train)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4
    assert summary["timings_s"]["total"] > summary["timings_s"]["training"] > 0
    assert summary["final_loss"] < summary["first_loss"]  # four steps already reduce the loss


def test_offline_checkpoint_loads_and_differs_from_untrained(offline_report):
    out = offline_report
    model = openradio.radio_model(str(out / "model.pth.tar"), adaptor_names=["clip", "siglip", "dino_v2", "sam"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    assert set(y) == {"backbone", "clip", "siglip", "dino_v2", "sam"}
    assert all(torch.isfinite(o.features).all() for o in y.values())
    assert y["dino_v2"].features.shape[-1] == model.adaptors["dino_v2"].feat_mlp.output_dim
    base = openradio.radio_model(str(out / "train" / "untrained.pth.tar"))
    with torch.no_grad():
        assert not torch.allclose(base(x).features, y["backbone"].features)


def test_rerun_replaces_the_training_folder_but_refuses_foreign_ones(tmp_path):
    previous = tmp_path / "prev" / "train"
    (previous / "checkpoints").mkdir(parents=True)
    (previous / "config.yaml").write_text("x: 1\n")
    (previous / "metrics.csv").write_text("step,loss\n1,2.0\n")
    demo_mod.prepare_train_dir(previous)  # a previous demo's run: removed, so the trainer starts afresh
    assert not previous.exists()
    out = tmp_path / "o"
    (out / "train").mkdir(parents=True)
    (out / "train" / "notes.txt").write_text("mine")
    rc = cli_main(["demo", "--out", str(out), "--steps", "1", "--no-progress"])
    assert rc == 2
    assert (out / "train" / "notes.txt").read_text() == "mine"


# -- the released-model path -----------------------------------------------------------------------------
def test_version_path_on_a_local_checkpoint_with_a_tiny_teacher(tiny_checkpoint, tmp_path):
    report = run_demo(
        tmp_path / "r", version=str(tiny_checkpoint), progress=False, tiny_teacher=True, settings=DemoSettings(**SMALL)
    )
    out = report.parent
    ms = _read_csv(out / "mode_switch.csv")
    assert {r["teacher"] for r in ms} == {"dino_v2"} and len(ms) == 3
    assert all(math.isfinite(float(r["mse"])) for r in ms)
    assert not (out / "model.pth.tar").exists() and not (out / "training.png").exists()
    text = report.read_text()
    assert "Dry run" in text and "Training" not in text.split("## ")[1:][0]
    assert (out / "report.html").is_file() and len(list((out / "pictures").glob("*.png"))) == 1
    # the report says what happened (issue 14 item 6): a local file, not a release; nothing downloaded;
    # the dry run is stated where its numbers are; parameter counts of small networks are not "0.0 M"
    sections = _sections(text)
    assert "released" not in text.lower() and "download" not in sections["Timings"]
    assert f"local checkpoint {tiny_checkpoint.name}" in text
    assert not re.search(r"\b0\.0 M\b", text)
    assert "dry run" in sections["Mode switching"].lower() and "dry run" in sections["Feature pictures"].lower()
    assert json.loads((out / "summary.json").read_text())["dry_run"] is True
    n_eval = len(list((out / "data").glob("eval*/*")))
    assert f"1 of the {n_eval} held-out photographs" in sections["Feature pictures"]


def _sections(md: str) -> dict:
    return {part.split("\n", 1)[0].strip(): part for part in md.split("\n## ")[1:]}


def test_offline_report_counts_what_it_shows(offline_report):
    """The report says how many pictures it shows of how many held-out photographs."""
    text = (offline_report / "report.md").read_text()
    n_eval = len(list((offline_report / "data").glob("eval*/*")))
    n_pics = len(list((offline_report / "pictures").glob("*.png")))
    assert f"{n_pics} of the {n_eval} held-out photographs" in _sections(text)["Feature pictures"]
    assert "released" not in text.lower()


def test_version_offline_gives_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached checkpoint

    def no_network(url, dst, *a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    rc = cli_main(["demo", "--version", "radio_v2.5-b", "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert "radio_v2.5-b" in err and "without a network" in err
    assert not (tmp_path / "r" / "report.md").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--version", "radio_v2.5-b", "--steps", "5"], "--steps applies to the offline demo"),
        (["--tiny-teacher"], "--tiny-teacher only applies with --version"),
        (["--version", "no-such-model"], "Unknown RADIO version 'no-such-model'"),
    ],
)
def test_bad_flags_fail_with_one_line(argv, message, tmp_path, capsys):
    rc = cli_main(["demo", "--out", str(tmp_path / "r"), "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err


def test_offline_zero_shot_agreement_and_the_cli_reproduces_it(offline_report, tmp_path):
    """Issue 14 item 4: the demo's clip/siglip teachers come with text towers named in the checkpoint;
    the report gives the adaptor's agreement with its teacher's own zero-shot predictions, and
    `openradio zero-shot` on the demo's checkpoint (no --text-model) gives the same numbers."""
    out = offline_report
    summary = json.loads((out / "summary.json").read_text())["zero_shot"]
    assert set(summary) == {"clip", "siglip"}
    for per_model in summary.values():
        assert set(per_model) == {"trained", "untrained"}
        for per_res in per_model.values():
            assert set(per_res) == {"64", "128", "256"}
            assert all(0 <= v["top1"] <= v["top5"] <= 100 for v in per_res.values())
    assert "## Zero-shot" in (out / "report.md").read_text()
    for teacher in ("clip", "siglip"):
        rc = cli_main(
            [
                "zero-shot",
                "--version",
                str(out / "model.pth.tar"),
                "--adaptor",
                teacher,
                "--data",
                str(out / "zero_shot" / f"{teacher}_teacher_labels.tsv"),
                "--classnames",
                str(out / "zero_shot" / "classnames.txt"),
                "--templates",
                "base",
                "--resolutions",
                "64,128,256",
                "--no-cache",
                "--no-progress",
                "--out",
                str(tmp_path / teacher),
            ]
        )
        assert rc == 0
        rows = _read_csv(tmp_path / teacher / "zero_shot.csv")
        assert {r["Resolution"]: float(r["Top1"]) for r in rows} == pytest.approx(
            {res: v["top1"] for res, v in summary[teacher]["trained"].items()}
        )
