"""ViTDet windowed attention, as an explicit schedule (no hooks, no state between calls).

Blocks run either globally or inside non-overlapping ws x ws token windows. Prefix tokens
(CLS + registers) skip the windowed blocks: they are set aside when a windowed stretch starts
and put back when it ends. Patch tokens stay in window-major order from the first block to the
last and are scattered back to raster order at the end; global blocks therefore see them in
window order, which the official code does too (equal up to summation order, so kept for parity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def windowed_blocks(depth: int, num_windowed: int | None = None, num_global: int | None = None) -> list[bool]:
    """True for blocks that attend within windows. The last block is always global."""
    if num_windowed is not None:
        period = num_windowed + 1
    else:
        period = max(depth // (num_global or 4), 1)
    return [i < depth - 1 and i % period != period - 1 for i in range(depth)]


@dataclass(frozen=True)
class WindowLayout:
    batch: int
    h: int
    w: int
    window: int

    @property
    def num_windows(self) -> int:
        return (self.h // self.window) * (self.w // self.window)

    def to_window_order(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, h*w, D) raster -> (B, h*w, D) ordered (window_row, window_col, row_in, col_in)."""
        B, _, D = patches.shape
        ws = self.window
        x = patches.reshape(B, self.h // ws, ws, self.w // ws, ws, D).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(B, self.h * self.w, D)

    def to_raster_order(self, patches: torch.Tensor) -> torch.Tensor:
        B, _, D = patches.shape
        ws = self.window
        x = patches.reshape(B, self.h // ws, self.w // ws, ws, ws, D).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(B, self.h * self.w, D)


class WindowedRunner:
    """Runs blocks one at a time under a ViTDet schedule; ``raster()`` gives the current
    sequence as (B, prefix + h*w, D) in raster order at any point (for intermediates)."""

    def __init__(self, tokens: torch.Tensor, num_prefix_tokens: int, layout: WindowLayout, schedule: list[bool]):
        self.num_prefix_tokens = num_prefix_tokens
        self.layout = layout
        self.schedule = schedule
        prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
        self.x = torch.cat([prefix, layout.to_window_order(patches)], dim=1)
        self.prefix: torch.Tensor | None = None  # set aside while windowed
        self.windowed = False

    def _to_windows(self) -> None:
        B, _, D = self.x.shape
        ws2 = self.layout.window**2
        self.prefix = self.x[:, : self.num_prefix_tokens]
        self.x = self.x[:, self.num_prefix_tokens :].reshape(B * self.layout.num_windows, ws2, D)
        self.windowed = True

    def _to_global(self) -> None:
        B = self.layout.batch
        D = self.x.shape[-1]
        self.x = torch.cat([self.prefix, self.x.reshape(B, -1, D)], dim=1)
        self.prefix = None
        self.windowed = False

    def run(self, index: int, block) -> None:
        want = self.schedule[index]
        if want and not self.windowed:
            self._to_windows()
        elif not want and self.windowed:
            self._to_global()
        self.x = block(self.x)

    def raster(self) -> torch.Tensor:
        if self.windowed:
            B = self.layout.batch
            x = torch.cat([self.prefix, self.x.reshape(B, -1, self.x.shape[-1])], dim=1)
        else:
            x = self.x
        n = self.num_prefix_tokens
        return torch.cat([x[:, :n], self.layout.to_raster_order(x[:, n:])], dim=1)
