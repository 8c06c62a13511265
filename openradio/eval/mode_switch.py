"""The mode-switching curve: how well a student's teacher-adaptor features match the teacher across
input resolutions (tech report, "Mode Switching"; the official ``mode_switching.py``).

For each resolution ``res`` the student sees the image resized+centre-cropped to ``res`` and its
teacher adaptor (e.g. ``dino_v2``) produces a feature map. The teacher sees the same image at
``res * teacher_patch / student_patch`` so that both token grids line up (DINOv2's 14-px patches vs
RADIO's 16-px ones); teachers that only work at one size run at their ``input_size``. If the grids
still differ the teacher map is resized bilinearly (``align_corners=True``) to the student's grid.

Per resolution, over all images and positions:

* ``MSE``        mean squared difference of all feature values;
* ``CosError``   ``1 - mean`` cosine similarity of the channel vectors at each position;
* ``TeacherVariance`` / ``PredVariance``: variance of each channel about its mean over images and
  positions, averaged over channels;
* ``Fidelity`` = ``TeacherVariance / MSE`` (1 means no better than predicting each channel's mean).

A student that "mode switches" shows a jump in MSE at some resolution.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from openradio.eval.data import load_or_none, resize_center_crop, warn_skipped, write_csv
from openradio.runtime import autocast, select_output
from openradio.viz.plots import new_figure, save_figure

# the fields of a checkpoint teacher entry that say which teacher to build for the comparison
TEACHER_KEYS = ("name", "type", "model", "pretrained", "input_size")

__all__ = [
    "resolution_range",
    "parse_resolution_range",
    "teacher_resolution",
    "align_teacher",
    "FeatureAgreement",
    "ModeSwitchRow",
    "CSV_COLUMNS",
    "run_mode_switch",
    "write_mode_switch_csv",
    "plot_mode_switch",
    "teacher_entry_config",
    "run_mode_switch_grid",
    "summarize_mode_switch",
    "write_mode_switch_table",
    "plot_mode_switch_grid",
]

CSV_COLUMNS = ("Resolution", "MSE", "CosError", "Fidelity", "PredVariance", "TeacherVariance")

# Teachers whose models accept many input sizes; others (e.g. CLIP) only run at their input_size.
MULTI_RESOLUTION_TEACHERS = ("dino_v2", "dinov2", "dino_v3", "sam", "sam3")


def teacher_entry_config(entry: Mapping, name: str, *, tiny: bool = False, width: Optional[int] = None) -> dict:
    """The ``build_teacher`` config of the network an adaptor was distilled from, from the checkpoint's
    teacher ``entry`` (:data:`TEACHER_KEYS` only: the rest describes the adaptor, not the teacher).
    ``tiny``: a small random network of that kind, ``width`` wide (the adaptor's output width, so
    the two can still be compared: dry runs, tests)."""
    conf = {k: v for k, v in dict(entry or {}).items() if k in TEACHER_KEYS}
    conf.setdefault("name", name)
    if tiny:
        conf["tiny"] = True
        if width:
            conf["arch_overrides"] = {"embed_dim": int(width)}
    return conf


def resolution_range(start: int = 192, stop: int = 1536, step: int = 16) -> list[int]:
    """``floor(start/step)*step ... ceil(stop/step)*step`` in steps of ``step`` (the official schedule)."""
    if step < 1:
        raise ValueError(f"resolution step must be positive, got {step}")
    lo = max(step, (start // step) * step)
    hi = -(-stop // step) * step
    if hi < lo:
        raise ValueError(f"empty resolution range {start}:{stop}:{step}")
    return list(range(lo, hi + 1, step))


def parse_resolution_range(text: str, default_step: int) -> list[int]:
    """``'192:1536:16'``, ``'192:1536'`` (step = ``default_step``) or a list ``'224,448'``."""
    t = text.replace(" ", "")
    try:
        if ":" in t:
            parts = [int(p) for p in t.split(":")]
            if len(parts) == 2:
                return resolution_range(parts[0], parts[1], default_step)
            if len(parts) == 3:
                return resolution_range(*parts)
        else:
            vals = [int(p) for p in t.split(",") if p]
            if vals and all(v > 0 for v in vals):
                return vals
    except ValueError:
        pass
    raise ValueError(f"bad resolutions {text!r}; use START:STOP[:STEP] (e.g. 192:1536:16) or a list like 224,448")


def teacher_resolution(res: int, student_patch: int, teacher_patch: int) -> int:
    """Input size at which the teacher's token grid matches the student's at ``res``."""
    return max(teacher_patch, round(res * teacher_patch / student_patch))


def align_teacher(teacher_feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (B, C, h, w) teacher map to the student grid (bilinear, align_corners=True)."""
    if tuple(teacher_feats.shape[-2:]) == tuple(size):
        return teacher_feats
    return F.interpolate(teacher_feats.float(), size=size, mode="bilinear", align_corners=True)


