"""Corrupt, truncated, empty and non-image files in data folders are skipped and counted, in
evaluation (kNN, zero-shot, mode switching) as in training; they never stop the run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _evalutils import make_image_folder

import openradio

BAD = ("garbage.jpg", "truncated.png", "empty.png", "notes.png")


def _spoil(folder: Path) -> list[Path]:
    """Add the four kinds of bad file to the first class folder of an ImageFolder."""
    cls = sorted(d for d in folder.iterdir() if d.is_dir())[0]
    good = next(cls.glob("*.png")).read_bytes()
    (cls / BAD[0]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    (cls / BAD[1]).write_bytes(good[: len(good) // 2])
    (cls / BAD[2]).write_bytes(b"")
    (cls / BAD[3]).write_text("a text file with an image's name\n")
    return [cls / b for b in BAD]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train = make_image_folder(root / "train", classes=("chelsea", "coffee", "rocket"), variants=range(3))
    val = make_image_folder(root / "val", classes=("chelsea", "coffee", "rocket"), variants=range(3, 5))
    bad = _spoil(train) + _spoil(val)
    return train, val, bad


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip", "dino_v2"], progress=False)


def _skipped(rec) -> set[str]:
    return {
        str(w.message).split("skipping unreadable image ", 1)[1].split(" ")[0]
        for w in rec
        if "skipping unreadable image" in str(w.message)
    }


def test_knn_skips_and_counts(folders, model):
    from openradio.eval.data import read_labelled_images
    from openradio.eval.knn import evaluate_knn

    train, val, bad = folders
    tr, va = read_labelled_images(train), read_labelled_images(val)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = evaluate_knn(model, tr, va, 32, k=3, batch_size=4, progress=False)
    assert r.num_train == len(tr) - 4 == 9 and r.num_val == len(va) - 4 == 6
    assert _skipped(rec) == {str(p) for p in bad}


def test_zero_shot_skips_and_counts(folders, model):
    from openradio.eval.data import iterate_batches, read_labelled_images
    from openradio.eval.zero_shot import evaluate_zero_shot

    _, val, bad = folders
    data = read_labelled_images(val)
    clf = torch.nn.functional.normalize(
        torch.randn(model.adaptors["clip"].head_mlp.output_dim, data.num_classes), dim=0
    )
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        (r,) = evaluate_zero_shot(model, clf, data, [32], batch_size=3, progress=False)
    assert r.num_images == len(data) - 4
    assert _skipped(rec) == {str(p) for p in bad if "/val/" in str(p)}
    skipped: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = sum(len(lbl) for _, lbl, _ in iterate_batches(data, 32, 5, skipped=skipped))
    assert n == len(data) - 4 and len(skipped) == 4


def test_mode_switch_skips_and_counts(folders, model):
    from openradio.eval.mode_switch import run_mode_switch
    from openradio.inputs.imageio import list_images
    from openradio.teachers import build_teacher

    _, val, bad = folders
    teacher = build_teacher(
        {
            "name": "dino_v2",
            "type": "dino_v2",
            "model": "dinov2_vitg14_reg",
            "tiny": True,
            "arch_overrides": {"embed_dim": int(model.adaptors["dino_v2"].feat_mlp.output_dim)},
        }
    )
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rows = run_mode_switch(model, teacher, "dino_v2", list_images(val), [32, 64], batch_size=4, progress=False)
    assert len(rows) == 2 and all(r.mse == r.mse for r in rows)
    assert _skipped(rec) == {str(p) for p in bad if "/val/" in str(p)}


def test_training_data_skips_and_counts(folders):
    from openradio.distill.data import ImageListDataset, collate_skip_none
    from openradio.distill.transforms import make_train_transform

    train, _, bad = folders
    ds = ImageListDataset(train, make_train_transform(32))
    batch = collate_skip_none([ds[i] for i in range(len(ds))])
    assert batch["skipped"] == 4 == ds.skipped and batch["image"].shape[0] == len(ds) - 4
