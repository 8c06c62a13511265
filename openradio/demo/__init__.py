"""``openradio demo``: distil, export, evaluate and report, end to end, on one machine.

Offline (the default): the bundled sample photographs (:mod:`openradio.inputs.sample_data`) train a
small student with the tiny v2.5 recipe (``configs/tiny.yaml``: four small, randomly
initialised teachers of the real architectures, two partitions in one step, SAM mosaic, PHI-S,
EMA). The student is exported in the official checkpoint format, loaded back with
:func:`openradio.radio_model`, and evaluated on held-out photographs:

* the mode-switching curve (student adaptor vs. the very teacher network it learned from,
  across input resolutions), next to the same architecture before training;
* PCA feature pictures at several resolutions (teacher, trained student, untrained student);
* inference throughput against a plain timm ViT of the same size, measured in the same process;
* the training curves.

Online (``version='radio_v2.5-b'``): no training; the released model and its real DINOv2
teacher (weights named in the checkpoint) go through the same evaluation.

Everything lands in one folder: ``report.md``, ``report.html``, PNGs, CSVs, ``summary.json``
and (offline) the exported ``model.pth.tar``.
"""
from __future__ import annotations

import copy
import csv
import html
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from openradio.atomicio import write_text
from openradio.runtime import pick_device

__all__ = ["tiny_recipe", "DemoSettings", "run_demo"]

def tiny_recipe() -> dict:
    """The tiny recipe (``configs/tiny.yaml``, shipped with the package) as a plain dict (a fresh
    copy each call)."""
    from openradio.distill.config import shipped_recipe

    import yaml
    return yaml.safe_load(shipped_recipe("tiny").read_text())


@dataclass
class DemoSettings:
    """What the demo measures. Defaults fit the ~5 minute budget on 2 CPU cores (offline)."""

    # Training steps. The tiny recipe's 60 steps take ~10 s of CPU; 300 (the same schedule,
    # stretched) make the student's features visibly match its teachers' (held-out MSE to the
    # DINOv2 teacher ~0.18 after 200 steps, ~0.13 after 400) and keep the whole demo near 2
    # minutes on 2 cores. None: the recipe's own count.
    steps: Optional[int] = 300
    mode_switch_resolutions: Sequence[int] = tuple(range(64, 257, 16))
    viz_resolutions: Sequence[int] = (64, 128, 256)
    viz_images: int = 3
    zero_shot_resolutions: Sequence[int] = (64, 128, 256)
    bench_resolutions: Sequence[int] = (128, 256, 512)
    bench_batch_size: int = 8
    bench_iters: int = 5
    eval_batch_size: int = 8
    # CPU threads for torch. The demo's tensors are tiny: with several OpenMP threads each op's
    # barrier waits dominate, and on a shared machine one descheduled thread stalls every op
    # (measured here: 0.3 s/step with 1 thread vs 1.3-8 s/step with 2). None keeps torch's setting.
    cpu_threads: Optional[int] = 1

    @classmethod
    def for_release(cls) -> "DemoSettings":
        """Settings for a released model: the real resolutions such models are used at."""
        gpu = torch.cuda.is_available()
        return cls(mode_switch_resolutions=tuple(range(256, 1025, 64 if gpu else 128)), cpu_threads=None,
                   viz_resolutions=(256, 512, 1024), bench_resolutions=(224, 512, 1024),
                   bench_batch_size=8 if gpu else 2, bench_iters=10 if gpu else 3,
                   eval_batch_size=8 if gpu else 2)


@dataclass
class _Subject:
    """What the common evaluation runs on."""

    title: str
    models: dict                        # label -> RADIOModel with adaptors (first = the main model)
    checkpoint: Path                    # file the main model was loaded from (for the backbone-only bench)
    teachers: dict                      # adaptor name -> Teacher network to compare with
    train_metrics: Optional[Path] = None
    notes: list = field(default_factory=list)
    facts: list = field(default_factory=list)  # (key, value) rows for the report's header table
    dry_run: bool = False               # the teacher is a small random network (--tiny-teacher)
    zs_teachers: dict = field(default_factory=dict)  # open_clip teacher name -> network (image tower)
    text_towers: dict = field(default_factory=dict)  # same name -> (config JSON, weights) of its text tower


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


# -- offline: distil a student -----------------------------------------------------------------------
def _prepare_train_dir(train_dir: Path) -> None:
    """A fresh training folder: a previous demo run's folder is replaced, anything else is refused
    (the trainer would otherwise resume from, and append to, what it finds there)."""
    if not train_dir.exists():
        return
    entries = list(train_dir.iterdir())
    if not entries:
        return
    if (train_dir / "config.yaml").is_file() or (train_dir / "metrics.csv").is_file():
        shutil.rmtree(train_dir)
        return
    raise FileExistsError(f"{train_dir} exists and is not a previous demo's training folder; "
                          "choose another --out directory or remove it")