class FeatureAgreement:
    """Streaming MSE / cosine / per-channel variance statistics of student vs teacher maps (float64 sums)."""

    def __init__(self) -> None:
        self.n_vals = 0  # number of feature values (N*C*H*W)
        self.n_pos = 0  # number of positions (N*H*W)
        self.sq_err = 0.0
        self.cos_sum = 0.0
        self.t_sum = self.t_sq = self.s_sum = self.s_sq = None  # per-channel sums

    def update(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if student.shape != teacher.shape:
            raise ValueError(
                f"student features {tuple(student.shape)} and teacher features "
                f"{tuple(teacher.shape)} differ; align the teacher first"
            )
        s, t = student.double(), teacher.double()
        c = s.shape[1]
        self.n_vals += s.numel()
        self.n_pos += s.numel() // c
        self.sq_err += float(((s - t) ** 2).sum())
        self.cos_sum += float(F.cosine_similarity(s, t, dim=1).sum())
        dims = [0, 2, 3]
        sums = (t.sum(dims), (t * t).sum(dims), s.sum(dims), (s * s).sum(dims))
        if self.t_sum is None:
            self.t_sum, self.t_sq, self.s_sum, self.s_sq = (x.cpu() for x in sums)
        else:
            self.t_sum += sums[0].cpu()
            self.t_sq += sums[1].cpu()  # noqa: E702
            self.s_sum += sums[2].cpu()
            self.s_sq += sums[3].cpu()  # noqa: E702

    @staticmethod
    def _var(total: torch.Tensor, sq: torch.Tensor, n: int) -> float:
        mean = total / n
        return float((sq / n - mean * mean).clamp_min(0).mean())

    def result(self) -> dict[str, float]:
        if self.n_pos == 0:
            raise ValueError("no features were accumulated")
        mse = self.sq_err / self.n_vals
        tvar = self._var(self.t_sum, self.t_sq, self.n_pos)
        svar = self._var(self.s_sum, self.s_sq, self.n_pos)
        return {
            "MSE": mse,
            "CosError": 1.0 - self.cos_sum / self.n_pos,
            "Fidelity": tvar / mse if mse > 0 else math.inf,
            "PredVariance": svar,
            "TeacherVariance": tvar,
        }


@dataclass
class ModeSwitchRow:
    resolution: int
    mse: float
    cos_error: float
    fidelity: float
    pred_variance: float
    teacher_variance: float

    def as_csv(self) -> list:
        return [
            self.resolution,
            f"{self.mse:.8g}",
            f"{self.cos_error:.8g}",
            f"{self.fidelity:.8g}",
            f"{self.pred_variance:.8g}",
            f"{self.teacher_variance:.8g}",
        ]


class _PairDataset(Dataset):
    """Each image twice: at the student resolution and at the teacher resolution."""

    def __init__(self, paths: Sequence[str | os.PathLike], res: int, teacher_res: int):
        self.paths, self.res, self.teacher_res = list(paths), res, teacher_res

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):

        img = load_or_none(self.paths[i])
        if img is None:  # unreadable: dropped and counted by _collate_pairs
            return i
        return resize_center_crop(img, self.res), resize_center_crop(img, self.teacher_res)


def _collate_pairs(items):
    """Stack readable (student, teacher) pairs; unreadable images come as their index, listed last."""
    pairs = [it for it in items if not isinstance(it, int)]
    bad = [it for it in items if isinstance(it, int)]
    if not pairs:
        return None, None, bad
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), bad


