"""Training curves from a run's ``metrics.csv`` (columns ``step``, ``loss`` and
``PARTITION/TEACHER/KIND`` losses): the plot and the first-vs-last table a report shows."""

from __future__ import annotations

import csv
import math
import os
import shutil
import statistics
from pathlib import Path
from typing import Any, Sequence

from openradio.viz.plots import new_figure, save_figure
from openradio.viz.report import Image, Item, Paragraph, Table, fmt_number

__all__ = [
    "training_section",
    "read_metrics",
    "plot_training_curves",
    "loss_table",
    "tail_median",
    "as_float",
    "training_summary",
]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def as_float(v: Any) -> float:
    """A CSV cell as a float (nan when empty or not a number)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def running_median(values: Sequence[float]) -> list[float]:
    """Trailing running median over ~1/20 of the run: small batches make single steps noisy, and
    a median is not dragged by the odd outlier step."""
    k = max(1, len(values) // 20)
    return [statistics.median(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def tail_median(metrics: Sequence[dict], col: str) -> float:
    """The median of ``col`` over the last 10 % of the steps (single steps are noisy)."""
    tail = metrics[-max(1, len(metrics) // 10) :]
    vals = [as_float(m[col]) for m in tail if math.isfinite(as_float(m[col]))]
    return statistics.median(vals) if vals else float("nan")


def loss_table(metrics: Sequence[dict]) -> Table:
    """Every loss column and the total: its value at the first step and the median of the last 10 %."""
    first = metrics[0]
    cols = [c for c in metrics[-1] if c.count("/") == 2] + ["loss"]
    n_tail = max(1, len(metrics) // 10)
    return Table(
        ["loss", "first step", f"median of the last {n_tail} steps"],
        [
            [c, fmt_number(as_float(first[c])), fmt_number(tail_median(metrics, c))]
            for c in cols
            if math.isfinite(as_float(first[c]))
        ],
    )


def training_summary(metrics: Sequence[dict]) -> dict:
    """The last step, the first and last total loss and the median of the last 10 % (JSON-ready)."""
    return {
        "steps": int(as_float(metrics[-1]["step"])),
        "final_loss": as_float(metrics[-1]["loss"]),
        "first_loss": as_float(metrics[0]["loss"]),
        "final_loss_tail_median": tail_median(metrics, "loss"),
    }


def _panel(ax, title: str) -> None:
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3, which="both")


def plot_training_curves(metrics: Sequence[dict], path: str | os.PathLike) -> Path:
    """One panel per partition (feature and summary losses per teacher) and one for the total loss;
    faint lines are every step, bold lines their running median (log scale)."""
    cols = [c for c in metrics[0] if c.count("/") == 2]
    parts = list(dict.fromkeys(c.split("/")[0] for c in cols))
    fig = new_figure(460 * (len(parts) + 1), 420)
    steps = [as_float(m["step"]) for m in metrics]
    colours: dict[str, str] = {}
    for j, part in enumerate(parts):
        ax = fig.add_subplot(1, len(parts) + 1, j + 1)
        for c in cols:
            p, teacher, kind = c.split("/")
            pts = [(s, y) for s, y in zip(steps, (as_float(m[c]) for m in metrics)) if math.isfinite(y) and y > 0]
            if p != part or not pts:
                continue
            colour = colours.setdefault(teacher, f"C{len(colours)}")
            style = "-" if kind == "features" else "--"
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=colour, linestyle=style, linewidth=0.6, alpha=0.25)
            ax.plot(xs, running_median(ys), color=colour, linestyle=style, linewidth=1.6, label=f"{teacher} {kind}")
        _panel(ax, f"partition '{part}'")
        ax.legend(fontsize=7)
    ax = fig.add_subplot(1, len(parts) + 1, len(parts) + 1)
    total = [as_float(m["loss"]) for m in metrics]
    ax.plot(steps, total, color="black", linewidth=0.6, alpha=0.25)
    ax.plot(steps, running_median(total), color="black", linewidth=1.6)
    _panel(ax, "total loss")
    fig.suptitle(
        "Training: feature losses (solid; MSE to PHI-S-normalised targets) and summary losses (dashed); "
        "faint: every step, bold: running median"
    )
    fig.tight_layout()
    return save_figure(fig, path)


def training_section(metrics_csv: str | os.PathLike, folder: str | os.PathLike, note: str = "") -> tuple[list, dict]:
    """A run's ``metrics.csv`` as report items: copied into ``folder`` (``training_metrics.csv``), plotted
    (``training.png``), its losses tabled, ``note`` under them; and :func:`training_summary` (empty
    without steps)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(metrics_csv, folder / "training_metrics.csv")
    metrics = read_metrics(metrics_csv)
    items: list[Item] = [Paragraph("Full metrics: training_metrics.csv")]
    if not metrics:
        return items, {}
    plot_training_curves(metrics, folder / "training.png")
    image = Image("training.png", "Per-teacher losses during distillation (log scale)")
    return [image, loss_table(metrics)] + ([Paragraph(note)] if note else []) + items, training_summary(metrics)