def _train_offline(out: Path, data_dir: Path, eval_images: list, settings: DemoSettings, device: torch.device,
                   progress: bool, timings: dict) -> _Subject:
    import openradio
    from openradio.formats.official import save_checkpoint
    from openradio.distill.config import TrainConfig, from_dict, validate
    from openradio.distill.export import export_state_dict
    from openradio.distill.trainer import Trainer

    recipe = tiny_recipe()
    recipe_steps = sum(int(st["steps"]) for st in recipe["stages"])
    recipe["data"]["path"] = str(data_dir)
    train_dir = out / "train"
    _prepare_train_dir(train_dir)
    recipe["out_dir"] = str(train_dir)
    recipe["log_every"] = 1          # a point per step for the training-curve plot
    recipe["progress"] = progress
    recipe["device"] = str(device)
    if settings.steps is not None:
        if settings.steps < 1:
            raise ValueError(f"steps must be at least 1, got {settings.steps}")
        recipe["stages"][0]["steps"] = int(settings.steps)
        recipe["checkpoint_every"] = max(int(settings.steps), 1)  # one checkpoint, at the end
    cfg = from_dict(TrainConfig, recipe)
    validate(cfg)

    t = time.perf_counter()
    trainer = Trainer(cfg)
    # the same architecture and initial weights, never trained: the baseline of every comparison
    untrained = copy.deepcopy(trainer.student).eval()
    timings["build teachers + student"] = time.perf_counter() - t
    _log(progress, f"distilling a {cfg.student.model} student ({_count_params(trainer.student) / 1e6:.2f} M "
                   f"parameters) from {len(cfg.teachers)} teachers for {cfg.total_steps} steps on {device}")
    t = time.perf_counter()
    trainer.train(resume=False)
    timings["training"] = time.perf_counter() - t

    t = time.perf_counter()
    ckpt = trainer.export(out / "model.pth.tar")
    # the untrained student through the same export (with the trained PHI-S inverse folded into its
    # heads, so its outputs live in the teachers' feature space): a fair "no training" line
    base_ckpt = save_checkpoint(train_dir / "untrained.pth.tar", trainer.args,
                                export_state_dict(untrained, trainer.phi_s), epoch=0)
    # a small random text tower for each open_clip teacher, named in the checkpoints' teacher entries,
    # so `openradio zero-shot` runs on the demo's checkpoint with them
    towers = _write_text_towers(out, cfg, trainer.teachers)
    for path in (ckpt, base_ckpt):
        _name_text_towers(path, towers)
    names = [t.name for t in cfg.teachers]
    student = openradio.radio_model(str(ckpt), adaptor_names=names, progress=False).to(device).eval()
    baseline = openradio.radio_model(str(base_ckpt), adaptor_names=names, progress=False).to(device).eval()
    timings["export + reload"] = time.perf_counter() - t

    teachers = {n: trainer.teachers[n].eval() for n in names
                if getattr(trainer.teachers[n], "multi_resolution", False)}
    n_train = len([p for p in data_dir.iterdir() if p.is_file()])
    facts = [
        ("mode", "offline: distillation from small random teachers"),
        ("student", f"{cfg.student.model} {cfg.student.model_kwargs}, {_params(trainer.student)} parameters"),
        ("teachers", ", ".join(f"{t.name} ({t.type}: {t.model}, tiny random, "
                               f"{_params(trainer.teachers[t.name])})" for t in cfg.teachers)),
        ("partitions", "; ".join(f"{p.name}: {p.resolution} px x {p.batch_size}"
                                 + (f", mosaic {p.mosaic}" if p.mosaic else "") for p in cfg.stages[0].partitions)),
        ("steps", f"{trainer.step}" + (f" (the tiny recipe's schedule, {recipe_steps} steps in configs/tiny.yaml, "
                                        "stretched to this length)" if trainer.step != recipe_steps else "")),
        ("training images", f"{n_train} sample photographs (data/{data_dir.name}/)"),
        ("evaluation images", f"{len(eval_images)} held-out photographs: " + ", ".join(p.stem for p in eval_images)),
        ("checkpoint", f"{ckpt.name} (official .pth.tar format, EMA weights, PHI-S folded into the heads)"),
    ]
    notes = [
        "The teachers are small networks of the real architectures (open_clip CLIP ViT-H/14 and SigLIP "
        "SO400M towers, timm DINOv2 and SAM ViT-H image encoders), randomly initialised: no weights are "
        "downloaded. Their features are arbitrary but deterministic functions of the pixels, so the student "
        "can be judged on how well it reproduces them, not on semantics.",
        "'untrained' is the same architecture with the same initial weights before training, exported "
        "the same way (with the trained PHI-S inverse folded into its heads).",
    ]
    zs_teachers = {n: trainer.teachers[n].eval() for n in towers}
    return _Subject("openradio demo (offline distillation)", {"trained": student, "untrained": baseline}, ckpt,
                    teachers, train_metrics=train_dir / "metrics.csv", notes=notes, facts=facts,
                    zs_teachers=zs_teachers, text_towers=towers)