def _teacher_is_multires(teacher) -> bool:
    flag = getattr(teacher, "multi_resolution", None)
    if flag is not None:
        return bool(flag)
    return str(getattr(teacher, "name", "")).lower() in MULTI_RESOLUTION_TEACHERS


def _input_side(input_size) -> int:
    if isinstance(input_size, (tuple, list)):
        return int(input_size[-1])
    return int(input_size)


@torch.no_grad()
def run_mode_switch(
    model: torch.nn.Module,
    teacher,
    adaptor: str,
    image_paths: Sequence[str | os.PathLike],
    resolutions: Iterable[int],
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    amp: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> list[ModeSwitchRow]:
    """Student adaptor features vs teacher features at each resolution (see the module docstring)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if not image_paths:
        raise ValueError("mode switching needs at least one image")
    sp = int(model.patch_size)
    tp = int(getattr(teacher, "patch_size", sp))
    multires = _teacher_is_multires(teacher)
    rows = []
    resolutions = list(resolutions)
    for res in tqdm(resolutions, desc=f"mode switch ({adaptor})", disable=not progress, unit="res"):
        if res % getattr(model, "min_resolution_step", sp):
            raise ValueError(
                f"resolution {res} is not a multiple of the model's step "
                f"{model.min_resolution_step}; use a step that is a multiple of it"
            )
        t_res = teacher_resolution(res, sp, tp) if multires else _input_side(teacher.input_size)
        stats = FeatureAgreement()
        loader = DataLoader(
            _PairDataset(image_paths, res, t_res),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_collate_pairs,
        )
        for s_img, t_img, bad in loader:
            if bad and res == resolutions[0]:  # the same files at every resolution: say it once
                warn_skipped([Path(image_paths[i]) for i in bad])
            if s_img is None:
                continue
            with autocast(device, amp):
                out = model(s_img.to(device), feature_fmt="NCHW")
                t_out = teacher(t_img.to(device), resolution=t_res)
            s_feat = select_output(out, adaptor).features.float()
            t_feat = t_out.features.float()
            if s_feat.shape[1] != t_feat.shape[1]:
                raise ValueError(
                    f"the {adaptor!r} adaptor gives {s_feat.shape[1]} channels but the teacher "
                    f"{t_feat.shape[1]}; is this the right teacher for the adaptor?"
                )
            stats.update(s_feat, align_teacher(t_feat, tuple(s_feat.shape[-2:])))
        r = stats.result()
        rows.append(ModeSwitchRow(res, r["MSE"], r["CosError"], r["Fidelity"], r["PredVariance"], r["TeacherVariance"]))
    return rows


def run_mode_switch_grid(
    models: dict[str, torch.nn.Module],
    teachers: dict,
    image_paths: Sequence[str | os.PathLike],
    resolutions: Iterable[int],
    **kwargs,
) -> dict[str, dict[str, list[ModeSwitchRow]]]:
    """:func:`run_mode_switch` for every teacher (by adaptor name) and every model (by label):
    ``{teacher: {model: rows}}``, each model at the resolutions snapped to its own step
    (``kwargs`` as there). What :func:`write_mode_switch_table` and :func:`plot_mode_switch_grid` take."""
    resolutions = list(resolutions)
    results: dict[str, dict[str, list[ModeSwitchRow]]] = {}
    for tname, teacher in teachers.items():
        results[tname] = {}
        for label, model in models.items():
            step = int(getattr(model, "min_resolution_step", model.patch_size))
            res = sorted({max(step, round(r / step) * step) for r in resolutions})
            results[tname][label] = run_mode_switch(model, teacher, tname, image_paths, res, **kwargs)
    return results


def summarize_mode_switch(results: dict[str, dict[str, Sequence[ModeSwitchRow]]]) -> dict:
    """``{teacher: {model: {"mean_mse", "mean_cos_error"}}}``: the means over resolutions."""
    return {
        t: {
            label: {
                "mean_mse": sum(r.mse for r in rows) / len(rows),
                "mean_cos_error": sum(r.cos_error for r in rows) / len(rows),
            }
            for label, rows in pm.items()
        }
        for t, pm in results.items()
    }


def write_mode_switch_csv(rows: Sequence[ModeSwitchRow], path: str | os.PathLike) -> Path:
    return write_csv(path, CSV_COLUMNS, [r.as_csv() for r in rows])


def plot_mode_switch(
    results: dict[str, Sequence[ModeSwitchRow]],
    path: str | os.PathLike,
    *,
    teacher: str = "dino_v2",
    metric: str = "mse",
    size_px: tuple[int, int] = (1000, 600),
    dpi: int = 100,
) -> Path:
    """PNG of the error against resolution, one line per model (the tech report's figure)."""

    label = {"mse": "MSE", "cos_error": "1 - cosine similarity", "fidelity": "Fidelity (Var / MSE)"}
    if metric not in label:
        raise ValueError(f"unknown metric {metric!r}; use one of {sorted(label)}")
    fig = new_figure(size_px[0], size_px[1], dpi)
    ax = fig.add_subplot(1, 1, 1)
    for name, rows in results.items():
        xs = [r.resolution for r in rows]
        ys = [getattr(r, metric) for r in rows]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=name)
    ax.set_xlabel("Input resolution (px)")
    ax.set_ylabel(f"{label[metric]} to {teacher} features")
    ax.set_title(f"Mode switching: {label[metric]} between student and {teacher} features vs. resolution")
    ax.grid(True, alpha=0.3)
    ax.legend(title="Model")
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


MODE_SWITCH_TABLE_COLUMNS = (
    "teacher",
    "model",
    "resolution",
    "mse",
    "cos_error",
    "fidelity",
    "pred_variance",
    "teacher_variance",
)


def write_mode_switch_table(results: dict[str, dict[str, Sequence[ModeSwitchRow]]], path: str | os.PathLike) -> Path:
    """One CSV for several teachers and models: ``results[teacher][model] = rows``."""
    rows = [
        [
            tname,
            label,
            r.resolution,
            f"{r.mse:.8g}",
            f"{r.cos_error:.8g}",
            f"{r.fidelity:.8g}",
            f"{r.pred_variance:.8g}",
            f"{r.teacher_variance:.8g}",
        ]
        for tname, per_model in results.items()
        for label, rs in per_model.items()
        for r in rs
    ]
    return write_csv(path, MODE_SWITCH_TABLE_COLUMNS, rows)


def plot_mode_switch_grid(results: dict[str, dict[str, Sequence[ModeSwitchRow]]], path: str | os.PathLike) -> Path:
    """Two rows (MSE, 1 - cosine) x one column per teacher; one line per model, plus the MSE of
    predicting each teacher channel's mean (the teacher's variance) for scale."""

    n = len(results)
    fig = new_figure(520 * n + 80, 760)
    for j, (tname, per_model) in enumerate(results.items()):
        ax_mse = fig.add_subplot(2, n, j + 1)
        ax_cos = fig.add_subplot(2, n, n + j + 1)
        for k, (label, rows) in enumerate(per_model.items()):
            xs = [r.resolution for r in rows]
            style = dict(marker="o", markersize=3, linewidth=1.8, linestyle="-" if k == 0 else "--")
            ax_mse.plot(xs, [r.mse for r in rows], label=label, **style)
            ax_cos.plot(xs, [r.cos_error for r in rows], label=label, **style)
        first = next(iter(per_model.values()))
        ax_mse.plot(
            [r.resolution for r in first],
            [r.teacher_variance for r in first],
            color="grey",
            linestyle=":",
            linewidth=1.2,
            label="predict the channel mean",
        )
        ax_mse.set_yscale("log")
        ax_mse.set_title(f"{tname}: MSE to the teacher's features")
        ax_cos.set_title(f"{tname}: 1 - cosine similarity")
        for ax in (ax_mse, ax_cos):
            ax.set_xlabel("input resolution (px)")
            ax.grid(True, alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.suptitle("Mode switching: student adaptor vs. teacher across input resolutions")
    fig.tight_layout()
    return save_figure(fig, path)
