"""matplotlib figures without pyplot (no global state, no GUI backend), written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from openradio.atomicio import atomic_path
from openradio.extras import require


def new_figure(width_px: int, height_px: int, dpi: int = 100):
    """A matplotlib ``Figure`` of the given size in pixels (the ``[viz]`` extra)."""

    matplotlib = require("matplotlib", "plotting")
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # optional: openradio[viz], checked by require() above

    return Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)


def save_figure(fig, path: str | os.PathLike, dpi: int | None = None) -> Path:
    """Write ``fig`` as PNG under a temporary name, then rename (no partial file on a kill)."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **({"dpi": dpi} if dpi else {}))
    return path
