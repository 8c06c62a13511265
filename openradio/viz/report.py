"""Report rendering: one report (title, facts, notes, sections of paragraphs, images and tables)
written as Markdown and as a self-contained HTML page, plus the tables that evaluation results
turn into. Used by ``openradio demo``; any evaluation or extraction run can write one the same way::

    report = Report("kNN at three resolutions", facts=[("model", "radio_v2.5-b")])
    report.section("Accuracy", Paragraph("Top-1 on the held-out split."), Table(["res", "top-1"], rows))
    report.write("out/")          # out/report.md and out/report.html
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence, Union

from openradio.atomicio import write_text

__all__ = [
    "Paragraph",
    "Image",
    "Table",
    "Report",
    "fmt_number",
    "fmt_count",
    "markdown_table",
    "html_table",
    "mode_switch_table",
    "throughput_table",
    "agreement_table",
]

_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}"
    "figure{margin:1em 0}figcaption{color:#555;font-size:90%}"
)


class Paragraph(NamedTuple):
    text: str


class Image(NamedTuple):
    path: str  # relative to the report's folder
    caption: str


class Table(NamedTuple):
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


Item = Union[Paragraph, Image, Table]


def fmt_number(v: Any, digits: int = 4) -> str:
    """A float with ``digits`` significant digits (nan/inf as such); anything else as ``str``."""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if math.isfinite(v) else str(v)
    return str(v)


def fmt_count(n: int) -> str:
    """A parameter (or any) count that stays readable for tiny networks (86 k, not '0.0 M')."""
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k" if n >= 1e3 else str(n)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _markdown(item: Item) -> list[str]:
    if isinstance(item, Paragraph):
        return [item.text, ""]
    if isinstance(item, Image):
        return [f"![{item.caption}]({item.path})", "", f"*{item.caption}*", ""]
    return [markdown_table(item.header, item.rows), ""]


def _html(item: Item) -> str:
    if isinstance(item, Paragraph):
        return f"<p>{html.escape(item.text)}</p>"
    if isinstance(item, Image):
        return (
            f'<figure><img src="{html.escape(item.path)}" alt="{html.escape(item.caption)}">'
            f"<figcaption>{html.escape(item.caption)}</figcaption></figure>"
        )
    return html_table(item.header, item.rows)


@dataclass
class Report:
    """A report: a title, a table of facts, notes, then titled sections of items."""

    title: str
    facts: list = field(default_factory=list)  # (key, value) rows of the header table
    notes: list = field(default_factory=list)  # paragraphs under it
    sections: list = field(default_factory=list)  # (title, [Item, ...])

    def section(self, title: str, *items: Item) -> "Report":
        self.sections.append((title, list(items)))
        return self

    def timings_section(self, timings: Mapping[str, float], title: str = "Timings") -> "Report":
        """A table of seconds per phase (e.g. :class:`openradio.runtime.PhaseTimer`'s ``timings``)."""
        return self.section(title, Table(["phase", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()]))

    def files_section(self, folder: str | os.PathLike, skip: Sequence[str] = (), extra: Sequence[str] = ()) -> "Report":
        """The files in ``folder`` (relative paths; top-level entries in ``skip`` left out), then ``extra`` lines."""
        folder = Path(folder)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        files = [f for f in files if f.split("/")[0] not in skip] + list(extra)
        return self.section("Files", Paragraph(", ".join(files)))

    def to_markdown(self) -> str:
        md = [f"# {self.title}", "", markdown_table(["", ""], [[k, v] for k, v in self.facts]), ""]
        md += [n + "\n" for n in self.notes]
        for title, items in self.sections:
            md += [f"## {title}", ""]
            for item in items:
                md += _markdown(item)
        return "\n".join(md) + "\n"

    def to_html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>", html_table(["", ""], [[k, v] for k, v in self.facts])]
        body += [f"<p>{html.escape(n)}</p>" for n in self.notes]
        for title, items in self.sections:
            body.append(f"<h2>{html.escape(title)}</h2>")
            body += [_html(item) for item in items]
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )

    def write(self, folder: str | os.PathLike) -> Path:
        """``folder/report.md`` and ``folder/report.html`` (each written atomically); returns the Markdown path."""
        folder = Path(folder)
        write_text(folder / "report.html", self.to_html())
        return write_text(folder / "report.md", self.to_markdown())


def mode_switch_table(results: Mapping[str, Mapping[str, Sequence[Any]]]) -> Table:
    """``{teacher: {model: [ModeSwitchRow]}}`` as one table: a row per resolution, per teacher a
    column of MSE per model and one of the teacher's feature variance (the error of the mean)."""
    header, cols = ["resolution"], []
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
            rows = results[tname][label] if label is not None else next(iter(results[tname].values()))
            match = [r for r in rows if r.resolution == res]
            line.append("" if not match else fmt_number(match[0].teacher_variance if label is None else match[0].mse))
        table.append(line)
    return Table(header, table)


def throughput_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """Rows of :func:`openradio.eval.throughput.bench_model` (with a baseline) as a table."""
    nan = float("nan")
    return Table(
        ["input", "images/s", "latency ms", "timm baseline images/s", "speed ratio"],
        [
            [
                f"{r['height']}x{r['width']}",
                fmt_number(r["images_per_s"]),
                fmt_number(r["latency_ms"]),
                fmt_number(r.get("baseline_images_per_s", nan)),
                fmt_number(r.get("speed_ratio", nan)),
            ]
            for r in rows
        ],
    )


def agreement_table(results: Mapping[str, Mapping[str, Sequence[Any]]]) -> Table:
    """``{teacher: {model: [ZeroShotResult]}}`` of :func:`openradio.eval.agreement.agreement_by_teacher`."""
    return Table(
        ["teacher", "model", "input", "agreement (top-1)", "top-5"],
        [
            [t, label, str(r.resolution), f"{r.top1:.0f}%", f"{r.top5:.0f}%"]
            for t, per_model in results.items()
            for label, rs in per_model.items()
            for r in rs
        ],
    )