def _write_text_towers(out: Path, cfg, teachers: dict) -> dict:
    """{teacher: (config JSON, weights)}: a small random open_clip text tower per open_clip teacher,
    embedding to that teacher's image-embedding width (its "own" text tower, as random as it is)."""
    from openradio.model.text import write_random_text_tower

    towers = {}
    for i, t in enumerate(cfg.teachers):
        if (t.type or t.name) != "open_clip":
            continue
        # open_clip gives any model whose name contains 'siglip' the SigLIP tokenizer from the HF hub;
        # these towers use its bundled BPE tokenizer, so their names avoid that word
        file_name = t.name.lower().replace("siglip", "sig_lip") + "-text"
        towers[t.name] = write_random_text_tower(out / "text_towers", file_name,
                                                 int(teachers[t.name].summary_dim), seed=cfg.seed + 1000 + i)
    return towers


def _name_text_towers(ckpt: Path, towers: dict) -> None:
    """Record each tower in the checkpoint's teacher entry (``text_model``/``text_weights``, relative
    to the checkpoint's folder); rewritten atomically."""
    from openradio.formats.official import load_checkpoint_file, save_checkpoint

    chk = load_checkpoint_file(ckpt)
    for entry in chk["args"].teachers:
        if entry.get("name") in towers:
            cfg_path, weights = towers[entry["name"]]
            entry["text_model"] = os.path.relpath(cfg_path, ckpt.parent)
            entry["text_weights"] = os.path.relpath(weights, ckpt.parent)
    save_checkpoint(ckpt, chk["args"], chk["state_dict"], state_dict_ema=chk.get("state_dict_ema"),
                    epoch=chk.get("epoch", 0), arch=chk.get("arch"))


# The classes of the demo's zero-shot check: the held-out photographs' subjects and the training
# photographs' (the random teachers' predictions among them are the labels, not the names' meaning).
DEMO_CLASSNAMES = ("cat", "cup of coffee", "rocket", "flower", "astronaut", "motorcycle", "coins", "camera",
                   "galaxy", "moon")


def _zero_shot(subject: _Subject, images: list, settings: DemoSettings, device: torch.device, out: Path,
               progress: bool) -> tuple[dict, list]:
    """Each open_clip teacher's own zero-shot predictions (its image embedding against its text
    tower's class embeddings) on the held-out photographs, then how often each model's adaptor,
    through the same text tower, predicts the same class: {teacher: {model: [ZeroShotResult]}}."""
    from openradio.eval.data import read_labelled_images
    from openradio.eval.zero_shot import build_classifier, evaluate_zero_shot, get_templates, zero_shot_logits
    from openradio.inputs.imageio import load_image, resize_center_crop
    from openradio.model.text import load_text_tower

    zs = out / "zero_shot"
    zs.mkdir(parents=True, exist_ok=True)
    classes = list(DEMO_CLASSNAMES)
    write_text(zs / "classnames.txt", "\n".join(classes) + "\n")
    templates = get_templates("base")
    results: dict = {}
    for tname, teacher in subject.zs_teachers.items():
        cfg_path, weights = subject.text_towers[tname]
        tower = load_text_tower(str(cfg_path), weights=weights)
        clf = build_classifier(tower.tokenize, tower.encode_text, classes, templates, progress=False)
        rows = []
        for p in images:
            x = resize_center_crop(load_image(p), int(teacher.input_size))[None]
            with torch.inference_mode():
                s = teacher(x.to(teacher.pixel_mean.device)).summary.float().cpu()
            pred = int(zero_shot_logits(s, clf)[0].argmax())
            rows.append(f"{os.path.relpath(p, zs)}\t{classes[pred]}")
        labels = zs / f"{tname}_teacher_labels.tsv"
        write_text(labels, "\n".join(rows) + "\n")
        data = read_labelled_images(labels, classes)
        results[tname] = {label: evaluate_zero_shot(model, clf, data, list(settings.zero_shot_resolutions),
                                                    adaptor=tname, batch_size=settings.eval_batch_size,
                                                    device=device, progress=False)
                          for label, model in subject.models.items()}
    return results, classes


