"""Images of different sizes in one packed token sequence (``RADIOModel.forward_images``).

Everything in a ViT block but attention works token by token (LayerNorm, qkv, projection, MLP,
layer scale), so the tokens of all images are concatenated into one (1, N, D) sequence and those
parts run once, on large matrices. Attention must stay within an image: a global block runs SDPA
per image (images with the same token count together, as one batch); a ViTDet windowed block
runs one SDPA over the windows of every image at once (all windows have ws*ws tokens). This is
block-diagonal attention without ever forming the N x N mask, whose cost would grow with the
square of the whole pack.

Layout. Global stretch: ``[prefix_0, patches_0, prefix_1, patches_1, ...]``, so each image is a
contiguous slice. Windowed stretch: ``[patches_0, patches_1, ...]`` in window-major order (the
prefix tokens skip windowed blocks, as in :mod:`openradio.model.vitdet`) and the prefixes wait
aside. Patch tokens stay window-ordered throughout, as in the single-image runner, so each image
sees exactly the sequence it sees alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from timm.models.vision_transformer import Attention, Block
from torch import nn

from openradio.model import fused_cpu
from openradio.model.vitdet import WindowLayout


def supports_packing(blocks: nn.Sequential) -> bool:
    """timm's own ``Block`` and ``Attention`` (no subclass that changes the forward, no gate):
    the only blocks whose parts this module may call one by one."""
    for b in blocks:
        if type(b) is not Block or type(b.attn) is not Attention:
            return False
        if getattr(b.attn, "gate", None) is not None:
            return False
    return True


@dataclass
class PackedImages:
    """Where each image's tokens sit in the packed sequence."""

    num_prefix_tokens: int  # CLS tokens + registers before each image's patches
    grids: list[tuple[int, int]]  # token grid (h, w) per image
    window: Optional[int]

    @property
    def num_patches(self) -> list[int]:
        return [h * w for h, w in self.grids]


class PackedRunner:
    """Runs blocks over a packed sequence under a ViTDet schedule (all-global without a window)."""

    def __init__(self, sequences: list[torch.Tensor], pack: PackedImages, schedule: list[bool]):
        self.pack = pack
        self.schedule = schedule if pack.window else [False] * len(schedule)
        S = pack.num_prefix_tokens
        parts = []
        for seq, (h, w) in zip(sequences, pack.grids):
            patches = seq[:, S:]
            if pack.window:
                patches = WindowLayout(1, h, w, pack.window).to_window_order(patches)
            parts += [seq[:, :S], patches]
        self.x = torch.cat(parts, dim=1)
        self.prefix: Optional[list[torch.Tensor]] = None
        self.windowed = False

    # -- layout changes (a few per forward) -----------------------------------------------------
    def _global_segments(self) -> list[tuple[int, int]]:
        S = self.pack.num_prefix_tokens
        out, o = [], 0
        for n in self.pack.num_patches:
            out.append((o, S + n))
            o += S + n
        return out

    def _to_windows(self) -> None:
        S = self.pack.num_prefix_tokens
        segs = self._global_segments()
        self.prefix = [self.x[:, o : o + S] for o, _ in segs]
        self.x = torch.cat([self.x[:, o + S : o + n] for o, n in segs], dim=1)
        self.windowed = True

    def _to_global(self) -> None:
        parts, o = [], 0
        for pre, n in zip(self.prefix, self.pack.num_patches):
            parts += [pre, self.x[:, o : o + n]]
            o += n
        self.x = torch.cat(parts, dim=1)
        self.prefix = None
        self.windowed = False

    def run(self, index: int, block: Block) -> None:
        want = self.schedule[index]
        if want and not self.windowed:
            self._to_windows()
        elif not want and self.windowed:
            self._to_global()
        self.x = _block(block, self.x, self._attend_windows if self.windowed else self._attend_global)

    def sequences(self) -> list[torch.Tensor]:
        """Per image (1, prefix + h*w, D) in raster order."""
        if self.windowed:
            self._to_global()
        S = self.pack.num_prefix_tokens
        out = []
        for (o, n), (h, w) in zip(self._global_segments(), self.pack.grids):
            seq = self.x[:, o : o + n]
            patches = seq[:, S:]
            if self.pack.window:
                patches = WindowLayout(1, h, w, self.pack.window).to_raster_order(patches)
            out.append(torch.cat([seq[:, :S], patches], dim=1))
        return out

    # -- attention ------------------------------------------------------------------------------
    def _attend_global(self, attn: Attention, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (N, 3*D) -> (N, D): SDPA within each image; equal token counts share one call."""
        H, hd = attn.num_heads, attn.head_dim
        out = torch.empty(qkv.shape[0], H * hd, dtype=qkv.dtype, device=qkv.device)
        by_len: dict[int, list[int]] = {}
        for o, n in self._global_segments():
            by_len.setdefault(n, []).append(o)
        for n, starts in by_len.items():
            if len(starts) == 1:
                chunk = qkv[starts[0] : starts[0] + n].unsqueeze(0)
            else:
                chunk = torch.stack([qkv[o : o + n] for o in starts])
            y = fused_cpu.sdpa_heads(attn, chunk.reshape(len(starts), n, 3, H, hd))
            for j, o in enumerate(starts):
                out[o : o + n] = y[j]
        return out

    def _attend_windows(self, attn: Attention, qkv: torch.Tensor) -> torch.Tensor:
        ws2 = self.pack.window**2
        H, hd = attn.num_heads, attn.head_dim
        y = fused_cpu.sdpa_heads(attn, qkv.reshape(-1, ws2, 3, H, hd))
        return y.reshape(qkv.shape[0], H * hd)


def _block(block: Block, x: torch.Tensor, attend) -> torch.Tensor:
    """timm's Block.forward with the attention core replaced by ``attend`` (eval: no dropout);
    bf16 on a native-bf16 CPU through the fused matmuls of :mod:`openradio.model.fused_cpu`."""
    if fused_cpu.applies(block, x):
        return fused_cpu.block_forward(block, x, lambda attn, qkv: attend(attn, qkv[0]).unsqueeze(0))
    a = block.attn
    h = block.norm1(x)[0]
    y = attend(a, a.qkv(h))
    y = a.proj(a.norm(y))
    x = x + block.ls1(y).unsqueeze(0)
    return x + block.ls2(block.mlp(block.norm2(x)))
