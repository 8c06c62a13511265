"""``openradio demo``: distil a small student offline with the tiny recipe (or load a released model), export,
evaluate on held-out photographs and write a report. A composition of :mod:`openradio.distill`,
:mod:`openradio.eval` and :mod:`openradio.viz` (the report's prose: ``report_text.yaml``)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from openradio.atomicio import write_text
from openradio.distill.config import TrainConfig, from_dict, shipped_recipe
from openradio.distill.export import write_export
from openradio.distill.trainer import Trainer
from openradio.eval import mode_switch
from openradio.eval.agreement import agreement_by_teacher, summarize_agreement
from openradio.eval.throughput import bench_model, write_rows_csv
from openradio.eval.zero_shot import get_templates
from openradio.formats.official import load_checkpoint_file, set_text_towers, unique_names
from openradio.formats.resolve import radio_model, resolve_checkpoint
from openradio.inputs.imageio import load_image
from openradio.inputs.sample_data import write_sample_split
from openradio.model.text import load_text_tower, write_random_text_towers
from openradio.runtime import PhaseTimer, pick_device
from openradio.teachers import build_teacher
from openradio.versions import VERSIONS
from openradio.viz import report as rp
from openradio.viz.compare import teacher_student_grid
from openradio.viz.training import training_section

__all__ = ["tiny_recipe", "DemoSettings", "run_demo", "prepare_train_dir"]
TEXT = yaml.safe_load((Path(__file__).parent / "report_text.yaml").read_text())  # the report's prose


@dataclass
class DemoSettings:
    """What the demo measures. Defaults fit the ~5 minute budget on 2 CPU cores (offline)."""

    # the tiny recipe's 60 steps, stretched: held-out MSE to DINOv2 ~0.18 after 200, ~0.13 after 400 (None: 60)
    steps: Optional[int] = 300
    mode_switch_resolutions: Sequence[int] = tuple(range(64, 257, 16))
    viz_resolutions: Sequence[int] = (64, 128, 256)
    viz_images: int = 3
    zero_shot_resolutions: Sequence[int] = (64, 128, 256)
    bench_resolutions: Sequence[int] = (128, 256, 512)
    bench_batch_size: int = 8
    bench_iters: int = 5
    eval_batch_size: int = 8
    # tiny tensors: OpenMP barriers dominate with more threads (0.3 s/step on 1 vs 1.3-8 s on 2). None: torch's
    cpu_threads: Optional[int] = 1

    @classmethod
    def for_release(cls) -> "DemoSettings":
        """Settings for a released model: the real resolutions such models are used at."""
        gpu = torch.cuda.is_available()
        s = cls(mode_switch_resolutions=tuple(range(256, 1025, 64 if gpu else 128)), cpu_threads=None)
        s.viz_resolutions, s.bench_resolutions = (256, 512, 1024), (224, 512, 1024)
        s.bench_batch_size = s.eval_batch_size = 8 if gpu else 2
        s.bench_iters = 10 if gpu else 3
        return s


@dataclass
class Subject:
    """What the evaluation runs on: models by label (the first is ``checkpoint``), teachers by adaptor name."""

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
    return rp.fmt_count(sum(p.numel() for p in m.parameters()))


def prepare_train_dir(train_dir: Path) -> None:
    """A fresh training folder: a previous demo run's folder is replaced, anything else is refused
    (the trainer would otherwise resume from, and append to, what it finds there)."""
    if not train_dir.exists() or not any(train_dir.iterdir()):
        return
    if (train_dir / "config.yaml").is_file() or (train_dir / "metrics.csv").is_file():
        return shutil.rmtree(train_dir)
    raise FileExistsError(f"{train_dir} exists and is not a previous demo's training folder; choose another --out")


def train_offline(out: Path, data: Path, held_out: list, steps: Optional[int], device, progress: bool, lap) -> Subject:
    """Distil a student with the tiny recipe, export it (and the untrained student the same way), load both back."""
    recipe = tiny_recipe()
    recipe_steps = sum(int(st["steps"]) for st in recipe["stages"])
    train_dir = out / "train"
    prepare_train_dir(train_dir)
    recipe.update(out_dir=str(train_dir), log_every=1, progress=progress, device=str(device))  # a point per step
    recipe["data"]["path"] = str(data)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        recipe["stages"][0]["steps"] = recipe["checkpoint_every"] = int(steps)  # one checkpoint, at the end
    cfg = from_dict(TrainConfig, recipe)
    trainer = Trainer(cfg)  # validates the config
    # the same architecture and initial weights, never trained: the baseline of every comparison
    untrained = copy.deepcopy(trainer.student).eval()
    lap("build teachers + student")
    if progress:
        size = f"{cfg.student.model} student ({params(trainer.student)} parameters)"
        print(f"distilling a {size} from {len(cfg.teachers)} teachers for {cfg.total_steps} steps on {device}")
    trainer.train(resume=False)
    lap("training")

    ckpt = trainer.export(out / "model.pth.tar")
    # the untrained student through the same export (with the trained PHI-S inverse folded into its
    # heads, so its outputs live in the teachers' feature space): a fair "no training" line
    base_ckpt = write_export(train_dir / "untrained.pth.tar", trainer.args, untrained, trainer.phi_s)
    # a small random text tower for each open_clip teacher (its image-embedding width), named in the
    # checkpoints' teacher entries so `openradio zero-shot` runs on the demo's checkpoint with them
    widths = {t.name: trainer.teachers[t.name].summary_dim for t in cfg.teachers if (t.type or t.name) == "open_clip"}
    towers = write_random_text_towers(out / "text_towers", widths, seed=cfg.seed + 1000)
    for path in (ckpt, base_ckpt):
        set_text_towers(path, towers)
    names = [t.name for t in cfg.teachers]
    student = radio_model(str(ckpt), adaptor_names=names, progress=False).to(device).eval()
    baseline = radio_model(str(base_ckpt), adaptor_names=names, progress=False).to(device).eval()
    lap("export + reload")

    teachers_ = trainer.teachers
    teachers = {n: t.eval() for n, t in teachers_.items() if getattr(t, "multi_resolution", False)}
    stretched = f" (the tiny recipe's {recipe_steps}-step schedule in configs/tiny.yaml, stretched to this length)"
    parts = [f"{p.name}: {p.resolution} px x {p.batch_size}" for p in cfg.stages[0].partitions]
    parts = [s + (f", mosaic {p.mosaic}" if p.mosaic else "") for s, p in zip(parts, cfg.stages[0].partitions)]
    tdesc = [f"{t.name} ({t.type}: {t.model}, tiny random, {params(teachers_[t.name])})" for t in cfg.teachers]
    n_train = len([p for p in data.iterdir() if p.is_file()])
    facts = [
        ("mode", "offline: distillation from small random teachers"),
        ("student", f"{cfg.student.model} {cfg.student.model_kwargs}, {params(trainer.student)} parameters"),
        ("teachers", ", ".join(tdesc)),
        ("partitions", "; ".join(parts)),
        ("steps", f"{trainer.step}{stretched if trainer.step != recipe_steps else ''}"),
        ("training images", f"{n_train} sample photographs (data/{data.name}/)"),
        ("evaluation images", f"{len(held_out)} held-out photographs: " + ", ".join(p.stem for p in held_out)),
        ("checkpoint", f"{ckpt.name} (official .pth.tar format, EMA weights, PHI-S folded into the heads)"),
    ]
    models = {"trained": student, "untrained": baseline}
    subject = Subject("openradio demo (offline distillation)", models, ckpt, teachers, facts, TEXT["offline_notes"])
    subject.train_metrics, subject.text_towers = train_dir / "metrics.csv", towers
    subject.zs_teachers = {n: trainer.teachers[n].eval() for n in towers}
    return subject


def resolve_release(version: str, progress: bool) -> Path:
    """The checkpoint of a released name (downloaded once) or a local path; the demo's advice when a download fails."""
    try:
        return resolve_checkpoint(version, progress=progress)[0]
    except RuntimeError as e:
        raise RuntimeError(TEXT["download_error"].format(version=version, why=str(e).splitlines()[0])) from None