def _count_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _params(m: torch.nn.Module) -> str:
    """A parameter count that stays readable for tiny networks (86 k, not '0.0 M')."""
    n = _count_params(m)
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k" if n >= 1e3 else str(n)


# -- online: a released model ------------------------------------------------------------------------
def _resolve_checkpoint(version: str, progress: bool) -> Path:
    """The checkpoint of a released name (downloaded once) or a local path (the loader's
    resolution), with the demo's advice when the download fails."""
    from openradio.formats.resolve import resolve_checkpoint

    try:
        return resolve_checkpoint(version, progress=progress)[0]
    except RuntimeError as e:
        raise RuntimeError(f"cannot run the demo on {version}: {str(e).splitlines()[0]} "
                           "(without a network, run `openradio demo` with no --version)") from None


def _load_release(version: str, path: Path, device: torch.device, progress: bool, tiny_teacher: bool,
                  timings: dict) -> _Subject:
    import openradio
    from openradio.eval.mode_switch import TEACHER_KEYS
    from openradio.teachers import build_teacher
    from openradio.versions import VERSIONS

    t = time.perf_counter()
    from openradio.formats.official import load_checkpoint_file
    from openradio.formats.official import unique_names

    available = unique_names(load_checkpoint_file(path)["args"])
    # by name when released, so the model gets the version's resolution settings (the file is cached)
    model = openradio.radio_model(version if version in VERSIONS else str(path), adaptor_names=available,
                                  progress=False).to(device).eval()
    timings["load model"] = time.perf_counter() - t

    t = time.perf_counter()
    teachers, confs = {}, {}
    for name in ("dino_v2",):
        if name not in model.adaptors:
            continue
        adaptor = model.adaptors[name]
        conf = {k: v for k, v in dict(adaptor.teacher_conf).items() if k in TEACHER_KEYS}
        conf.setdefault("name", name)
        if tiny_teacher:  # a small random teacher of the same kind and width (dry runs, tests)
            conf["tiny"] = True
            conf["arch_overrides"] = {"embed_dim": int(adaptor.feat_mlp.output_dim)}
        confs[name] = conf
        try:
            teachers[name] = build_teacher(conf).to(device).eval()
        except (OSError, RuntimeError, ConnectionError) as e:
            raise RuntimeError(f"cannot build the {name} teacher {conf.get('model')!r} with its pretrained weights "
                               f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); it needs a network "
                               "connection the first time") from None
    if not teachers:
        raise ValueError(f"{version} has no dino_v2 adaptor to compare with a teacher; adaptors: {available}")
    timings["build teacher"] = time.perf_counter() - t
    released = version in VERSIONS
    label = VERSIONS[version].name if released else Path(version).name
    mode = f"{'released model' if released else 'local checkpoint'} {label} (no training)"
    if tiny_teacher:
        mode += "; dry run with a small random teacher (--tiny-teacher)"
    facts = [
        ("mode", mode),
        ("model", f"{getattr(model.args, 'model', '?')}, {_params(model)} parameters with adaptors"),
        ("adaptors", ", ".join(available)),
        ("teacher for the mode-switching curve", ", ".join(
            f"{n}: {confs[n].get('model', '?')}{' (small random network of this kind)' if tiny_teacher else ''}, "
            f"{_params(t)} parameters" for n, t in teachers.items())),
        ("checkpoint", str(path)),
    ]
    if tiny_teacher:
        notes = ["Dry run: the teacher is a small random network of the kind named in the checkpoint's arguments "
                 "(--tiny-teacher), so the curves and pictures test the pipeline and say nothing about the model."]
    else:
        notes = ["The teacher is the network named in the checkpoint's arguments, with its pretrained weights."]
    return _Subject(f"openradio demo ({label})", {label: model}, path, teachers, notes=notes, facts=facts,
                    dry_run=tiny_teacher)


