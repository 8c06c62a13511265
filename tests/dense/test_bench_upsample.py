"""benchmarks/bench_upsample.py measures what it claims (no timings asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_upsample.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_upsample", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_metrics_on_known_maps():
    b = _load()
    gt = torch.zeros(1, 16, 16, dtype=torch.long)
    gt[:, :, 8:] = 1
    assert b.metrics(gt, gt, 2, 2) == {"miou": 1.0, "boundary_iou": 1.0, "edge_precision": 1.0, "edge_recall": 1.0}
    shifted = torch.zeros_like(gt)
    shifted[:, :, 12:] = 1
    m = b.metrics(shifted, gt, 2, 2)
    assert m["boundary_iou"] < m["miou"] < 1.0 and m["edge_precision"] == 0.0


def test_bilateral_beats_bilinear_on_boundaries(tiny_model, capsys):
    b = _load()
    r = b.compare(tiny_model, size=64, resolution=64, classes=3, n_train=8, n_val=4, epochs=15, repeats=1)
    assert set(r) == {"bilinear", "bilateral"}
    assert r["bilateral"]["boundary_iou"] > r["bilinear"]["boundary_iou"]
    assert r["bilateral"]["miou"] >= r["bilinear"]["miou"] - 0.02