def load_release(version: str, path: Path, device: torch.device, tiny_teacher: bool, lap: Callable) -> Subject:
    """A released model (or a local checkpoint) with every adaptor, and its DINOv2 teacher."""
    available = unique_names(load_checkpoint_file(path)["args"])
    # by name when released, so the model gets the version's resolution settings (the file is cached)
    released = version in VERSIONS
    model = radio_model(version if released else str(path), adaptor_names=available, progress=False)
    model = model.to(device).eval()
    lap("load model")
    if "dino_v2" not in model.adaptors:
        raise ValueError(f"{version} has no dino_v2 adaptor to compare with a teacher; adaptors: {available}")
    adaptor = model.adaptors["dino_v2"]
    width = adaptor.feat_mlp.output_dim
    conf = mode_switch.teacher_entry_config(adaptor.teacher_conf, "dino_v2", tiny=tiny_teacher, width=width)
    try:
        teacher = build_teacher(conf).to(device).eval()
    except (OSError, RuntimeError, ConnectionError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RuntimeError(TEXT["teacher_error"].format(model=conf.get("model"), why=why)) from None
    lap("build teacher")
    label = VERSIONS[version].name if released else Path(version).name
    mode = f"{'released model' if released else 'local checkpoint'} {label} (no training)"
    small = " (small random network of this kind)" if tiny_teacher else ""
    facts = [
        ("mode", mode + ("; dry run with a small random teacher (--tiny-teacher)" if tiny_teacher else "")),
        ("model", f"{getattr(model.args, 'model', '?')}, {params(model)} parameters with adaptors"),
        ("adaptors", ", ".join(available)),
        ("teacher for the mode-switching curve", f"dino_v2: {conf.get('model')}{small}, {params(teacher)} parameters"),
        ("checkpoint", str(path)),
    ]
    notes, teachers = [TEXT["dry_run_note" if tiny_teacher else "release_note"]], {"dino_v2": teacher}
    return Subject(f"openradio demo ({label})", {label: model}, path, teachers, facts, notes, None, tiny_teacher)


def run_demo(
    out_dir: str | os.PathLike = "demo-report",
    steps: Optional[int] = None,
    version: Optional[str] = None,
    device: Optional[str] = None,
    progress: bool = True,
    *,
    settings: Optional[DemoSettings] = None,
    tiny_teacher: bool = False,
) -> Path:
    """Run the demo, write its report folder and return the path of ``report.md``. ``version=None``: offline
    distillation (``steps`` overrides the recipe's); ``version``: a released name or local checkpoint, not trained;
    ``tiny_teacher``: compare it with a small random teacher of the same kind (dry runs)."""
    if settings is None:
        settings = DemoSettings() if version is None else DemoSettings.for_release()
    settings = copy.copy(settings)
    if steps is not None:
        if version is not None:
            raise ValueError("--steps applies to the offline demo's training; a released --version is not trained")
        settings.steps = steps
    dev = pick_device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and settings.cpu_threads:
        torch.set_num_threads(int(settings.cpu_threads))
    try:
        return _DemoRun(Path(out_dir), dev, progress, settings).run(version, tiny_teacher)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _DemoRun:
    """One run: where it writes, what it measures, and the report and summary it fills section by section."""

    out: Path
    dev: torch.device
    progress: bool
    s: DemoSettings
    clock: PhaseTimer = field(default_factory=PhaseTimer)
    summary: dict = field(default_factory=dict)

    def run(self, version: Optional[str], tiny_teacher: bool) -> Path:
        out, lap = self.out, self.clock.lap
        if version is None:  # fail on what can be checked before writing anything
            prepare_train_dir(out / "train")
        else:
            ckpt_path = resolve_release(version, self.progress)
            if version in VERSIONS:  # a local file is not downloaded
                lap("download")
        out.mkdir(parents=True, exist_ok=True)
        split = write_sample_split(out / "data")
        lap("sample images")
        if self.progress:
            print(f"sample photographs: {len(split.train)} for training, {len(split.eval)} held out in {out / 'data'}")
        if version is None:
            subject = train_offline(out, split.train_dir, split.eval, self.s.steps, self.dev, self.progress, lap)
        else:
            subject = load_release(version, ckpt_path, self.dev, tiny_teacher, lap)
        self.report = rp.Report(subject.title, facts=subject.facts, notes=list(subject.notes))
        self.summary.update(version=version, device=str(self.dev), steps=None, dry_run=subject.dry_run)
        self.dry = [rp.Paragraph(TEXT["dry_run"])] if subject.dry_run else []
        if subject.train_metrics is not None:
            self.training(subject.train_metrics)
        self.mode_switch(subject, list(split.eval))
        self.pictures(subject, list(split.eval))
        if subject.zs_teachers:
            self.zero_shot(subject, list(split.eval))
        self.throughput(subject.checkpoint)
        return self.finish(subject)

    def training(self, metrics_csv: Path) -> None:
        items, summary = training_section(metrics_csv, self.out, TEXT["training"])
        self.report.section("Training", *items)
        self.summary.update(summary)
        self.clock.lap("training plot")

    def mode_switch(self, subject: Subject, images: list) -> None:
        kw = dict(batch_size=self.s.eval_batch_size, device=self.dev, progress=self.progress)
        ms = mode_switch.run_mode_switch_grid(
            subject.models, subject.teachers, images, self.s.mode_switch_resolutions, **kw
        )
        mode_switch.write_mode_switch_table(ms, self.out / "mode_switch.csv")
        mode_switch.plot_mode_switch_grid(ms, self.out / "mode_switch.png")
        self.clock.lap("mode-switching curves")
        image = rp.Image("mode_switch.png", "Mode-switching curves")
        table, values = rp.mode_switch_table(ms), rp.Paragraph("All values: mode_switch.csv")
        self.report.section("Mode switching", *self.dry, rp.Paragraph(TEXT["mode_switch"]), image, table, values)
        self.summary["mode_switch"] = mode_switch.summarize_mode_switch(ms)

    def pictures(self, subject: Subject, images: list) -> None:
        panel = 128 if max(self.s.viz_resolutions) <= 256 else 192
        chosen = tqdm(images[: max(1, self.s.viz_images)], desc="PCA pictures", unit="image", disable=not self.progress)
        pics = []
        for p in chosen:
            grid = teacher_student_grid(load_image(p), subject.models, subject.teachers, self.s.viz_resolutions, panel)
            pics.append(grid.save(self.out / "pictures" / f"{p.stem}.png"))
        self.clock.lap("PCA pictures")
        caption = "rows = feature source, columns = input resolution"
        shown = [rp.Image(p.relative_to(self.out).as_posix(), f"{p.stem}: {caption}") for p in pics]
        text = rp.Paragraph(TEXT["pictures"].format(shown=len(pics), total=len(images)))
        self.report.section("Feature pictures", *self.dry, text, *shown)

    def zero_shot(self, subject: Subject, images: list) -> None:
        """How often each model's adaptor agrees with its open_clip teacher's own zero-shot predictions
        (both through the teacher's random text tower) on the held-out photographs."""
        classes, res = list(TEXT["zero_shot_classes"]), self.s.zero_shot_resolutions
        write_text(self.out / "zero_shot" / "classnames.txt", "\n".join(classes) + "\n")
        towers = {n: load_text_tower(str(c), weights=w) for n, (c, w) in subject.text_towers.items()}
        kw = dict(batch_size=self.s.eval_batch_size, device=self.dev)
        args = (subject.zs_teachers, towers, subject.models, images, classes, get_templates("base"), res)
        results = agreement_by_teacher(*args, self.out / "zero_shot", **kw)
        self.clock.lap("zero-shot")
        about = TEXT["zero_shot"].format(teachers=", ".join(results), images=len(images), classes=len(classes))
        cli = dict(checkpoint=subject.checkpoint.name, first=next(iter(results)), resolutions=",".join(map(str, res)))
        cli_text = rp.Paragraph(TEXT["zero_shot_cli"].format(**cli))
        self.report.section("Zero-shot", rp.Paragraph(about), rp.agreement_table(results), cli_text)
        self.summary.update(zero_shot=summarize_agreement(results), zero_shot_main_model=next(iter(subject.models)))

    def throughput(self, checkpoint: Path) -> None:
        # backbone only: the timm baseline has no adaptor heads either
        backbone = radio_model(str(checkpoint), progress=False).to(self.dev).eval()
        kw = dict(batch_size=self.s.bench_batch_size, iters=self.s.bench_iters, device=self.dev, progress=self.progress)
        bench = bench_model(backbone, list(self.s.bench_resolutions), baseline="timm", warmup=1, **kw)
        write_rows_csv(bench, self.out / "throughput.csv")
        self.clock.lap("throughput")
        about = TEXT["throughput"].format(device=self.dev, batch=self.s.bench_batch_size, iters=self.s.bench_iters)
        values = rp.Paragraph("All values: throughput.csv")
        self.report.section("Throughput", rp.Paragraph(about), rp.throughput_table(bench), values)
        self.summary["throughput"] = [{k: v for k, v in r.items() if isinstance(v, (int, float, str))} for r in bench]

    def finish(self, subject: Subject) -> Path:
        out, timings = self.out, self.clock.timings
        total = self.clock.total()
        extra = ["data/ (sample photographs)"] + (["train/ (training run)"] if subject.train_metrics else [])
        self.report.timings_section(timings).files_section(out, skip=("data", "train"), extra=extra)
        cpu = self.clock.cpu_time()
        self.summary.update(timings_s=timings, cpu_time_s=cpu, checkpoint=str(subject.checkpoint))
        write_text(out / "summary.json", json.dumps(self.summary, indent=2, default=float) + "\n")
        path = self.report.write(out)
        print(f"report: {path.resolve()} (and {(out / 'report.html').resolve()})")
        print(f"total wall time: {total:.1f} s (this process's CPU time: {cpu:.1f} s)")
        return path
