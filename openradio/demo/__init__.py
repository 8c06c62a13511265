"""``openradio demo``: distil, export, evaluate and report, end to end, on one machine.

Offline (the default): the bundled photographs train a small student with the tiny v2.5 recipe
(``configs/tiny.yaml``: four small random teachers of the real architectures); the student is exported
as an official ``.pth.tar``, loaded back and evaluated on held-out photographs (mode-switching curves,
PCA pictures, zero-shot agreement, throughput against timm, training curves). Online
(``version='radio_v2.5-b'``): the released model and its real DINOv2 teacher, without training.
This module only composes :mod:`openradio.distill`, :mod:`openradio.eval` and :mod:`openradio.viz`
(the report: :mod:`openradio.viz.report`; its prose: ``report_text.yaml``).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from openradio.atomicio import write_text
from openradio.distill.config import TrainConfig, from_dict, shipped_recipe
from openradio.distill.export import write_export
from openradio.distill.trainer import Trainer
from openradio.eval.agreement import agreement_by_teacher, summarize_agreement
from openradio.eval.mode_switch import (plot_mode_switch_grid, run_mode_switch_grid, summarize_mode_switch,
                                       teacher_entry_config, write_mode_switch_table)
from openradio.eval.throughput import bench_model, write_rows_csv
from openradio.eval.zero_shot import get_templates
from openradio.formats.official import load_checkpoint_file, set_teacher_fields, unique_names
from openradio.formats.resolve import radio_model, resolve_checkpoint
from openradio.inputs.imageio import load_image
from openradio.inputs.sample_data import write_sample_split
from openradio.model.text import load_text_tower, write_random_text_towers
from openradio.runtime import PhaseTimer, pick_device
from openradio.teachers import build_teacher
from openradio.versions import VERSIONS
from openradio.viz.compare import teacher_student_grid
from openradio.viz.report import (Image, Paragraph, Report, Table, agreement_table, fmt_count, mode_switch_table,
                                  throughput_table)
from openradio.viz.training import loss_table, plot_training_curves, read_metrics, training_summary

__all__ = ["tiny_recipe", "DemoSettings", "run_demo", "prepare_train_dir"]
TEXT = yaml.safe_load((Path(__file__).parent / "report_text.yaml").read_text())  # the report's prose


@dataclass
class DemoSettings:
    """What the demo measures. Defaults fit the ~5 minute budget on 2 CPU cores (offline)."""

    # The tiny recipe's 60 steps take ~10 s of CPU; 300 (the same schedule, stretched) make the student's
    # features visibly match its teachers' (held-out MSE to DINOv2 ~0.18 after 200 steps, ~0.13 after 400)
    # and keep the demo near 2 minutes on 2 cores. None: the recipe's own count.
    steps: Optional[int] = 300
    mode_switch_resolutions: Sequence[int] = tuple(range(64, 257, 16))
    viz_resolutions: Sequence[int] = (64, 128, 256)
    viz_images: int = 3
    zero_shot_resolutions: Sequence[int] = (64, 128, 256)
    bench_resolutions: Sequence[int] = (128, 256, 512)
    bench_batch_size: int = 8
    bench_iters: int = 5
    eval_batch_size: int = 8
    # CPU threads for torch: the tensors are tiny, so with several OpenMP threads the barrier waits dominate
    # (measured: 0.3 s/step with 1 thread vs 1.3-8 s/step with 2). None keeps torch's setting.
    cpu_threads: Optional[int] = 1

    @classmethod
    def for_release(cls) -> "DemoSettings":
        """Settings for a released model: the real resolutions such models are used at."""
        gpu = torch.cuda.is_available()
        return cls(mode_switch_resolutions=tuple(range(256, 1025, 64 if gpu else 128)), cpu_threads=None,
                   viz_resolutions=(256, 512, 1024), bench_resolutions=(224, 512, 1024), bench_batch_size=8 if gpu
                   else 2, bench_iters=10 if gpu else 3, eval_batch_size=8 if gpu else 2)


@dataclass
class Subject:
    """What the evaluation runs on: ``models`` by label (the first, the main one, is ``checkpoint``), ``teachers``
    by adaptor name; ``zs_teachers``/``text_towers``: open_clip teachers and their (config, weights) towers."""

    title: str
    models: dict
    checkpoint: Path
    teachers: dict
    facts: list
    notes: list
    train_metrics: Optional[Path] = None
    dry_run: bool = False  # the teacher is a small random network (--tiny-teacher)
    zs_teachers: dict = field(default_factory=dict)
    text_towers: dict = field(default_factory=dict)


def tiny_recipe() -> dict:
    """The tiny recipe (``configs/tiny.yaml``, shipped with the package) as a plain dict (a fresh copy each call)."""
    return yaml.safe_load(shipped_recipe("tiny").read_text())


def params(m: torch.nn.Module) -> str:
    return fmt_count(sum(p.numel() for p in m.parameters()))


def prepare_train_dir(train_dir: Path) -> None:
    """A fresh training folder: a previous demo run's folder is replaced, anything else is refused
    (the trainer would otherwise resume from, and append to, what it finds there)."""
    if not train_dir.exists() or not any(train_dir.iterdir()):
        return
    if (train_dir / "config.yaml").is_file() or (train_dir / "metrics.csv").is_file():
        shutil.rmtree(train_dir)
        return
    raise FileExistsError(f"{train_dir} exists and is not a previous demo's training folder; "
                          "choose another --out directory or remove it")


def train_offline(out: Path, data_dir: Path, eval_images: list, steps: Optional[int], device: torch.device,
                  progress: bool, lap: Callable[[str], None]) -> Subject:
    """Distil a student with the tiny recipe, export it (and the untrained student the same way), load both back."""
    recipe = tiny_recipe()
    recipe_steps = sum(int(st["steps"]) for st in recipe["stages"])
    train_dir = out / "train"
    prepare_train_dir(train_dir)
    recipe.update(out_dir=str(train_dir), log_every=1, progress=progress, device=str(device))  # a point per step
    recipe["data"]["path"] = str(data_dir)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        recipe["stages"][0]["steps"] = int(steps)
        recipe["checkpoint_every"] = int(steps)  # one checkpoint, at the end
    cfg = from_dict(TrainConfig, recipe)
    trainer = Trainer(cfg)  # validates the config
    # the same architecture and initial weights, never trained: the baseline of every comparison
    untrained = copy.deepcopy(trainer.student).eval()
    lap("build teachers + student")
    if progress:
        print(f"distilling a {cfg.student.model} student ({params(trainer.student)} parameters) from "
              f"{len(cfg.teachers)} teachers for {cfg.total_steps} steps on {device}", flush=True)
    trainer.train(resume=False)
    lap("training")

    ckpt = trainer.export(out / "model.pth.tar")
    # the untrained student through the same export (with the trained PHI-S inverse folded into its
    # heads, so its outputs live in the teachers' feature space): a fair "no training" line
    base_ckpt = write_export(train_dir / "untrained.pth.tar", trainer.args, untrained, trainer.phi_s)
    # a small random text tower for each open_clip teacher (its image-embedding width), named in the
    # checkpoints' teacher entries so `openradio zero-shot` runs on the demo's checkpoint with them
    towers = write_random_text_towers(out / "text_towers", {
        t.name: int(trainer.teachers[t.name].summary_dim) for t in cfg.teachers if (t.type or t.name) == "open_clip"},
        seed=cfg.seed + 1000)
    for path in (ckpt, base_ckpt):
        set_teacher_fields(path, {n: {"text_model": os.path.relpath(c, path.parent),
                                      "text_weights": os.path.relpath(w, path.parent)} for n, (c, w) in towers.items()})
    names = [t.name for t in cfg.teachers]
    student = radio_model(str(ckpt), adaptor_names=names, progress=False).to(device).eval()
    baseline = radio_model(str(base_ckpt), adaptor_names=names, progress=False).to(device).eval()
    lap("export + reload")

    teachers = {n: trainer.teachers[n].eval() for n in names if getattr(trainer.teachers[n], "multi_resolution", False)}
    steps_note = (f" (the tiny recipe's schedule, {recipe_steps} steps in configs/tiny.yaml, stretched to this length)"
                  if trainer.step != recipe_steps else "")
    facts = [
        ("mode", "offline: distillation from small random teachers"),
        ("student", f"{cfg.student.model} {cfg.student.model_kwargs}, {params(trainer.student)} parameters"),
        ("teachers", ", ".join(f"{t.name} ({t.type}: {t.model}, tiny random, {params(trainer.teachers[t.name])})"
                               for t in cfg.teachers)),
        ("partitions", "; ".join(f"{p.name}: {p.resolution} px x {p.batch_size}"
                                 + (f", mosaic {p.mosaic}" if p.mosaic else "") for p in cfg.stages[0].partitions)),
        ("steps", f"{trainer.step}{steps_note}"),
        ("training images", f"{len([p for p in data_dir.iterdir() if p.is_file()])} sample photographs "
                            f"(data/{data_dir.name}/)"),
        ("evaluation images", f"{len(eval_images)} held-out photographs: " + ", ".join(p.stem for p in eval_images)),
        ("checkpoint", f"{ckpt.name} (official .pth.tar format, EMA weights, PHI-S folded into the heads)"),
    ]
    return Subject("openradio demo (offline distillation)", {"trained": student, "untrained": baseline}, ckpt,
                   teachers, facts, list(TEXT["offline_notes"]), train_metrics=train_dir / "metrics.csv",
                   zs_teachers={n: trainer.teachers[n].eval() for n in towers}, text_towers=towers)


def resolve_release(version: str, progress: bool) -> Path:
    """The checkpoint of a released name (downloaded once) or a local path; the demo's advice when a download fails."""
    try:
        return resolve_checkpoint(version, progress=progress)[0]
    except RuntimeError as e:
        raise RuntimeError(f"cannot run the demo on {version}: {str(e).splitlines()[0]} "
                           "(without a network, run `openradio demo` with no --version)") from None


