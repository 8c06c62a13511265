"""Training step throughput: images/s of a distillation step, where its time goes, and the SAM mosaic saving.

For each shape (``--shapes``):

* ``tiny``: the shipped tiny recipe (``configs/tiny.yaml``) as it is: ViT dim 96 depth 4 student,
  four tiny random teachers, partitions low (64 px x 4, SAM on one 128 px mosaic canvas) and high
  (128 px x 2) in the same step.
* ``b16``: the RADIOv2.5-B recipe (``configs/radio_v2.5-b.yaml``) with its B/16 student (dim 768,
  depth 12, heads 12) unchanged, one of its stages (default stage 2: 432 px, SAM on 1024 px mosaic
  canvases holding 2 x 2 views) at a small batch, and **shrunk teachers**: the same architectures,
  patch sizes and input sizes (CLIP/SigLIP/DINOv2 at 378 px, patch 14; SAM at 1024 px, patch 16,
  14 x 14 windows), random weights, width ``--teacher-width`` (128) and depth ``--teacher-depth``
  (4; SAM's last block global, the others windowed). float32 (the recipe's bf16 autocast is off:
  CPUs without native bf16 run it ~50x slower).

It runs real ``Trainer.train_step()`` calls on the bundled photographs (``openradio.inputs.sample_data``)
after ``--warmup`` untimed steps and prints images/s and the share of the step time in each part,
measured with wrappers around the trainer's own calls (nothing in the trainer changes):

    teachers          the teachers' forwards (per teacher), plus the glue around them in the
                      trainer's ``_teacher_outputs``: mosaic pack/unpack, casts
    student forward   the student's forward (``trainer.model``)
    student backward  ``loss.backward()``
    losses            ``distill_loss``
    optimiser         ``_optimizer_step``: gradient clipping, AdamW, the LR schedule
    EMA               ``_update_ema``
    PHI-S             the normalisers' statistics update, normalise, step (and recompute)
    data              the data stream: decode, random crop, flip, batch
    other             the rest of ``train_step``: resizing batches to the step's side, loss
                      scales, zero_grad, metrics (``.item()``), Python

Times are exclusive (a region nested in another counts once, in the inner one), so the parts add
up to the measured step time. Then, for the partition whose SAM teacher runs on a mosaic, SAM is
timed on the mosaic canvases (pack, forward, unpack) against SAM once per student view at the
side the trainer would otherwise use (the teacher's native input: the view resized to the canvas
size) and at the view's own side, on the same views, interleaved calls, median ratio, next to the
FLOP ratios counted by ``torch.utils.flop_counter``.

    python benchmarks/bench_train_step.py --threads 1,2
    python benchmarks/bench_train_step.py --shapes tiny --steps 10
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from openradio.distill import trainer as trainer_module
from openradio.distill.config import TrainConfig, load_config
from openradio.distill.mosaic import mosaic_pad_value, pack_mosaic, unpack_features
from openradio.distill.trainer import DistEnv, Trainer
from openradio.distill.transforms import resize_square
from openradio.runtime import platform_line

# printed in this order; "teacher <name>" rows are summed into "teachers"
CATEGORIES = ("teachers", "student forward", "student backward", "losses", "optimiser", "EMA", "PHI-S", "data", "other")
TEACHER_GLUE = "mosaic pack/unpack, casts"


# -- configs ---------------------------------------------------------------------------------------
def shrink_teachers(teachers: list, width: int, depth: int) -> list:
    """The recipe's teachers as small random models of the same architectures, patch and input sizes."""
    heads = max(width // 64, 1)
    out = []
    for t in teachers:
        t = {k: v for k, v in t.items() if k not in ("pretrained", "weights")}
        kind, size = t.get("type", t["name"]), int(t.get("input_size", 0))
        if kind == "sam":
            size = size or 1024
            ov = {
                "embed_dim": width,
                "depth": depth,
                "num_heads": heads,
                "img_size": size,
                "window_size": 14,
                "global_attn_indexes": [depth - 1],
            }
        elif kind == "open_clip" and "SigLIP" not in t.get("model", ""):  # open_clip's native ViT tower
            ov = {"width": width, "layers": depth, "head_width": 64, "image_size": size}
        else:  # timm towers: SigLIP, DINOv2
            ov = {"embed_dim": width, "depth": depth, "num_heads": heads, "img_size": size}
            if kind in ("dino_v2", "dinov2") and ("g14" in t.get("model", "") or "giant" in t.get("model", "")):
                # ViT-g's packed SwiGLU: hidden = width * 16/3, which must be even
                ov["mlp_ratio"] = 2 * round(width * 8 / 3) / width
        out.append({**t, "tiny": True, "overrides": ov})
    return out


def recipe_config(
    shape: str,
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: str | Path | None = None,
    stage: int | None = None,
    batch: int | None = None,
    teacher_width: int = 128,
    teacher_depth: int = 4,
    shrink: bool = True,
) -> TrainConfig:
    """The training config of ``shape`` ('tiny' or 'b16'), reading ``recipe`` (default: the shipped
    one), keeping one stage (``stage``; default 0 for tiny, 1 for b16) with ``batch`` images per
    partition when given, every partition on this one process. ``shrink=False`` keeps b16's full-size teachers
    (for FLOP counts on the
    meta device; pretrained weights are not downloaded)."""
    if shape not in ("tiny", "b16"):
        raise ValueError(f"unknown shape {shape!r}: use 'tiny' or 'b16'")
    recipe = Path(recipe or REPO / "configs" / ("tiny.yaml" if shape == "tiny" else "radio_v2.5-b.yaml"))
    data = yaml.safe_load(recipe.read_text())
    stage = (0 if shape == "tiny" else 1) if stage is None else stage
    if not 0 <= stage < len(data["stages"]):
        raise ValueError(f"{recipe.name} has {len(data['stages'])} stages; --stage {stage} does not exist")
    st = copy.deepcopy(data["stages"][stage])
    for p in st["partitions"]:
        p["ranks"] = None  # one process trains every partition of the stage
        if batch:
            p["batch_size"] = batch
    data["stages"] = [st]
    if shape == "b16":
        data["teachers"] = (
            shrink_teachers(data["teachers"], teacher_width, teacher_depth)
            if shrink
            else [{**t, "pretrained": False} for t in data["teachers"]]
        )
        data["amp"] = False
    data["data"] = {**data.get("data", {}), "path": str(data_dir), "num_workers": 0}
    data.update(out_dir=str(out_dir), progress=False, tensorboard=False, device="cpu")
    path = Path(out_dir) / f"{shape}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def write_images(directory: str | Path, max_side: int = 640) -> Path:
    """The bundled photographs (scikit-image, scikit-learn) as files in ``directory``."""
    from openradio.inputs.sample_data import write_sample_images

    write_sample_images(directory, max_side=max_side)
    return Path(directory)


# -- the timer -------------------------------------------------------------------------------------
class RegionTimer:
    """Exclusive wall time per named region: time spent in a nested region counts for it only."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._stack: list[list] = []

    def push(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), 0.0])

    def pop(self) -> float:
        name, t0, inner = self._stack.pop()
        dt = time.perf_counter() - t0
        self.totals[name] = self.totals.get(name, 0.0) + dt - inner
        if self._stack:
            self._stack[-1][2] += dt
        return dt

    @contextmanager
    def region(self, name: str) -> Iterator[None]:
        self.push(name)
        try:
            yield
        finally:
            self.pop()

    def wrap(self, fn: Callable, name: str) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.region(name):
                return fn(*args, **kwargs)

        return timed

    def reset(self) -> None:
        self.totals = {}


@contextmanager
def instrument(trainer: Trainer, timer: RegionTimer) -> Iterator[None]:
    """Time the trainer's parts (see the module docstring) without changing what it computes."""
    handles = []
    patched: list[tuple[object, str]] = []

    def patch(obj: object, attr: str, name: str) -> None:
        setattr(obj, attr, timer.wrap(getattr(obj, attr), name))
        patched.append((obj, attr))

    def hooks(module: torch.nn.Module, name: str) -> None:
        def pre(*_):  # hooks return None: a returned value would replace the module's input/output
            timer.push(name)

        def post(*_):
            timer.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    for name, teacher in trainer.teachers.items():
        hooks(teacher, f"teacher {name}")
    hooks(trainer.model, "student forward")
    patch(trainer, "_teacher_outputs", TEACHER_GLUE)
    patch(trainer, "_optimizer_step", "optimiser")
    patch(trainer, "_update_ema", "EMA")
    patch(trainer.data, "next_batch", "data")
    for norm in trainer.phi_s.values():
        for attr in ("update", "normalize", "step", "initialize"):
            patch(norm, attr, "PHI-S")
    with ExitStack() as stack:
        from unittest import mock

        stack.enter_context(
            mock.patch.object(torch.Tensor, "backward", timer.wrap(torch.Tensor.backward, "student backward"))
        )
        stack.enter_context(
            mock.patch.object(trainer_module, "distill_loss", timer.wrap(trainer_module.distill_loss, "losses"))
        )
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for obj, attr in patched:
                delattr(obj, attr)  # the instance attribute goes, the class's method is back


def measure_steps(trainer: Trainer, steps: int, warmup: int = 1) -> dict:
    """``warmup`` untimed ``train_step()`` calls, then ``steps`` timed ones.

    Returns ``step_s`` (wall time of each step), ``images`` (per step), ``parts`` (exclusive
    seconds per region over all timed steps; 'other' = train_step's own time) and ``wall_s``."""
    for _ in range(warmup):
        trainer.train_step()
    timer = RegionTimer()
    step_s: list[float] = []
    with instrument(trainer, timer):
        for _ in range(steps):
            t0 = time.perf_counter()
            with timer.region("other"):
                trainer.train_step()
            step_s.append(time.perf_counter() - t0)
    n_img = sum(p.batch_size for p in trainer.cfg.stages[0].partitions) * max(trainer.cfg.optim.accumulation, 1)
    return {"step_s": step_s, "images": [n_img] * steps, "parts": dict(timer.totals), "wall_s": sum(step_s)}


def shares(parts: dict[str, float]) -> dict[str, float]:
    """Fractions of the summed time per category (teacher rows and the glue summed into 'teachers')."""
    total = sum(parts.values())
    out = {c: 0.0 for c in CATEGORIES}
    for name, s in parts.items():
        key = "teachers" if name.startswith("teacher ") or name == TEACHER_GLUE else name
        if key not in out:
            raise KeyError(f"region {name!r} has no category")
        out[key] += s / total
    return out


# -- SAM mosaic vs SAM per view --------------------------------------------------------------------
def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of ``fn()`` from torch's FLOP counter, with CPU SDPA kernels counted as attention
    (the counter knows only the CUDA ones)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {}
    # (the math fallback decomposes into matmuls, which the counter sees on their own)
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = sdpa
    with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        fn()
    return float(fc.get_total_flops())


def mosaic_paths(teacher: torch.nn.Module, canvas: int, pad: float | torch.Tensor = 0.0) -> dict[str, Callable]:
    """The three ways to get SAM features for a batch of views: ``mosaic`` (views tiled on
    canvases, one pass per canvas, each view's window cut out), ``per view native`` (one pass per
    view at the canvas side, the view resized to it: what the trainer does when SAM is not in the
    partition's ``mosaic``), ``per view own side`` (one pass per view at its own side)."""

    def mosaic(views):
        canvases, layout = pack_mosaic(views, canvas, teacher.patch_size, pad_value=pad)
        return unpack_features(teacher(canvases).features, layout)

    return {
        "mosaic": mosaic,
        "per view native": lambda views: teacher(views, resolution=canvas).features,
        "per view own side": lambda views: teacher(views, resolution=views.shape[-1]).features,
    }


def compare_mosaic(
    teacher: torch.nn.Module,
    views: torch.Tensor,
    canvas: int,
    rounds: int = 3,
    pad: float | torch.Tensor = 0.0,
    min_s: float = 0.0,
) -> dict:
    """Time the three paths of :func:`mosaic_paths` on the same ``views`` (interleaved, rotating
    order each round; one untimed call each first): ``rounds`` rounds, more while under ``min_s``
    seconds in all. Returns per path the outputs, median seconds, FLOPs, and the median over
    rounds of (path time / mosaic time)."""
    paths = mosaic_paths(teacher, canvas, pad)
    names = list(paths)
    res = {n: {"out": paths[n](views), "flops": count_flops(lambda f=paths[n]: f(views)), "s": []} for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    r, start = 0, time.perf_counter()
    while r < rounds or time.perf_counter() - start < min_s:
        t = {}
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            paths[n](views)
            t[n] = time.perf_counter() - t0
            res[n]["s"].append(t[n])
        for n in names:
            ratios[n].append(t[n] / t["mosaic"])
        r += 1
    layout = pack_mosaic(views[:1], canvas, teacher.patch_size)[1]
    for n in names:
        res[n]["median_s"] = statistics.median(res[n]["s"])
        res[n]["ratio"] = statistics.median(ratios[n])
        res[n]["flop_ratio"] = res[n]["flops"] / res["mosaic"]["flops"]
    res["views"], res["canvases"] = views.shape[0], -(-views.shape[0] // layout.views_per_canvas)
    res["views_per_canvas"] = layout.views_per_canvas
    return res


def step_flops(trainer: Trainer, teachers: dict | None = None) -> dict:
    """FLOPs of one step of ``trainer``'s stage, counted on the meta device (nothing runs):
    ``student`` (forward + backward of every partition's batch), ``teachers`` (per teacher, as the
    trainer calls it: mosaic canvases or the batch at its resolution) and ``per view`` (per mosaic
    teacher: one pass per view at the teacher's native side instead). ``teachers``: other teachers
    (e.g. full-size ones built on the meta device) with the same names; default the trainer's."""
    from openradio.distill import partitions as P

    meta = torch.device("meta")
    if teachers is None:
        student = copy.deepcopy(trainer.student).to(meta).train()
    else:  # the student's heads as wide as these teachers' outputs
        from openradio.distill.student import build_student, student_config

        dims = {n: (t.summary_dim, t.feature_dim) for n, t in teachers.items()}
        with meta:
            student = build_student(
                student_config(trainer.cfg, teachers), dims, spectral_reparam=trainer.cfg.student.spectral_reparam
            ).train()
    teachers = {n: copy.deepcopy(t).to(meta) for n, t in (teachers or trainer.teachers).items()}
    out: dict = {"student": 0.0, "teachers": {}, "per view": {}}
    for part in trainer.cfg.stages[0].partitions:
        views = torch.zeros(part.batch_size, 3, part.resolution, part.resolution, device=meta)

        def fwd_bwd(views=views):
            o = student(views, feature_fmt="NCHW")
            sum(v.summary.float().sum() + v.features.float().sum() for k, v in o.items() if k != "backbone").backward()

        out["student"] += count_flops(fwd_bwd)
        for name in P.partition_teachers(trainer.cfg, part):
            t = teachers[name]
            if name in part.mosaic:
                paths = mosaic_paths(t, t.input_size)
                f = count_flops(lambda p=paths, v=views: p["mosaic"](v))
                out["per view"][name] = out["per view"].get(name, 0.0) + count_flops(
                    lambda p=paths, v=views: p["per view native"](v)
                )
            else:
                res = P.teacher_resolution(trainer.cfg, part, name, t.input_size, t.patch_size, student.patch_size)
                f = count_flops(lambda t=t, v=views, r=res: t(v, resolution=r))
            out["teachers"][name] = out["teachers"].get(name, 0.0) + f
    return out


def full_size_teachers(cfg: TrainConfig) -> dict:
    """The config's teachers at full size with random weights, on the meta device (no memory, no download)."""
    from openradio.teachers import build_teacher

    with torch.device("meta"):
        return {t.name: build_teacher(t.build_kwargs()) for t in cfg.teachers}


def mosaic_partition(trainer: Trainer):
    """(partition, teacher name) of the first partition with a mosaic teacher, or None."""
    for p in trainer.cfg.stages[0].partitions:
        if p.mosaic:
            return p, p.mosaic[0]
    return None


# -- report ----------------------------------------------------------------------------------------
def describe(cfg: TrainConfig, trainer: Trainer) -> str:
    s = cfg.student
    kw = s.model_kwargs or {}
    dims = f"dim {trainer.student.model.embed_dim}, depth {len(trainer.student.model.blocks)}"
    parts = []
    for p in cfg.stages[0].partitions:
        extra = []
        for t in p.mosaic:
            lay = pack_mosaic(
                torch.zeros(p.batch_size, 3, p.resolution, p.resolution),
                trainer.teachers[t].input_size,
                trainer.teachers[t].patch_size,
            )[1]
            extra.append(f"{t} mosaic: {lay.views_per_canvas} views per {lay.canvas_size[0]} px canvas")
        parts.append(f"{p.name} {p.resolution}px x{p.batch_size}" + (f" ({'; '.join(extra)})" if extra else ""))
    teachers = []
    for name, t in trainer.teachers.items():
        blocks = getattr(getattr(t.model, "trunk", t.model), "blocks", None)
        if blocks is None:
            blocks = getattr(getattr(t.model, "transformer", None), "resblocks", [])
        teachers.append(
            f"{name} {type(t).__name__} dim {t.feature_dim} depth {len(blocks)} "
            f"patch {t.patch_size} at {trainer.teacher_resolution(cfg.stages[0].partitions[0], name)}px"
        )
    return (
        f"student {s.model}{' ' + str(kw) if kw else ''} ({dims}); partitions: {', '.join(parts)}\n"
        f"  teachers (random weights): {'; '.join(teachers)}"
    )


def _gflop(f: float) -> str:
    if f < 1e9:
        return f"{f / 1e6:.0f} MFLOP"
    return f"{f / 1e9:.1f} GFLOP" if f < 1e12 else f"{f / 1e12:.2f} TFLOP"


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 0.1 else f"{s * 1e3:.0f} ms"


def report_flops(flops: dict, full: dict | None, measured_teacher_share: float) -> None:
    st, te = flops["student"], sum(flops["teachers"].values())
    print(
        f"  FLOPs per step (torch.utils.flop_counter on the meta device): student forward+backward {_gflop(st)}, "
        f"teachers as run here {_gflop(te)} = {te / (st + te):.0%} of the step's FLOPs "
        f"(their measured time share {measured_teacher_share:.0%})"
    )
    if full is None:
        return
    fs, ft = full["student"], sum(full["teachers"].values())
    each = ", ".join(f"{n} {_gflop(v)}" for n, v in full["teachers"].items())
    print(
        f"    with the recipe's full-size teachers (counted, not run): teachers {_gflop(ft)} ({each}), student "
        f"{_gflop(fs)} (heads as wide as the teachers): teachers {ft / (fs + ft):.0%} of the step's FLOPs"
    )
    for name, pv in full["per view"].items():
        alt = ft - full["teachers"][name] + pv
        print(
            f"    {name} once per view at its native side instead of the mosaic: teachers {_gflop(alt)}; "
            f"the mosaic saves {1 - ft / alt:.0%} of the teacher FLOPs "
            f"({1 - (fs + ft) / (fs + alt):.0%} of the step's)"
        )


def report(shape: str, threads: int, run: dict, mosaic: dict | None, trainer: Trainer) -> None:
    n = len(run["step_s"])
    med = statistics.median(run["step_s"])
    imgs = run["images"][0]
    parts, total = run["parts"], sum(run["parts"].values())
    sh = shares(parts)
    print(
        f"threads {threads} {shape}: {imgs} images per step, step {med * 1e3:.0f} ms (median of {n}; "
        f"min {min(run['step_s']) * 1e3:.0f}, max {max(run['step_s']) * 1e3:.0f}) -> {imgs / med:.2f} images/s"
    )
    teacher_rows = [(k[len("teacher ") :], v) for k, v in parts.items() if k.startswith("teacher ")]
    detail = {
        "teachers": "forwards "
        + ", ".join(f"{k} {v / total:.1%}" for k, v in teacher_rows)
        + f"; {TEACHER_GLUE} {parts.get(TEACHER_GLUE, 0.0) / total:.1%}"
    }
    for c in CATEGORIES:
        print(f"  {c:<17} {sh[c]:6.1%}  {detail.get(c, '')}")
    print(
        f"  {'sum':<17} {sum(sh.values()):6.1%}  = {total * 1e3:.0f} ms over {n} steps "
        f"(steps' wall time {run['wall_s'] * 1e3:.0f} ms)"
    )
    if mosaic is None:
        return
    name, part = mosaic["teacher"], mosaic["partition"]
    m, nat, own = mosaic["mosaic"], mosaic["per view native"], mosaic["per view own side"]
    print(
        f"  {name} mosaic in partition {part}: {mosaic['views']} views of {mosaic['view_side']} px on "
        f"{mosaic['canvases']} canvas(es) of {mosaic['canvas']} px ({mosaic['views_per_canvas']} per canvas); "
        f"median of {len(m['s'])} interleaved rounds"
    )
    print(
        f"    mosaic {_ms(m['median_s'])}; per view at {mosaic['canvas']} px {_ms(nat['median_s'])}: "
        f"mosaic x{nat['ratio']:.2f} faster (FLOP ratio x{nat['flop_ratio']:.2f})"
    )
    print(
        f"    per view at its own {mosaic['view_side']} px {_ms(own['median_s'])}: mosaic x{own['ratio']:.2f} "
        f"(FLOP ratio x{own['flop_ratio']:.2f}; < 1: the mosaic costs more than SAM on the bare views)"
    )
    # what the measured step would cost with SAM once per view at its native side instead: the
    # in-step SAM time times the measured ratio (in the step SAM runs slower than in the
    # standalone loop: its memory is touched afresh after the student's activations come and go,
    # and a per-view SAM would meet the same)
    sam, teach = parts.get(f"teacher {name}", 0.0) / n, sh["teachers"] * total / n
    extra = sam * (nat["ratio"] - 1)
    print(
        f"    in the step: {name} {_ms(sam)} of {_ms(teach)} teacher time per step; once per view it "
        f"would add ~{_ms(extra)}: the mosaic saves {extra / (teach + extra):.0%} of the teacher time and "
        f"{extra / (total / n + extra):.0%} of the step"
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f}"
    return f"{cpu} ({platform.system()} {platform.machine()}), {os.cpu_count()} cores visible{load}"


def run_shape(shape: str, threads: int, args: argparse.Namespace, data_dir: Path, tmp: Path) -> None:
    torch.set_num_threads(threads)
    cfg = recipe_config(
        shape,
        data_dir,
        tmp / f"{shape}-{threads}",
        recipe=args.recipe,
        stage=args.stage,
        batch=args.batch if shape == "b16" else None,
        teacher_width=args.teacher_width,
        teacher_depth=args.teacher_depth,
    )
    t0 = time.perf_counter()
    trainer = Trainer(cfg, env=DistEnv())
    print(describe(cfg, trainer), flush=True)
    run = measure_steps(trainer, args.steps if shape == "tiny" else args.b16_steps, args.warmup)
    mosaic = None
    found = mosaic_partition(trainer)
    if found and args.mosaic_rounds > 0:
        part, name = found
        teacher = trainer.teachers[name]
        views = resize_square(trainer.data.next_batch(0, part), part.resolution)
        pad = mosaic_pad_value(teacher, cfg.mosaic_pad)
        mosaic = compare_mosaic(teacher, views, teacher.input_size, args.mosaic_rounds, pad, min_s=2.0)
        mosaic.update(teacher=name, partition=part.name, view_side=part.resolution, canvas=teacher.input_size)
    report(shape, threads, run, mosaic, trainer)
    if args.flops:
        full = None
        if shape == "b16":
            full_cfg = recipe_config(
                shape,
                data_dir,
                tmp / f"{shape}-full",
                recipe=args.recipe,
                stage=args.stage,
                batch=args.batch,
                shrink=False,
            )
            full = step_flops(trainer, full_size_teachers(full_cfg))
        report_flops(step_flops(trainer), full, shares(run["parts"])["teachers"])
    print(f"  ({time.perf_counter() - t0:.0f} s for this shape)", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", default="tiny,b16", help="comma list of tiny, b16 (default both)")
    ap.add_argument("--threads", default="1", help="comma list of torch thread counts (default 1)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps of the tiny recipe (default 8)")
    ap.add_argument("--b16-steps", type=int, default=3, help="timed steps of the B/16 shape (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--recipe", default=None, help="a YAML recipe instead of the shipped one (with a single --shapes)")
    ap.add_argument(
        "--stage",
        type=int,
        default=None,
        help="the recipe stage to run, 0-based (default: 0 tiny; 1 b16: the 432 px stage)",
    )
    ap.add_argument("--batch", type=int, default=4, help="images per partition for b16 (default 4: one full canvas)")
    ap.add_argument("--teacher-width", type=int, default=128, help="b16: shrunk teachers' width (default 128)")
    ap.add_argument("--teacher-depth", type=int, default=4, help="b16: shrunk teachers' depth (default 4)")
    ap.add_argument(
        "--mosaic-rounds",
        type=int,
        default=5,
        help="interleaved rounds of the mosaic comparison, at least 2 s of them (0: skip)",
    )
    ap.add_argument(
        "--no-flops",
        dest="flops",
        action="store_false",
        help="skip the FLOP counts (student, teachers; b16 also with the full-size teachers)",
    )
    ap.add_argument("--data", default=None, help="image folder (default: the bundled photographs in a temp folder)")
    ap.add_argument(
        "--image-side",
        type=int,
        default=640,
        help="longer side of the bundled photographs as written (default 640; they are decoded every step)",
    )
    args = ap.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [s for s in args.shapes if s not in ("tiny", "b16")]
    if bad:
        ap.error(f"unknown shape(s) {bad}: use tiny, b16")
    if args.recipe and len(args.shapes) != 1:
        ap.error("--recipe replaces one shape's recipe: give a single --shapes (tiny or b16) with it")
    if args.recipe and not Path(args.recipe).is_file():
        ap.error(f"--recipe {args.recipe}: no such file")
    threads = [int(t) for t in args.threads.split(",")]
    print(platform_line())
    print(f"torch {torch.__version__}; {machine()}; float32; threads {args.threads}; warm-up {args.warmup} step(s)")
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
        tmp = Path(tmp)
        data_dir = Path(args.data) if args.data else write_images(tmp / "images", args.image_side)
        for th in threads:
            for shape in args.shapes:
                run_shape(shape, th, args, data_dir, tmp)


if __name__ == "__main__":
    main()
