"""ONNX export: onnxruntime reproduces PyTorch at several input sizes, with adaptors and in ViTDet mode."""

from __future__ import annotations

import pytest
import torch

import openradio
from openradio.verify.testing import make_tiny_checkpoint

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TOL = 1e-4


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in sess.run(None, {"pixel_values": x.numpy()})]


def _max_diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_onnx_backbone_and_adaptors_dynamic_size(tmp_path):
    from openradio.formats.onnx import export_onnx

    teachers = [
        dict(name="clip", type="open_clip"),
        dict(name="sam", type="sam", use_summary=False, fd_upsample_factor=2),
    ]
    ckpt = make_tiny_checkpoint(
        tmp_path / "t.pth.tar", depth=2, teachers=teachers, head_dims={"clip": (8, 12), "sam": (None, 6)}
    )
    model = openradio.radio_model(str(ckpt), adaptor_names=["clip", "sam"], text_towers=False)
    path = export_onnx(model, tmp_path / "m.onnx", adaptor_names=["clip", "sam"])
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [o.name for o in proto.graph.output] == [
        "summary",
        "features",
        "clip_summary",
        "clip_features",
        "sam_summary",
        "sam_features",
    ]
    for h, w in [(64, 64), (48, 112)]:
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            out = model(x, feature_fmt="NCHW")
        ref = [
            out["backbone"].summary,
            out["backbone"].features,
            out["clip"].summary,
            out["clip"].features,
            out["sam"].summary,
            out["sam"].features,
        ]
        got = _run(path, x)
        assert got[5].shape[-2:] == (2 * h // 16, 2 * w // 16)  # the upsampling head follows the input size
        for name, a, b in zip(["summary", "features", "clip_s", "clip_f", "sam_s", "sam_f"], got, ref):
            assert _max_diff(a, b) <= TOL, (h, w, name)
    with pytest.raises(ValueError, match="not attached"):
        export_onnx(model, tmp_path / "x.onnx", adaptor_names=["dino_v2"])
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", opset=13)


def test_export_command_onnx_vitdet(tmp_path):
    from openradio.cli import main

    ckpt = make_tiny_checkpoint(tmp_path / "t8.pth.tar", depth=8)
    out = tmp_path / "w.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--vitdet-window", "2", "--out", str(out)]) == 0
    model = openradio.radio_model(str(ckpt), vitdet_window_size=2)
    assert model.windowed_block_indices == [0, 2, 4, 6]
    plain = openradio.radio_model(str(ckpt))
    for h, w in [(64, 64), (32, 128)]:
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            ref = model(x, feature_fmt="NCHW")
            glob = plain(x, feature_fmt="NCHW")
        summary, feats = _run(out, x)
        assert _max_diff(summary, ref.summary) <= TOL and _max_diff(feats, ref.features) <= TOL, (h, w)
        assert _max_diff(feats, glob.features) > 1e-3  # windows really are in the graph
    # the .pth.tar format is written from a training run folder only
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x.pth.tar")]) == 2