def load_release(version: str, path: Path, device: torch.device, tiny_teacher: bool,
                 lap: Callable[[str], None]) -> Subject:
    """A released model (or a local checkpoint) with every adaptor, and its DINOv2 teacher."""
    available = unique_names(load_checkpoint_file(path)["args"])
    # by name when released, so the model gets the version's resolution settings (the file is cached)
    model = radio_model(version if version in VERSIONS else str(path), adaptor_names=available,
                        progress=False).to(device).eval()
    lap("load model")
    if "dino_v2" not in model.adaptors:
        raise ValueError(f"{version} has no dino_v2 adaptor to compare with a teacher; adaptors: {available}")
    adaptor = model.adaptors["dino_v2"]
    conf = teacher_entry_config(adaptor.teacher_conf, "dino_v2", tiny=tiny_teacher, width=adaptor.feat_mlp.output_dim)
    try:
        teacher = build_teacher(conf).to(device).eval()
    except (OSError, RuntimeError, ConnectionError) as e:
        raise RuntimeError(f"cannot build the dino_v2 teacher {conf.get('model')!r} with its pretrained weights "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); it needs a network "
                           "connection the first time") from None
    lap("build teacher")
    released = version in VERSIONS
    label = VERSIONS[version].name if released else Path(version).name
    mode = f"{'released model' if released else 'local checkpoint'} {label} (no training)"
    small = " (small random network of this kind)" if tiny_teacher else ""
    facts = [("mode", mode + ("; dry run with a small random teacher (--tiny-teacher)" if tiny_teacher else "")),
             ("model", f"{getattr(model.args, 'model', '?')}, {params(model)} parameters with adaptors"),
             ("adaptors", ", ".join(available)),
             ("teacher for the mode-switching curve",
              f"dino_v2: {conf.get('model', '?')}{small}, {params(teacher)} parameters"),
             ("checkpoint", str(path))]
    return Subject(f"openradio demo ({label})", {label: model}, path, {"dino_v2": teacher}, facts,
                   [TEXT["dry_run_note" if tiny_teacher else "release_note"]], dry_run=tiny_teacher)


