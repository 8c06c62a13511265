"""Inference throughput: a generic timer and a RADIO benchmark that reports ratios to a baseline.

Absolute timings depend on the machine and on whatever else runs on it, so every number this
module produces for a model comes with a *baseline measured in the same process, at the same
resolution and batch size*: the same model with global attention (to see what ViTDet windows
buy), or a plain timm ViT of the same width and depth (to see what RADIO's CPE position
embedding and extra prefix tokens cost). The ratio is the number to read.

Each timed call is measured on its own. When a model is compared with a baseline, the two are
called alternately (model, baseline, baseline, model, ...) on the same input, and the ratio is
the median of the per-pair time ratios: on a shared machine the load changes from second to
second, and two calls made next to each other see nearly the same load, so their ratio is far
steadier than the ratio of two separately measured throughputs. Latencies are medians of the
calls by default (``stat='min'``: the least disturbed call).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import timm
import torch
from torch import nn
from tqdm.auto import tqdm

from openradio.eval.data import write_csv
from openradio.model import vit_families
from openradio.runtime import autocast, module_device

__all__ = ["measure_throughput", "measure_pair", "bench_model", "make_timm_baseline", "BASELINES", "format_table"]

BASELINES = ("timm", "global", "none")
STATS = {"median": statistics.median, "min": min}


# the timer; a module attribute so that tests can substitute a deterministic clock
_clock = time.perf_counter


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a sync the timer measures only the launch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_size_of(x: Any) -> Optional[int]:
    if isinstance(x, torch.Tensor) and x.ndim >= 1:
        return int(x.shape[0])
    if isinstance(x, (list, tuple)) and x:
        return _batch_size_of(x[0])
    return None


def measure_throughput(
    fn: Callable[[Any], Any],
    make_input: Callable[[], Any],
    iters: int = 10,
    warmup: int = 2,
    device: torch.device | str | None = None,
    batch_size: Optional[int] = None,
) -> dict:
    """Time ``fn(make_input())``: ``warmup`` untimed calls, then ``iters`` timed ones.

    ``make_input`` is called once (outside the timer) and the same input is reused, so the
    measurement is the function alone. ``batch_size`` (images per call) defaults to the
    input's first dimension. Each call is timed on its own, with a CUDA synchronisation before
    and after it when ``device`` is a CUDA device.

    Returns ``{'iters', 'warmup', 'batch_size', 'calls', 'total_s', 'latency_ms' (median per
    call), 'latency_ms_mean', 'latency_ms_min', 'latency_ms_max', 'images_per_s'
    (batch_size / median latency), 'times_s' (every timed call)}``.
    """
    device, x, batch_size = _prepare(iters, warmup, device, make_input, batch_size)
    calls = 0
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
            calls += 1
        _sync(device)
        times = []
        for _ in range(iters):
            times.append(_timed_call(fn, x, device))
            calls += 1
    return _summary(times, batch_size, iters=iters, warmup=warmup, calls=calls)


def _prepare(iters: int, warmup: int, device, make_input: Callable[[], Any], batch_size: Optional[int]):
    """Check the counts, resolve the device and build the one input both timers reuse."""
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    x = make_input()
    if batch_size is None:
        batch_size = _batch_size_of(x) or 1
    return device, x, batch_size


def _timed_call(fn: Callable[[Any], Any], x: Any, device: torch.device) -> float:
    t0 = _clock()
    fn(x)
    _sync(device)
    return _clock() - t0


def _summary(times: list[float], batch_size: int, **extra) -> dict:
    median = statistics.median(times)
    return {
        **extra,
        "batch_size": batch_size,
        "total_s": sum(times),
        "latency_ms": 1000.0 * median,
        "latency_ms_mean": 1000.0 * statistics.fmean(times),
        "latency_ms_min": 1000.0 * min(times),
        "latency_ms_max": 1000.0 * max(times),
        "images_per_s": batch_size / median if median > 0 else math.inf,
        "times_s": times,
    }


def measure_pair(
    fn: Callable[[Any], Any],
    baseline_fn: Callable[[Any], Any],
    make_input: Callable[[], Any],
    iters: int = 10,
    warmup: int = 2,
    device: torch.device | str | None = None,
    batch_size: Optional[int] = None,
) -> dict:
    """Time ``fn`` against ``baseline_fn`` on one input, alternating the calls.

    Each iteration times one call of each, in alternating order (model first, then baseline
    first) so that neither always runs on the caches the other warmed. ``warmup`` untimed calls
    of each come first; ``make_input`` is called once.

    Returns ``{'model': ..., 'baseline': ...}`` (each shaped like :func:`measure_throughput`'s
    result), ``'pair_ratios'`` (baseline time / model time per iteration) and
    ``'speed_ratio'`` (their median: >1 means ``fn`` is faster).
    """
    device, x, batch_size = _prepare(iters, warmup, device, make_input, batch_size)
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
            baseline_fn(x)
        _sync(device)
        m_times, b_times = [], []
        for i in range(iters):
            if i % 2 == 0:
                m_times.append(_timed_call(fn, x, device))
                b_times.append(_timed_call(baseline_fn, x, device))
            else:
                b_times.append(_timed_call(baseline_fn, x, device))
                m_times.append(_timed_call(fn, x, device))
    ratios = [b / m if m > 0 else math.inf for m, b in zip(m_times, b_times)]
    n = warmup + iters
    return {
        "model": _summary(m_times, batch_size, iters=iters, warmup=warmup, calls=n),
        "baseline": _summary(b_times, batch_size, iters=iters, warmup=warmup, calls=n),
        "pair_ratios": ratios,
        "speed_ratio": statistics.median(ratios),
    }


# -- RADIO benchmark ------------------------------------------------------------------------------
def make_timm_baseline(model: nn.Module, height: int, width: int, match_prefix: bool = True) -> nn.Module:
    """A plain timm ViT with the RADIO model's architecture (its backbone name and model_kwargs)
    at a fixed ``height x width`` input: learned position embedding, no CPE. Same device and dtype
    as ``model``; weights are PyTorch's default initialisation (their values do not matter for
    timing).

    ``match_prefix`` (default): the class token plus timm register tokens (``reg_tokens``) make as
    many prefix tokens as the model has summary tokens and registers, so both run sequences of
    the same length: the same FLOPs, a like-for-like workload. ``False``: timm's default one class
    token (a RADIO model with 8 prefix tokens then does 4 % more work at 224 px than its baseline).
    """
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError(
            "the timm baseline needs the model's config (backbone name and model_kwargs); "
            "this model has none — use baseline='global' or 'none'"
        )
    name = cfg.backbone.arch
    kwargs = dict(cfg.backbone.model_kwargs or {})
    kwargs.pop("weight_init", None)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if match_prefix and prefix:
        cls = 1 if kwargs.get("class_token", True) else 0
        if prefix < cls:
            raise ValueError(f"the model has {prefix} prefix tokens, fewer than timm's class token")
        kwargs["reg_tokens"] = prefix - cls
    # timm's own re-initialisation (trunc-normal over every weight) is slow for big models
    # and irrelevant to speed; 'skip' keeps PyTorch's default initialisation
    if name in vit_families.FAMILIES:
        if vit_families.FAMILIES[name].kind != "vit":
            raise ValueError(f"no plain timm ViT baseline for {name!r} (a DINOv2 student); use baseline='global'")
        vit = vit_families.build_family_vit(name, kwargs, num_classes=0, img_size=(height, width), weight_init="skip")
    else:
        vit = timm.create_model(
            name, pretrained=False, num_classes=0, img_size=(height, width), weight_init="skip", **kwargs
        )
    if getattr(vit, "patch_embed", None) is None or not hasattr(vit, "blocks"):
        raise ValueError(f"{name!r} is not a timm VisionTransformer")
    if match_prefix and prefix and getattr(vit, "num_prefix_tokens", prefix) != prefix:
        raise ValueError(
            f"timm's {name} has {vit.num_prefix_tokens} prefix tokens, the model {prefix}: "
            "no like-for-like baseline (match_prefix=False for timm's default)"
        )
    p = getattr(model, "patch_size", None)
    vit_p = vit.patch_embed.patch_size[0]
    if p is not None and vit_p != p:
        raise ValueError(f"timm's {name} has patch size {vit_p} but the model uses {p}; no like-for-like baseline")
    dtype = getattr(model, "dtype", torch.float32)
    return vit.to(device=module_device(model), dtype=dtype).eval()


def bench_model(
    model: nn.Module,
    resolutions: Sequence[int],
    *,
    batch_size: int = 8,
    baseline: Optional[str] = "timm",
    vitdet_window: Optional[int] = None,
    iters: int = 10,
    warmup: int = 2,
    device: torch.device | str | None = None,
    amp: bool = False,
    stat: str = "median",
    progress: bool = True,
) -> list[dict]:
    """Throughput of an already-loaded RADIO model at square ``resolutions``, with a baseline per row.

    ``vitdet_window``: run the model in ViTDet mode with W x W-patch windows (the model's own
    window setting is restored afterwards); ``None`` keeps the model's current mode.
    ``baseline``: ``'timm'`` (plain timm ViT of the same config, see :func:`make_timm_baseline`),
    ``'global'`` (the same model with global attention; needs a ViTDet window) or
    ``'none'``/``None``. Model and baseline calls alternate (:func:`measure_pair`).
    ``stat``: how the ``iters`` timed calls become the latency columns: ``'median'`` (typical
    call) or ``'min'`` (the call least disturbed by other processes). Resolutions are rounded
    to sizes the model accepts (``get_nearest_supported_resolution``); inputs are random images
    on the model's device.

    One dict per resolution: ``resolution``, ``height``, ``width``, ``batch_size``, ``mode``
    ('global' or 'vitdet-W'), ``images_per_s``, ``latency_ms``, and with a baseline
    ``baseline``, ``baseline_images_per_s``, ``baseline_latency_ms`` and ``speed_ratio`` =
    the median over call pairs of baseline time / model time (>1: the model is faster; close
    to, but steadier than, the ratio of the two images/s columns).
    """
    baseline = baseline or "none"
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    if stat not in STATS:
        raise ValueError(f"stat must be one of {', '.join(STATS)}, got {stat!r}")
    reduce = STATS[stat]
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not resolutions:
        raise ValueError("give at least one resolution")
    if any(int(r) < 1 for r in resolutions):
        raise ValueError(f"resolutions must be positive pixel sizes, got {list(resolutions)}")
    device = torch.device(device) if device is not None else module_device(model)
    if device != module_device(model):
        model = model.to(device)
    window = vitdet_window if vitdet_window is not None else getattr(model, "window_size", None)
    if baseline == "global" and window is None:
        raise ValueError(
            "baseline 'global' compares ViTDet with global attention: give a ViTDet window (--vitdet-window W)"
        )
    mode = f"vitdet-{window}" if window is not None else "global"

    def radio_fn(x: torch.Tensor):
        with autocast(device, amp):
            return model(x, vitdet_window=window)

    dtype = getattr(model, "dtype", torch.float32)
    rows = []
    bar = tqdm(total=len(resolutions), desc="bench", unit="resolution", disable=not progress)
    try:
        for r in resolutions:
            h, w = (int(v) for v in model.get_nearest_supported_resolution(int(r), int(r), vitdet_window=window))

            def make_input(h=h, w=w):
                # fixed seed: identical input for the model and its baseline
                g = torch.Generator().manual_seed(0)
                return torch.rand(batch_size, 3, h, w, generator=g).to(device)

            vit = None
            if baseline == "global":

                def base_fn(x: torch.Tensor):
                    with autocast(device, amp):
                        return model(x, vitdet_window=None)
            elif baseline == "timm":
                vit = make_timm_baseline(model, h, w)

                def base_fn(x: torch.Tensor, vit=vit):
                    with autocast(device, amp):
                        return vit.forward_features(x.to(dtype))
            else:
                base_fn = None

            bar.set_postfix_str(f"{h}x{w} {mode}" + (f" vs {baseline}" if base_fn else ""))
            if base_fn is None:
                m = measure_throughput(radio_fn, make_input, iters=iters, warmup=warmup, device=device)
                b = pair = None
            else:
                pair = measure_pair(radio_fn, base_fn, make_input, iters=iters, warmup=warmup, device=device)
                m, b = pair["model"], pair["baseline"]
            bar.update(1)
            m_lat = reduce(m["times_s"])
            row = {
                "resolution": int(r),
                "height": h,
                "width": w,
                "batch_size": batch_size,
                "mode": mode,
                "stat": stat,
                "timed_calls": len(m["times_s"]),
                "images_per_s": batch_size / m_lat,
                "latency_ms": 1000.0 * m_lat,
            }
            if pair is not None:
                b_lat = reduce(b["times_s"])
                row.update(
                    baseline=baseline,
                    baseline_images_per_s=batch_size / b_lat,
                    baseline_latency_ms=1000.0 * b_lat,
                    speed_ratio=pair["speed_ratio"],
                )
            rows.append(row)
            base_fn = vit = None  # free a timm baseline before building the next resolution's
    finally:
        bar.close()
    return rows


def format_table(rows: Iterable[dict]) -> str:
    """A fixed-width text table of :func:`bench_model` rows (ratio columns when there is a baseline)."""
    rows = list(rows)
    has_base = any("baseline" in r for r in rows)
    header = ["input", "batch", "mode", "img/s", "latency ms"]
    if has_base:
        header += ["baseline", "base img/s", "base ms", "speed ratio", "time ratio"]
    table = [header]
    for r in rows:
        line = [
            f"{r['height']}x{r['width']}",
            str(r["batch_size"]),
            r["mode"],
            f"{r['images_per_s']:.2f}",
            f"{r['latency_ms']:.1f}",
        ]
        if has_base:
            if "baseline" in r:
                line += [
                    r["baseline"],
                    f"{r['baseline_images_per_s']:.2f}",
                    f"{r['baseline_latency_ms']:.1f}",
                    f"{r['speed_ratio']:.3f}x",
                    f"{1.0 / r['speed_ratio']:.3f}x",
                ]
            else:
                line += ["-"] * 5
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = []
    for k, row in enumerate(table):
        out.append(
            "  ".join(
                c.rjust(wd) if k and i not in (2, 5) else c.ljust(wd) for i, (c, wd) in enumerate(zip(row, widths))
            ).rstrip()
        )
        if k == 0:
            out.append("  ".join("-" * wd for wd in widths))
    return "\n".join(out)


def write_rows_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write :func:`bench_model` rows as CSV (columns: the union of the rows' keys, first seen first)."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_csv(path, fields, ([r.get(k, "") for k in fields] for r in rows))
