"""Lay images and PCA colour maps out as PNG figures (PIL only).

Every renderer returns a :class:`Rendered`: the PIL image plus the geometry of each panel, so
callers (and tests) can find a panel without guessing at pixel offsets.

* :func:`side_by_side` — the input image and its feature colours, no border, exactly two
  panels wide (what the official ``sbs/`` pictures show).
* :func:`resolution_strip` — one image at several input resolutions, one labelled panel per
  resolution (the tech report's mode-switching figure), optionally led by the input.
* :func:`model_grid` — rows = models, columns = resolutions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from openradio.atomicio import atomic_path
from openradio.inputs.imageio import tensor_to_uint8

__all__ = ["Panel", "Cell", "Rendered", "compose", "side_by_side", "resolution_strip", "model_grid"]

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


@dataclass(frozen=True)
class Panel:
    """Where one picture sits in a figure. ``box`` = (left, top, right, bottom), right/bottom exclusive."""

    label: str
    kind: str  # "image" or "features"
    row: int
    col: int
    box: tuple[int, int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.box[3] - self.box[1], self.box[2] - self.box[0]


@dataclass(frozen=True)
class Cell:
    """One picture to place: a ``(3, H, W)`` float tensor or an ``(H, W, 3)`` float/uint8 array or tensor."""

    pixels: Tensor | np.ndarray
    label: str = ""
    kind: str = "features"


@dataclass
class Rendered:
    image: Image.Image
    panels: list[Panel] = field(default_factory=list)

    def panels_of(self, kind: str) -> list[Panel]:
        return [p for p in self.panels if p.kind == kind]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:  # a killed run leaves no truncated picture
            self.image.save(tmp, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
        return path


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw, text: str, font) -> int:
    if not text:
        return 0
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _fit_text(draw, text: str, font, max_width: int) -> str:
    """Shorten ``text`` with an ellipsis in the middle until it fits (model paths can be long)."""
    if _text_width(draw, text, font) <= max_width:
        return text
    keep = len(text)
    while keep > 4:
        keep -= 1
        cand = text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]
        if _text_width(draw, cand, font) <= max_width:
            return cand
    return text[:4]


def _to_pil(pixels, size_hw: tuple[int, int] | None):
    arr = tensor_to_uint8(pixels)
    im = Image.fromarray(arr)
    if size_hw is not None and (im.height, im.width) != tuple(size_hw):
        im = im.resize((size_hw[1], size_hw[0]), Image.Resampling.BICUBIC)
    return im


def compose(
    cells: Sequence[Sequence[Cell | None]],
    *,
    cell_size: tuple[int, int] | None = None,
    row_labels: Sequence[str] | None = None,
    label_cells: bool = False,
    gap: int = 0,
    font_size: int = 16,
    max_row_label_width: int = 220,
) -> Rendered:
    """Place ``cells[row][col]`` on a grid; ``None`` leaves a blank slot.

    Every cell is resized to ``cell_size = (height, width)`` (default: the first cell's size).
    ``label_cells`` draws each cell's label in a band above its row; ``row_labels`` go in a band
    on the left. With no labels and ``gap=0`` the panels touch, so a cell's pixels are exactly
    the input's.
    """
    rows = [list(r) for r in cells]
    if not rows or not any(c is not None for r in rows for c in r):
        raise ValueError("compose needs at least one cell")
    ncols = max(len(r) for r in rows)
    if cell_size is None:
        first = next(c for r in rows for c in r if c is not None)
        h, w = tensor_to_uint8(first.pixels).shape[:2]
        cell_size = (h, w)
    ch, cw = int(cell_size[0]), int(cell_size[1])
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    band = font_size + 8 if label_cells else 0
    left = 0
    if row_labels:
        if len(row_labels) != len(rows):
            raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
        row_labels = [_fit_text(probe, s, font, max_row_label_width) for s in row_labels]
        left = max(_text_width(probe, s, font) for s in row_labels) + 2 * gap + 8
    width = left + ncols * cw + (ncols - 1) * gap
    height = len(rows) * (band + ch) + (len(rows) - 1) * gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    panels: list[Panel] = []
    for r, row in enumerate(rows):
        top = r * (band + ch + gap) + band
        if row_labels:
            ty = top + ch // 2 - font_size // 2
            draw.text((4, ty), row_labels[r], fill=TEXT, font=font)
        for c, cell in enumerate(row):
            if cell is None:
                continue
            x0 = left + c * (cw + gap)
            canvas.paste(_to_pil(cell.pixels, (ch, cw)), (x0, top))
            if label_cells and cell.label:
                text = _fit_text(draw, cell.label, font, cw - 4)
                tx = x0 + (cw - _text_width(draw, text, font)) // 2
                draw.text((tx, top - band + 3), text, fill=TEXT, font=font)
            panels.append(Panel(cell.label, cell.kind, r, c, (x0, top, x0 + cw, top + ch)))
    return Rendered(canvas, panels)


def side_by_side(image: Tensor | np.ndarray, features_rgb: Tensor | np.ndarray) -> Rendered:
    """``[image | feature colours]``, both at the image's size, no border or labels.

    ``image`` is the (resized) model input, ``(3, H, W)`` in [0, 1]; ``features_rgb`` the PCA
    colours ``(H, W, 3)`` (resized to the image if they differ).
    """
    h, w = tensor_to_uint8(image).shape[:2]
    return compose([[Cell(image, "input", "image"), Cell(features_rgb, "features", "features")]], cell_size=(h, w))


def _display_size(height: int, width: int, panel_height: int | None) -> tuple[int, int]:
    if panel_height is None:
        return height, width
    return panel_height, max(1, round(width * panel_height / height))


def resolution_strip(
    image: Tensor | np.ndarray | None,
    maps: Sequence[tuple[int | str, Tensor | np.ndarray]],
    *,
    panel_height: int | None = 384,
    gap: int = 4,
    font_size: int = 16,
) -> Rendered:
    """One row: (optionally) the input, then one labelled panel per resolution.

    ``maps`` = ``[(resolution, rgb (H, W, 3)), ...]`` in display order; an int resolution is
    labelled ``"<r> px"``. All panels are shown at the same ``panel_height`` (aspect of the first
    map), so differences are of content, not size.
    """
    if not maps:
        raise ValueError("resolution_strip needs at least one (resolution, colours) pair")
    h, w = tensor_to_uint8(maps[0][1]).shape[:2]
    size = _display_size(h, w, panel_height)
    row: list[Cell] = []
    if image is not None:
        row.append(Cell(image, "input", "image"))
    for res, rgb in maps:
        row.append(Cell(rgb, f"{res} px" if isinstance(res, int) else str(res), "features"))
    return compose([row], cell_size=size, label_cells=True, gap=gap, font_size=font_size)


def model_grid(
    image: Tensor | np.ndarray | None,
    rows: Sequence[tuple[str, Sequence[tuple[int | str, Tensor | np.ndarray]]]],
    *,
    panel_height: int | None = 256,
    gap: int = 4,
    font_size: int = 16,
) -> Rendered:
    """Rows = models (labelled on the left), columns = resolutions; the input leads every row if given.

    ``rows`` = ``[(model_label, [(resolution, rgb), ...]), ...]``.
    """
    if not rows or not rows[0][1]:
        raise ValueError("model_grid needs at least one model with one resolution")
    h, w = tensor_to_uint8(rows[0][1][0][1]).shape[:2]
    size = _display_size(h, w, panel_height)
    cells: list[list[Cell]] = []
    for _, maps in rows:
        row: list[Cell] = [Cell(image, "input", "image")] if image is not None else []
        row += [Cell(rgb, f"{res} px" if isinstance(res, int) else str(res), "features") for res, rgb in maps]
        cells.append(row)
    return compose(
        cells, cell_size=size, row_labels=[name for name, _ in rows], label_cells=True, gap=gap, font_size=font_size
    )
