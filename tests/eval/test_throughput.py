"""The throughput timer and the RADIO benchmark library (no absolute-time expectations)."""

from __future__ import annotations

import math
import statistics
import time

import pytest
import torch

import openradio
from openradio.eval import throughput
from openradio.eval.throughput import bench_model, format_table, make_timm_baseline, measure_pair, measure_throughput


class Counter:
    def __init__(self, sleep: float = 0.0):
        self.calls = 0
        self.inputs = []
        self.sleep = sleep

    def __call__(self, x):
        self.calls += 1
        self.inputs.append(x)
        if self.sleep:
            time.sleep(self.sleep)
        return x


@pytest.mark.parametrize("iters,warmup", [(1, 0), (5, 3)])
def test_measure_throughput_counts_calls_and_reuses_one_input(iters, warmup):
    fn = Counter()
    made = []

    def make_input():
        made.append(1)
        return torch.zeros(4, 3, 8, 8)

    m = measure_throughput(fn, make_input, iters=iters, warmup=warmup)
    assert fn.calls == iters + warmup == m["calls"]
    assert len(made) == 1 and all(x is fn.inputs[0] for x in fn.inputs)
    assert len(m["times_s"]) == iters and m["batch_size"] == 4
    # throughput and latency are one measurement seen two ways
    assert m["latency_ms"] == pytest.approx(1000 * statistics.median(m["times_s"]))
    assert m["images_per_s"] == pytest.approx(4 / statistics.median(m["times_s"]))
    assert m["latency_ms_min"] <= m["latency_ms"] <= m["latency_ms_max"]
    assert m["total_s"] == pytest.approx(sum(m["times_s"]))


def test_measure_throughput_times_the_calls_it_makes():
    # a lower bound only: a sleeping function cannot be timed as faster than its sleep
    m = measure_throughput(Counter(sleep=0.02), lambda: torch.zeros(2, 1), iters=3, warmup=1)
    assert min(m["times_s"]) >= 0.02
    assert m["images_per_s"] <= 2 / 0.02


def test_measure_throughput_explicit_batch_size_and_bad_arguments():
    m = measure_throughput(Counter(), lambda: {"not": "a tensor"}, iters=2, warmup=0, batch_size=16)
    assert m["batch_size"] == 16
    assert measure_throughput(Counter(), lambda: None, iters=1, warmup=0)["batch_size"] == 1
    with pytest.raises(ValueError, match="iters"):
        measure_throughput(Counter(), lambda: None, iters=0)
    with pytest.raises(ValueError, match="warmup"):
        measure_throughput(Counter(), lambda: None, iters=1, warmup=-1)


def test_measure_throughput_runs_under_inference_mode():
    seen = []
    measure_throughput(
        lambda x: seen.append(torch.is_inference_mode_enabled()), lambda: torch.zeros(1), iters=2, warmup=1
    )
    assert seen == [True, True, True]