def run_demo(out_dir: str | os.PathLike = "demo-report", steps: Optional[int] = None, version: Optional[str] = None,
             device: Optional[str] = None, progress: bool = True, *, settings: Optional[DemoSettings] = None,
             tiny_teacher: bool = False) -> Path:
    """Run the demo and write its report folder; returns the path of ``report.md``.

    ``version=None``: offline distillation on the bundled photographs (``steps`` overrides the
    recipe's step count). ``version``: a released name or a local checkpoint, evaluated without
    training (needs the network the first time for the weights). ``settings`` tunes what is
    measured (resolutions, number of pictures, benchmark sizes); ``tiny_teacher`` replaces the
    released teacher by a small random one of the same kind (dry runs of the online path).
    """
    settings = copy.copy(settings) if settings is not None else (
        DemoSettings() if version is None else DemoSettings.for_release())
    if steps is not None:
        if version is not None:
            raise ValueError("--steps applies to the offline demo's training; a released --version is not trained")
        settings.steps = steps
    dev = pick_device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and settings.cpu_threads:
        torch.set_num_threads(int(settings.cpu_threads))
    try:
        return _run(Path(out_dir), version, dev, progress, settings, tiny_teacher)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, version: Optional[str], dev: torch.device, progress: bool, settings: DemoSettings,
         tiny_teacher: bool) -> Path:
    clock = PhaseTimer()
    if version is None:  # fail on what can be checked before writing anything
        prepare_train_dir(out / "train")
    else:
        ckpt_path = resolve_release(version, progress)
        if version in VERSIONS:  # a local file is not downloaded
            clock.lap("download")
    out.mkdir(parents=True, exist_ok=True)
    split = write_sample_split(out / "data")
    clock.lap("sample images")
    if progress:
        print(f"sample photographs: {len(split.train)} for training in {split.train_dir}, "
              f"{len(split.eval)} held out in {split.eval_dir}", flush=True)
    if version is None:
        subject = train_offline(out, split.train_dir, split.eval, settings.steps, dev, progress, clock.lap)
    else:
        subject = load_release(version, ckpt_path, dev, tiny_teacher, clock.lap)
    images = list(split.eval)
    report = Report(subject.title, facts=subject.facts, notes=subject.notes)
    summary: dict[str, Any] = {"version": version, "device": str(dev), "steps": None, "dry_run": subject.dry_run}
    dry = [Paragraph(TEXT["dry_run"])] if subject.dry_run else []

    if subject.train_metrics is not None:
        metrics = read_metrics(subject.train_metrics)
        shutil.copyfile(subject.train_metrics, out / "training_metrics.csv")
        if metrics:
            plot_training_curves(metrics, out / "training.png")
            summary.update(training_summary(metrics))
        report.section("Training", *([Image("training.png", "Per-teacher losses during distillation (log scale)"),
                                      loss_table(metrics), Paragraph(TEXT["training"])] if metrics else []),
                       Paragraph("Full metrics: training_metrics.csv"))
        clock.lap("training plot")

    ms = run_mode_switch_grid(subject.models, subject.teachers, images, settings.mode_switch_resolutions,
                              batch_size=settings.eval_batch_size, device=dev, progress=progress)
    write_mode_switch_table(ms, out / "mode_switch.csv")
    plot_mode_switch_grid(ms, out / "mode_switch.png")
    clock.lap("mode-switching curves")
    report.section("Mode switching", *dry, Paragraph(TEXT["mode_switch"]), 
                   Image("mode_switch.png", "Mode-switching curves"),
        mode_switch_table(ms), Paragraph("All values: mode_switch.csv"))
    summary["mode_switch"] = summarize_mode_switch(ms)

    panel = 128 if max(settings.viz_resolutions) <= 256 else 192
    pics = [teacher_student_grid(load_image(p), subject.models, subject.teachers, settings.viz_resolutions,
                                 panel=panel).save(out / "pictures" / f"{p.stem}.png")
            for p in tqdm(images[: max(1, settings.viz_images)], desc="PCA pictures", unit="image",
                          disable=not progress)]
    clock.lap("PCA pictures")
    report.section("Feature pictures", *dry, Paragraph(TEXT["pictures"].format(shown=len(pics), total=len(images))),
        *[Image(p.relative_to(out).as_posix(), f"{p.stem}: rows = feature source, columns = input resolution")
          for p in pics])

    if subject.zs_teachers:
        _zero_shot(subject, images, settings, dev, out, report, summary)
        clock.lap("zero-shot")

    # backbone only: the timm baseline has no adaptor heads either
    backbone = radio_model(str(subject.checkpoint), progress=False).to(dev).eval()
    bench = bench_model(backbone, list(settings.bench_resolutions), batch_size=settings.bench_batch_size,
                        baseline="timm", iters=settings.bench_iters, warmup=1, device=dev, progress=progress)
    write_rows_csv(bench, out / "throughput.csv")
    clock.lap("throughput")
    report.section("Throughput", Paragraph(TEXT["throughput"].format(
        device=dev, batch=settings.bench_batch_size, iters=settings.bench_iters)), throughput_table(bench),
        Paragraph("All values: throughput.csv"))
    summary["throughput"] = [{k: v for k, v in r.items() if isinstance(v, (int, float, str))} for r in bench]

    clock.total()
    report.section("Timings", Table(["phase", "seconds"], [[k, f"{v:.1f}"] for k, v in clock.timings.items()]))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.is_file() and p.relative_to(out).parts[0] not in ("data", "train"))
    report.section("Files", Paragraph(", ".join(files + ["data/ (sample photographs)"]
                                                + (["train/ (training run)"] if subject.train_metrics else []))))
    summary.update(timings_s=clock.timings, cpu_time_s=clock.cpu_time(), checkpoint=str(subject.checkpoint))
    write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    path = report.write(out)
    print(f"report: {path.resolve()} (and {(out / 'report.html').resolve()})")
    print(f"total wall time: {clock.timings['total']:.1f} s (this process's CPU time: {summary['cpu_time_s']:.1f} s)")
    return path