# -- evaluation --------------------------------------------------------------------------------------
def _mode_switch(subject: _Subject, images: list, settings: DemoSettings, device: torch.device, out: Path,
                 progress: bool) -> tuple[dict, list[Path]]:
    """{teacher: {model label: rows}}; writes mode_switch.csv and mode_switch.png."""
    from openradio.eval.mode_switch import plot_mode_switch_grid, run_mode_switch, write_mode_switch_table

    results: dict[str, dict[str, list]] = {}
    for tname, teacher in subject.teachers.items():
        results[tname] = {}
        for label, model in subject.models.items():
            step = int(getattr(model, "min_resolution_step", model.patch_size))
            res = sorted({max(step, round(r / step) * step) for r in settings.mode_switch_resolutions})
            results[tname][label] = run_mode_switch(model, teacher, tname, images, res,
                                                    batch_size=settings.eval_batch_size, device=device,
                                                    progress=progress)
    csv_path = write_mode_switch_table(results, out / "mode_switch.csv")
    png = plot_mode_switch_grid(results, out / "mode_switch.png")
    return results, [csv_path, png]


def _pictures(subject: _Subject, images: list, settings: DemoSettings, out: Path, progress: bool) -> list[Path]:
    """One grid per image: columns = resolutions; rows = the model input, then per teacher the
    teacher's features and each model's adaptor features, then the main model's backbone.

    A teacher block is coloured with one PCA basis fitted on that teacher's maps at every
    resolution, so a colour means the same feature in every panel of the block (teacher or
    student, any resolution). The backbone row has its own basis, shared across resolutions.
    """
    from tqdm.auto import tqdm

    from openradio.eval.mode_switch import align_teacher, teacher_resolution
    from openradio.inputs.imageio import load_image
    from openradio.viz.features import model_features, prepare_input, supported_resolution
    from openradio.viz.pca import fit_pca_on_maps, pca_rgb
    from openradio.viz.render import model_grid

    main_label, main = next(iter(subject.models.items()))
    panel = 128 if max(settings.viz_resolutions) <= 256 else 192
    disp = (panel, panel)
    written = []
    chosen = images[: max(1, settings.viz_images)]
    resolutions = list(dict.fromkeys(supported_resolution(main, r) for r in settings.viz_resolutions))
    for path in tqdm(chosen, desc="PCA pictures", unit="image", disable=not progress):
        image = load_image(path)
        # square crops: the teacher's and the student's token grids then cover the same pixels
        inputs = {r: prepare_input(image, main, r, square=True) for r in resolutions}
        rows: list[tuple[str, list]] = [("input", [(r, inputs[r]) for r in resolutions])]
        for tname, teacher in subject.teachers.items():
            t_maps, s_maps = [], {label: [] for label in subject.models}
            for r in resolutions:
                t_res = teacher_resolution(r, int(main.patch_size), int(teacher.patch_size))
                with torch.inference_mode():
                    t_feat = teacher(inputs[r][None].to(teacher.pixel_mean.device),
                                     resolution=t_res).features.float().cpu()
                for label, model in subject.models.items():
                    s_maps[label].append(model_features(model, inputs[r], adaptor=tname).cpu())
                t_maps.append(align_teacher(t_feat, tuple(s_maps[main_label][-1].shape[-2:])))
            stats = fit_pca_on_maps(t_maps)
            rows.append((f"{tname} teacher", [(r, pca_rgb(m, disp, stats=stats)) for r, m in zip(resolutions, t_maps)]))
            for label, maps in s_maps.items():
                rows.append((f"{tname}: {label}", [(r, pca_rgb(m, disp, stats=stats)) for r, m in zip(resolutions, maps)]))
        b_maps = [model_features(main, inputs[r]).cpu() for r in resolutions]
        b_stats = fit_pca_on_maps(b_maps)
        rows.append((f"backbone: {main_label}", [(r, pca_rgb(m, disp, stats=b_stats)) for r, m in zip(resolutions, b_maps)]))
        grid = model_grid(None, rows, panel_height=panel, font_size=13)
        written.append(grid.save(out / "pictures" / f"{path.stem}.png"))
    return written


def _throughput(subject: _Subject, settings: DemoSettings, device: torch.device, out: Path,
                progress: bool) -> tuple[list[dict], Path]:
    import openradio
    from openradio.eval.throughput import write_rows_csv
    from openradio.eval.throughput import bench_model

    # backbone only: the timm baseline has no adaptor heads either
    model = openradio.radio_model(str(subject.checkpoint), progress=False).to(device).eval()
    rows = bench_model(model, list(settings.bench_resolutions), batch_size=settings.bench_batch_size,
                       baseline="timm", iters=settings.bench_iters, warmup=1, device=device, progress=progress)
    return rows, write_rows_csv(rows, out / "throughput.csv")


