"""Linear probes on frozen features, on synthetic data whose answer is known."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import openradio
from openradio.eval.probe import load_mask, probe_segmentation, read_segmentation_folder

PALETTE = [(20, 20, 20), (220, 40, 40), (40, 200, 60), (50, 70, 230)]  # class -> colour
PATCH, SIDE = 16, 64


def write_seg_set(root, n, seed, mask_scale=1):
    """Images of 16x16 solid patches, each patch's colour coding its class. ``mask_scale`` pixels of
    mask per patch (1: one label per patch, 16: full resolution); masks are palette PNGs."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    g = SIDE // PATCH
    for i in range(n):
        cls = rng.integers(0, len(PALETTE), size=(g, g)).astype(np.uint8)
        img = np.array(PALETTE, dtype=np.uint8)[np.kron(cls, np.ones((PATCH, PATCH), dtype=np.uint8))]
        Image.fromarray(img).save(root / "images" / f"{i:03d}.png")
        mask = Image.fromarray(np.kron(cls, np.ones((mask_scale, mask_scale), dtype=np.uint8)), mode="L").convert("P")
        mask.putpalette([c for rgb in PALETTE for c in rgb])
        mask.save(root / "masks" / f"{i:03d}.png")
    return root


def test_seg_probe_learns_colour_coded_patches(tiny_checkpoint, tmp_path):
    from openradio.cli import main

    train = write_seg_set(tmp_path / "train", 24, seed=0)
    val = write_seg_set(tmp_path / "val", 8, seed=1)
    assert load_mask(val / "masks" / "000.png").shape == (4, 4)
    rc = main(
        [
            "probe",
            "seg",
            "--version",
            str(tiny_checkpoint),
            "--train",
            str(train),
            "--val",
            str(val),
            "--resolution",
            "64",
            "--epochs",
            "30",
            "--lr",
            "1e-2",
            "--batch-size",
            "8",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    rows = {r["Class"]: r["IoU"] for r in csv.DictReader(open(tmp_path / "out" / "probe_seg.csv"))}
    assert rows == {"0": "1.0000", "1": "1.0000", "2": "1.0000", "3": "1.0000", "mIoU": "1.0000"}
    # the saved head predicts every patch of an image it never saw
    from openradio.eval.probe import LinearSegHead
    from openradio.inputs.imageio import load_image

    model = openradio.radio_model(str(tiny_checkpoint), text_towers=False)
    head = LinearSegHead(model.embed_dim, 4)
    head.load_state_dict(torch.load(tmp_path / "out" / "probe_seg_head.pt"))
    with torch.no_grad():
        pred = head.eval()(model(load_image(val / "images" / "003.png")[None], feature_fmt="NCHW").features)
    assert torch.equal(pred.argmax(1)[0], load_mask(val / "masks" / "003.png"))
    # full-resolution masks: bilinear upsampling of patch logits blurs the corners where three or four
    # patches meet, so the answer is no longer exactly reachable; most pixels still are
    full_tr = write_seg_set(tmp_path / "ftrain", 24, seed=0, mask_scale=PATCH)
    full_va = write_seg_set(tmp_path / "fval", 8, seed=1, mask_scale=PATCH)
    r = probe_segmentation(
        model,
        read_segmentation_folder(full_tr),
        read_segmentation_folder(full_va),
        resolution=64,
        epochs=30,
        lr=1e-2,
        batch_size=8,
        progress=False,
    )
    assert r.pixel_accuracy > 0.9 and r.miou > 0.8 and len(r.iou) == 4


def test_seg_probe_bad_data(tiny_checkpoint, tmp_path):
    model = openradio.radio_model(str(tiny_checkpoint), text_towers=False)
    root = write_seg_set(tmp_path / "s", 2, seed=0)
    Image.new("RGB", (4, 4)).save(root / "masks" / "001.png")
    with pytest.raises(ValueError, match="single-channel class-index"):
        load_mask(root / "masks" / "001.png")
    (root / "masks" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match="has no mask"):
        read_segmentation_folder(root)
    root = write_seg_set(tmp_path / "t", 2, seed=0)
    with pytest.raises(ValueError, match="outside"):
        probe_segmentation(
            model,
            read_segmentation_folder(root),
            read_segmentation_folder(root),
            resolution=64,
            num_classes=2,
            epochs=1,
            progress=False,
        )
    with pytest.raises(ValueError, match="images/ and masks/"):
        read_segmentation_folder(tmp_path)


def test_cls_probe_on_summaries(tiny_checkpoint, tmp_path):
    from openradio.cli import main

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, rgb in enumerate(PALETTE[1:]):
            d = tmp_path / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(rgb)[None, None] + rng.normal(0, 12, (48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    rc = main(
        [
            "probe",
            "cls",
            "--version",
            str(tiny_checkpoint),
            "--train",
            str(tmp_path / "train"),
            "--val",
            str(tmp_path / "val"),
            "--resolution",
            "32",
            "--epochs",
            "50",
            "--lr",
            "1e-2",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    rows = {r["Class"]: r["Accuracy"] for r in csv.DictReader(open(tmp_path / "out" / "probe_cls.csv"))}
    assert rows == {"class0": "1.0000", "class1": "1.0000", "class2": "1.0000", "top-1": "1.0000"}
    # the saved head takes raw summaries (standardisation folded in)
    from openradio.eval.data import read_labelled_images
    from openradio.eval.probe import probe_classification

    model = openradio.radio_model(str(tiny_checkpoint), text_towers=False)
    r = probe_classification(
        model,
        read_labelled_images(tmp_path / "train"),
        read_labelled_images(tmp_path / "val"),
        resolution=32,
        epochs=50,
        lr=1e-2,
        progress=False,
    )
    x = torch.stack(
        [torch.from_numpy(np.array(Image.open(tmp_path / "val" / "class2" / "0.png"))).permute(2, 0, 1).float() / 255]
    )
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        assert r.head(model(x).summary).argmax(-1).item() == 2
