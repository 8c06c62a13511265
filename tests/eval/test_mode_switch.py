"""Mode-switching curve (openradio.eval.mode_switch, `openradio mode-switch`)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _evalutils import make_image_folder

from openradio.eval.mode_switch import (
    CSV_COLUMNS,
    FeatureAgreement,
    ModeSwitchRow,
    align_teacher,
    parse_resolution_range,
    plot_mode_switch,
    resolution_range,
    teacher_resolution,
)


def _direct_stats(s: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    """The definitions, written out on the full (N, C, H, W) tensors."""
    s, t = s.double(), t.double()
    mse = float(((s - t) ** 2).mean())
    cos = 1.0 - float(F.cosine_similarity(s, t, dim=1).mean())
    C = t.shape[1]
    tvar = float(t.transpose(0, 1).reshape(C, -1).var(dim=1, unbiased=False).mean())
    svar = float(s.transpose(0, 1).reshape(C, -1).var(dim=1, unbiased=False).mean())
    return {"MSE": mse, "CosError": cos, "Fidelity": tvar / mse, "PredVariance": svar, "TeacherVariance": tvar}


def test_resolution_schedule():
    r = resolution_range(192, 1536, 16)
    assert r[0] == 192 and r[-1] == 1536 and len(r) == (1536 - 192) // 16 + 1
    # the official floor/ceil rounding to the step
    assert resolution_range(196, 1536, 14)[0] == 196 and resolution_range(196, 1536, 14)[-1] == 1540
    assert resolution_range(200, 250, 16) == [192, 208, 224, 240, 256]
    assert parse_resolution_range("32:64", 16) == [32, 48, 64]
    assert parse_resolution_range("32:96:32", 16) == [32, 64, 96]
    assert parse_resolution_range("224,448", 16) == [224, 448]
    with pytest.raises(ValueError, match="START:STOP"):
        parse_resolution_range("big", 16)
    # grids line up: a 16-px student at 224 has 14x14 tokens, a 14-px teacher at 196 too
    assert teacher_resolution(224, 16, 14) == 196 and teacher_resolution(1536, 16, 14) == 1344


def test_feature_agreement_matches_definitions():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 6, 3, 4, generator=g)
    t = 0.5 * s + torch.randn(5, 6, 3, 4, generator=g) + torch.arange(6.0).view(1, 6, 1, 1)
    acc = FeatureAgreement()
    acc.update(s[:2], t[:2])  # streamed in two uneven batches
    acc.update(s[2:], t[2:])
    got, want = acc.result(), _direct_stats(s, t)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-9), k
    with pytest.raises(ValueError, match="differ"):
        acc.update(s, t[..., :2])


def test_align_teacher_bilinear_corners():
    t = torch.randn(2, 3, 4, 4)
    assert align_teacher(t, (4, 4)) is t
    up = align_teacher(t, (7, 7))
    assert up.shape == (2, 3, 7, 7)
    # align_corners=True keeps the corner values
    torch.testing.assert_close(up[..., 0, 0], t[..., 0, 0])
    torch.testing.assert_close(up[..., -1, -1], t[..., -1, -1])


def test_plot_png(tmp_path):
    from PIL import Image

    rows = {
        name: [ModeSwitchRow(r, mse, 0.1, 1.0, 1.0, 1.0) for r, mse in zip(range(192, 400, 16), values)]
        for name, values in {"A": [1.0 + i for i in range(13)], "B": [3.0] * 13}.items()
    }
    path = plot_mode_switch(rows, tmp_path / "p.png", size_px=(800, 500))
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (800, 500)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 10  # not a blank canvas: lines, text, legend


def _read_csv(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _tiny_teacher_conf(model) -> dict:
    """What `--tiny-teacher` builds: the checkpoint's dino_v2 teacher, tiny, as wide as the student's adaptor."""
    import argparse

    from openradio.commands.mode_switch import teacher_config

    adaptor = model.adaptors["dino_v2"]
    conf = teacher_config(
        adaptor.teacher_conf,
        argparse.Namespace(teacher="dino_v2", teacher_model=None, teacher_weights=None, tiny_teacher=True),
        adaptor,
    )
    assert conf["tiny"] and conf["arch_overrides"]["embed_dim"] == 48
    return conf


def test_cli_two_models_csv_matches_direct_computation(tmp_path, tiny_checkpoint):
    import openradio
    from openradio.cli import main
    from openradio.inputs.imageio import load_image, resize_center_crop
    from openradio.teachers import build_teacher
    from openradio.verify.testing import make_tiny_checkpoint

    data = make_image_folder(tmp_path / "imgs", classes=("astronaut", "chelsea", "coffee"), variants=range(2))
    other = make_tiny_checkpoint(tmp_path / "other.pth.tar", seed=1)
    model = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["dino_v2"], progress=False)
    # a tiny random teacher, saved so the command and this test use the same weights
    teacher = build_teacher(_tiny_teacher_conf(model)).eval()
    tw = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), tw)

    out = tmp_path / "out"
    rc = main(
        [
            "mode-switch",
            "--version",
            str(tiny_checkpoint),
            "--version",
            str(other),
            "--teacher",
            "dino_v2",
            "--data",
            str(data),
            "--tiny-teacher",
            "--teacher-weights",
            str(tw),
            "--resolutions",
            "32:64",
            "--out",
            str(out),
            "--no-progress",
            "--batch-size",
            "4",
        ]
    )
    assert rc == 0
    names = [Path(v).name.replace(".pth.tar", "") for v in (tiny_checkpoint, other)]
    csvs = [out / f"mode_switch_dino_v2_{n}.csv" for n in names]
    rows = _read_csv(csvs[0])
    assert list(rows[0].keys()) == list(CSV_COLUMNS)
    assert [int(r["Resolution"]) for r in rows] == [32, 48, 64]
    assert len(_read_csv(csvs[1])) == 3

    # direct computation for one resolution: every image through student and teacher, stats on the full stack
    res = 48
    sp, tp = model.patch_size, teacher.patch_size
    t_res = round(res * tp / sp)
    S, T = [], []
    for p in sorted(data.rglob("*.png")):
        img = load_image(p)
        with torch.no_grad():
            s = model(resize_center_crop(img, res)[None], feature_fmt="NCHW")["dino_v2"].features
            t = teacher(resize_center_crop(img, t_res)[None], resolution=t_res).features.float()
        if t.shape[-2:] != s.shape[-2:]:
            t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=True)
        S.append(s)
        T.append(t)
    want = _direct_stats(torch.cat(S), torch.cat(T))
    row = next(r for r in rows if int(r["Resolution"]) == res)
    for k, v in want.items():
        assert float(row[k]) == pytest.approx(v, rel=1e-5), k

    from PIL import Image

    with Image.open(out / "mode_switch.png") as im:
        assert im.format == "PNG" and im.size == (1000, 600)