def _read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _smooth(values: Sequence[float]) -> list[float]:
    """Trailing running median over ~1/20 of the run: the tiny batches make single steps noisy, and
    a median is not dragged by the odd outlier step."""
    k = max(1, len(values) // 20)
    return [statistics.median(values[max(0, i - k + 1): i + 1]) for i in range(len(values))]


def _plot_training(metrics: list[dict], path: Path) -> Path:
    """One panel per partition (feature and summary losses per teacher) and one for the total loss."""
    cols = [c for c in metrics[0] if c.count("/") == 2]
    parts = list(dict.fromkeys(c.split("/")[0] for c in cols))
    from openradio.viz.plots import new_figure, save_figure
    fig = new_figure(460 * (len(parts) + 1), 420)
    steps = [_num(m["step"]) for m in metrics]
    colours = {}
    for j, part in enumerate(parts):
        ax = fig.add_subplot(1, len(parts) + 1, j + 1)
        for c in cols:
            p, teacher, kind = c.split("/")
            if p != part:
                continue
            ys = [_num(m[c]) for m in metrics]
            pts = [(s, y) for s, y in zip(steps, ys) if math.isfinite(y) and y > 0]
            if not pts:
                continue
            colour = colours.setdefault(teacher, f"C{len(colours)}")
            style = "-" if kind == "features" else "--"
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=colour, linestyle=style, linewidth=0.6, alpha=0.25)
            ax.plot(xs, _smooth(ys), color=colour, linestyle=style, linewidth=1.6, label=f"{teacher} {kind}")
        ax.set_yscale("log")
        ax.set_title(f"partition '{part}'")
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7)
    ax = fig.add_subplot(1, len(parts) + 1, len(parts) + 1)
    total = [_num(m["loss"]) for m in metrics]
    ax.plot(steps, total, color="black", linewidth=0.6, alpha=0.25)
    ax.plot(steps, _smooth(total), color="black", linewidth=1.6)
    ax.set_yscale("log")
    ax.set_title("total loss")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3, which="both")
    fig.suptitle("Training: feature losses (solid; MSE to PHI-S-normalised targets) and summary losses (dashed); "
                 "faint: every step, bold: running median")
    fig.tight_layout()
    return save_figure(fig, path)