def _zero_shot(subject: Subject, images: list, settings: DemoSettings, dev: torch.device, out: Path,
               report: Report, summary: dict) -> None:
    """How often each model's adaptor agrees with its open_clip teacher's own zero-shot predictions
    (both through the teacher's random text tower) on the held-out photographs."""
    classes = list(TEXT["zero_shot_classes"])
    write_text(out / "zero_shot" / "classnames.txt", "\n".join(classes) + "\n")
    towers = {n: load_text_tower(str(c), weights=w) for n, (c, w) in subject.text_towers.items()}
    results = agreement_by_teacher(subject.zs_teachers, towers, subject.models, images, classes, get_templates("base"),
                                   settings.zero_shot_resolutions, out / "zero_shot",
                                   batch_size=settings.eval_batch_size, device=dev)
    report.section("Zero-shot", Paragraph(TEXT["zero_shot"].format(
        teachers=", ".join(results), images=len(images), classes=len(classes))), agreement_table(results),
        Paragraph(TEXT["zero_shot_cli"].format(checkpoint=subject.checkpoint.name, first=next(iter(results)),
                                               resolutions=",".join(map(str, settings.zero_shot_resolutions)))))
    summary.update(zero_shot=summarize_agreement(results), zero_shot_main_model=next(iter(subject.models)))
