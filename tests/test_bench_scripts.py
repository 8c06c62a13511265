"""The benchmark scripts measure what they claim (no timings asserted)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

import openradio
from openradio.model.vitdet import windowed_blocks
from openradio.testing import make_tiny_checkpoint

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vitdet_breakdown_runs_the_model_steps(tmp_path):
    bv = _load("bench_vitdet")
    model = openradio.radio_model(str(make_tiny_checkpoint(tmp_path / "m.pth.tar")), text_towers=False)
    x = torch.rand(1, 3, 128, 64)
    with torch.no_grad():
        parts, y = bv.breakdown(model, x, 2)
        ref = model.forward_tokens(model.input_conditioner(x), 2)
    assert torch.equal(y, ref)
    assert set(parts) == {"windowed blocks", "global blocks", "layout changes", "rest"}
    assert all(v >= 0 for v in parts.values())


def test_vitdet_flop_bound():
    bv = _load("bench_vitdet")
    sched = windowed_blocks(12, None, 4)
    # all-global: the window argument changes nothing
    assert bv.flops(1024, 768, 12, sched, None, 8) == 12 * (24 * 1032 * 768 ** 2 + 4 * 1032 ** 2 * 768)
    bound = [bv.flops(n, 768, 12, sched, None, 8) / bv.flops(n, 768, 12, sched, 16, 8) for n in (1024, 4096, 16384)]
    assert 1.0 < bound[0] < bound[1] < bound[2] < 12 / 4  # bounded by the global blocks' share