# -- report ------------------------------------------------------------------------------------------
def _fmt(v: float, digits: int = 4) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def _mode_switch_table(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["resolution"]
    cols = []
    for tname, per_model in results.items():
        for label in per_model:
            header.append(f"{tname} MSE ({label})")
            cols.append((tname, label))
        header.append(f"{tname} teacher variance")
        cols.append((tname, None))
    resolutions = sorted({r.resolution for pm in results.values() for rows in pm.values() for r in rows})
    table = []
    for res in resolutions:
        line = [str(res)]
        for tname, label in cols:
            pm = results[tname]
            rows = pm[label] if label is not None else next(iter(pm.values()))
            match = [r for r in rows if r.resolution == res]
            if not match:
                line.append("")
            else:
                line.append(_fmt(match[0].teacher_variance if label is None else match[0].mse))
        table.append(line)
    return header, table


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _write_report(out: Path, subject: _Subject, sections: list[tuple[str, list]], summary: dict) -> Path:
    """``sections`` = [(title, [('p', text) | ('img', rel_path, caption) | ('table', header, rows)])]."""
    md = [f"# {subject.title}", ""]
    md += [_md_table(["", ""], [[k, v] for k, v in subject.facts]), ""]
    md += [n + "\n" for n in subject.notes]
    body = [f"<h1>{html.escape(subject.title)}</h1>",
            _html_table(["", ""], [[k, v] for k, v in subject.facts])]
    body += [f"<p>{html.escape(n)}</p>" for n in subject.notes]
    for title, items in sections:
        md += [f"## {title}", ""]
        body.append(f"<h2>{html.escape(title)}</h2>")
        for item in items:
            if item[0] == "p":
                md += [item[1], ""]
                body.append(f"<p>{html.escape(item[1])}</p>")
            elif item[0] == "img":
                md += [f"![{item[2]}]({item[1]})", "", f"*{item[2]}*", ""]
                body.append(f'<figure><img src="{html.escape(item[1])}" alt="{html.escape(item[2])}">'
                            f"<figcaption>{html.escape(item[2])}</figcaption></figure>")
            elif item[0] == "table":
                md += [_md_table(item[1], item[2]), ""]
                body.append(_html_table(item[1], item[2]))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}"
             "figure{margin:1em 0}figcaption{color:#555;font-size:90%}")
    from openradio.atomicio import write_text
    write_text(out / "report.html",
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(subject.title)
        + f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    report = out / "report.md"
    write_text(report, "\n".join(md) + "\n")
    return report


# -- entry point -------------------------------------------------------------------------------------
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

    start = time.perf_counter()
    cpu_start = time.process_time()
    if settings is None:
        settings = DemoSettings() if version is None else DemoSettings.for_release()
    else:
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
        return _run(out_dir, version, dev, progress, settings, tiny_teacher, start, cpu_start)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir, version: Optional[str], dev: torch.device, progress: bool, settings: DemoSettings,
         tiny_teacher: bool, start: float, cpu_start: float) -> Path:
    from openradio.inputs.sample_data import write_sample_split
    from openradio.versions import VERSIONS

    out = Path(out_dir)
    timings: dict[str, float] = {}
    # fail on what can be checked before writing anything
    if version is None:
        _prepare_train_dir(out / "train")
    else:
        t = time.perf_counter()
        ckpt_path = _resolve_checkpoint(version, progress)
        if version in VERSIONS:  # a local file is not downloaded
            timings["download"] = time.perf_counter() - t
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    split = write_sample_split(out / "data")
    timings["sample images"] = time.perf_counter() - t
    _log(progress, f"sample photographs: {len(split.train)} for training in {split.train_dir}, "
                   f"{len(split.eval)} held out in {split.eval_dir}")

    if version is None:
        subject = _train_offline(out, split.train_dir, split.eval, settings, dev, progress, timings)
    else:
        subject = _load_release(version, ckpt_path, dev, progress, tiny_teacher, timings)

    images = list(split.eval)
    sections: list[tuple[str, list]] = []
    summary: dict[str, Any] = {"version": version, "device": str(dev), "steps": None, "dry_run": subject.dry_run}
    dry = [("p", "Dry run (--tiny-teacher): the teacher here is a small random network, so these numbers "
                 "exercise the pipeline and say nothing about the model.")] if subject.dry_run else []

    if subject.train_metrics is not None:
        t = time.perf_counter()
        metrics = _read_metrics(subject.train_metrics)
        shutil.copyfile(subject.train_metrics, out / "training_metrics.csv")
        items: list = []
        if metrics:
            _plot_training(metrics, out / "training.png")
            items.append(("img", "training.png", "Per-teacher losses during distillation (log scale)"))
            last = metrics[-1]
            loss_cols = [c for c in last if c.count("/") == 2]
            first = metrics[0]
            tail = metrics[-max(1, len(metrics) // 10):]  # single steps are noisy: median of the last 10%

            def tail_median(col: str) -> float:
                vals = [_num(m[col]) for m in tail if math.isfinite(_num(m[col]))]
                return statistics.median(vals) if vals else float("nan")

            items.append(("table", ["loss", "first step", f"median of the last {len(tail)} steps"],
                          [[c, _fmt(_num(first[c])), _fmt(tail_median(c))] for c in loss_cols + ["loss"]
                           if math.isfinite(_num(first[c]))]))
            items.append(("p", "Feature losses are MSEs against PHI-S-normalised teacher features; the "
                               "normaliser's statistics are re-estimated every few steps early on, which "
                               "moves the targets' scale (visible as steps in the curves)."))
            summary["steps"] = int(_num(last["step"]))
            summary["final_loss"] = _num(last["loss"])
            summary["first_loss"] = _num(first["loss"])
            summary["final_loss_tail_median"] = tail_median("loss")
        sections.append(("Training", items + [("p", "Full metrics: training_metrics.csv")]))
        timings["training plot"] = time.perf_counter() - t

    t = time.perf_counter()
    ms_results, _ = _mode_switch(subject, images, settings, dev, out, progress)
    timings["mode-switching curves"] = time.perf_counter() - t
    header, rows = _mode_switch_table(ms_results)
    ms_items = dry + [("p", "Each adaptor's spatial features against the teacher network itself, on the held-out "
                      "photographs, as the input resolution changes (the tech report's mode-switching plot). "
                      "The teacher sees the same picture at the size that aligns its token grid with the "
                      "student's. Lower is better; the dotted line is the error of predicting each teacher "
                      "channel's mean."),
                ("img", "mode_switch.png", "Mode-switching curves"),
                ("table", header, rows),
                ("p", "All values: mode_switch.csv")]
    sections.append(("Mode switching", ms_items))
    summary["mode_switch"] = {
        tname: {label: {"mean_mse": sum(r.mse for r in rows_) / len(rows_),
                        "mean_cos_error": sum(r.cos_error for r in rows_) / len(rows_)}
                for label, rows_ in pm.items()} for tname, pm in ms_results.items()}

    t = time.perf_counter()
    pics = _pictures(subject, images, settings, out, progress)
    timings["PCA pictures"] = time.perf_counter() - t
    pic_items = dry + [("p", "Spatial features coloured by robust PCA (first three components as RGB), on "
                       f"{len(pics)} of the {len(images)} held-out photographs (the mode-switching curves use all "
                       f"{len(images)}), centre-cropped to each resolution (top row: what the model sees). Each teacher "
                       "block (the teacher, then the students' adaptors) is coloured with one PCA basis fitted on "
                       "the teacher's maps, so matching colours mean matching features; the backbone row has its "
                       "own basis.")]
    pic_items += [("img", p.relative_to(out).as_posix(), f"{p.stem}: rows = feature source, "
                   f"columns = input resolution") for p in pics]
    sections.append(("Feature pictures", pic_items))

    if subject.zs_teachers:
        t = time.perf_counter()
        zs_results, classes = _zero_shot(subject, images, settings, dev, out, progress)
        timings["zero-shot"] = time.perf_counter() - t
        main_label = next(iter(subject.models))
        zs_rows = [[tname, label, str(r.resolution), f"{r.top1:.0f}%", f"{r.top5:.0f}%"]
                   for tname, per_model in zs_results.items() for label, rs in per_model.items() for r in rs]
        first = next(iter(zs_results))
        sections.append(("Zero-shot", [
            ("p", f"Each language-aligned teacher ({', '.join(zs_results)}) comes with a small random text tower "
                  f"(text_towers/, named in the checkpoint). The teacher classifies each of the {len(images)} "
                  f"held-out photographs among {len(classes)} class prompts ('an image of a ...'); the student's "
                  "adaptor, through the same text tower, should pick the same class. Agreement = how often it "
                  "does (top-5: the teacher's class among the student's five best). With random teachers the "
                  "class names mean nothing, but agreement still measures how faithfully the adaptor reproduces "
                  "its teacher's embedding; 'untrained' (the student before training) is the baseline."),
            ("table", ["teacher", "model", "input", "agreement (top-1)", "top-5"], zs_rows),
            ("p", f"The same numbers from the command line: openradio zero-shot --version {subject.checkpoint.name} "
                  f"--adaptor {first} --data zero_shot/{first}_teacher_labels.tsv --classnames zero_shot/classnames.txt "
                  f"--templates base --resolutions {','.join(map(str, settings.zero_shot_resolutions))} "
                  "--out zero_shot/cli (run in this folder).")]))
        summary["zero_shot"] = {tname: {label: {str(r.resolution): {"top1": r.top1, "top5": r.top5} for r in rs}
                                        for label, rs in per_model.items()}
                                for tname, per_model in zs_results.items()}
        summary["zero_shot_main_model"] = main_label

    t = time.perf_counter()
    bench_rows, _ = _throughput(subject, settings, dev, out, progress)
    timings["throughput"] = time.perf_counter() - t
    sections.append(("Throughput", [
        ("p", f"Backbone forward passes on {dev} (batch {settings.bench_batch_size}, median of "
              f"{settings.bench_iters} timed calls), against a plain timm ViT of the same width and depth "
              "(learned position embedding, one class token, no registers, no CPE) timed in the same process. "
              "Absolute numbers depend on the machine and its load; the ratio is the number to read."),
        ("table", ["input", "images/s", "latency ms", "timm baseline images/s", "speed ratio"],
         [[f"{r['height']}x{r['width']}", _fmt(r["images_per_s"]), _fmt(r["latency_ms"]),
           _fmt(r.get("baseline_images_per_s", float("nan"))), _fmt(r.get("speed_ratio", float("nan")))]
          for r in bench_rows]),
        ("p", "All values: throughput.csv")]))
    summary["throughput"] = [{k: v for k, v in r.items() if isinstance(v, (int, float, str))} for r in bench_rows]

    timings["total"] = time.perf_counter() - start
    sections.append(("Timings", [("table", ["phase", "seconds"],
                                  [[k, f"{v:.1f}"] for k, v in timings.items()])]))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.is_file() and not p.relative_to(out).parts[0] in ("data", "train"))
    sections.append(("Files", [("p", ", ".join(files + ["data/ (sample photographs)"]
                                               + (["train/ (training run)"] if subject.train_metrics else [])))]))
    summary["timings_s"] = timings
    summary["cpu_time_s"] = time.process_time() - cpu_start
    summary["checkpoint"] = str(subject.checkpoint)
    report = _write_report(out, subject, sections, summary)
    print(f"report: {report.resolve()} (and {(out / 'report.html').resolve()})")
    print(f"total wall time: {timings['total']:.1f} s (this process's CPU time: {summary['cpu_time_s']:.1f} s)")
    return report