class FakeClock:
    """A clock that only moves when the functions under test say so: exact, load-independent timings."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def work(self, seconds, log=None, name=None):
        def fn(x):
            if log is not None:
                log.append(name)
            self.now += seconds(len(log)) if callable(seconds) else seconds

        return fn


def test_measure_throughput_with_a_fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(throughput, "_clock", clock)
    m = measure_throughput(clock.work(0.25), lambda: torch.zeros(3, 2), iters=4, warmup=2)
    assert m["times_s"] == [0.25] * 4
    assert m["latency_ms"] == pytest.approx(250) and m["images_per_s"] == pytest.approx(3 / 0.25)


def test_measure_pair_alternates_and_takes_the_median_pair_ratio(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(throughput, "_clock", clock)
    log = []
    # the model takes 1 s, the baseline 3 s, except one baseline call disturbed by other load (30 s)
    model = clock.work(1.0, log, "m")
    base = clock.work(lambda n: 30.0 if n == 8 else 3.0, log, "b")  # n: calls so far
    res = measure_pair(model, base, lambda: torch.zeros(2, 1), iters=5, warmup=1)
    # warm-up pair, then alternating order: m b | b m | m b | b m | m b
    assert log == ["m", "b"] + ["m", "b", "b", "m", "m", "b", "b", "m", "m", "b"]
    assert res["model"]["calls"] == res["baseline"]["calls"] == 6
    assert res["model"]["times_s"] == [1.0] * 5
    assert sorted(res["pair_ratios"]) == [3.0] * 4 + [30.0]
    assert res["speed_ratio"] == 3.0  # the median ignores the disturbed pair
    assert res["baseline"]["images_per_s"] == pytest.approx(2 / 3.0)
    with pytest.raises(ValueError, match="iters"):
        measure_pair(model, base, lambda: None, iters=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return openradio.radio_model(str(tiny_checkpoint))


def test_timm_baseline_has_the_models_width_and_depth(tiny_model):
    vit = make_timm_baseline(tiny_model, 64, 96)
    assert len(vit.blocks) == len(tiny_model.blocks)
    assert vit.embed_dim == tiny_model.embed_dim
    assert vit.patch_embed.patch_size[0] == tiny_model.patch_size
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        tokens = vit.forward_features(x)
        plain = make_timm_baseline(tiny_model, 64, 96, match_prefix=False).forward_features(x)
        radio = tiny_model.forward_tokens(tiny_model.input_conditioner(x), None)
    # like for like: as many prefix tokens (class + timm registers) as RADIO's summary tokens and
    # registers, so the sequences have one length; timm's default is one class token
    assert tiny_model.num_prefix_tokens > 1
    assert tokens.shape == radio.shape == (1, tiny_model.num_prefix_tokens + 4 * 6, tiny_model.embed_dim)
    assert vit.num_prefix_tokens == tiny_model.num_prefix_tokens
    assert plain.shape == (1, 1 + 4 * 6, tiny_model.embed_dim)


def test_bench_model_rows_ratios_and_window_restored(tiny_model):
    assert tiny_model.window_size is None
    rows = bench_model(
        tiny_model, [64, 100], batch_size=2, baseline="global", vitdet_window=2, iters=3, warmup=1, progress=False
    )
    assert tiny_model.window_size is None  # ViTDet was switched on only while measuring
    assert all(r["timed_calls"] == 3 and r["stat"] == "median" for r in rows)
    # 100 is not a multiple of the ViTDet step (patch 16 x window 2): it is rounded
    step = tiny_model.patch_size * 2
    assert [(r["height"], r["width"]) for r in rows] == [(64, 64), (round(100 / step) * step,) * 2]
    for r in rows:
        assert r["mode"] == "vitdet-2" and r["baseline"] == "global"
        for k in ("images_per_s", "latency_ms", "baseline_images_per_s", "baseline_latency_ms", "speed_ratio"):
            assert math.isfinite(r[k]) and r[k] > 0
    table = format_table(rows)
    assert "speed ratio" in table and "time ratio" in table and len(table.splitlines()) == 2 + len(rows)


def test_bench_model_without_baseline_and_errors(tiny_model):
    rows = bench_model(tiny_model, [32], batch_size=1, baseline="none", iters=1, warmup=0, progress=False)
    assert "baseline" not in rows[0] and rows[0]["images_per_s"] > 0
    assert "speed ratio" not in format_table(rows)
    with pytest.raises(ValueError, match="ViTDet window"):
        bench_model(tiny_model, [64], baseline="global", progress=False)
    with pytest.raises(ValueError, match="baseline"):
        bench_model(tiny_model, [64], baseline="onnx", progress=False)
    best = bench_model(tiny_model, [32], batch_size=1, baseline="timm", iters=3, warmup=0, stat="min", progress=False)[
        0
    ]
    assert best["stat"] == "min" and best["latency_ms"] > 0 and best["speed_ratio"] > 0
    with pytest.raises(ValueError, match="stat"):
        bench_model(tiny_model, [32], stat="mean", progress=False)
    with pytest.raises(ValueError, match="resolution"):
        bench_model(tiny_model, [], progress=False)
