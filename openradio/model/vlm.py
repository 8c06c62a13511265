"""Vision tokens for language models: multi-layer features, 2x2 pixel shuffle, ToMe-style merging.

A VLM that reads RADIO takes its patch tokens (often from several layers), cuts their number
before the language model (pixel shuffle folds each f x f block of tokens into one token with
f*f times the channels; token merging averages similar tokens down to a budget) and needs to
know where each token came from. Every route here returns :class:`VLMTokens`: the tokens plus,
per token, its centre on the input's patch grid (row, col; patch (r, c) has centre (r+0.5, c+0.5))
and its size (how many patches it stands for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "VLMTokens",
    "vlm_tokens",
    "layer_features",
    "pixel_shuffle",
    "pixel_unshuffle",
    "merge_tokens",
    "grid_positions",
]

COMPRESSIONS = (None, "pixel_shuffle", "merge")
AGGREGATIONS = ("concat", "mean")


@dataclass
class VLMTokens:
    tokens: torch.Tensor  # (B, N, C)
    positions: torch.Tensor  # (B, N, 2) float: centre (row, col) in input patches
    sizes: torch.Tensor  # (B, N) float: patches per token
    grid: Optional[tuple[int, int]]  # (rows, cols) while the tokens still form a raster grid
    summary: Optional[torch.Tensor] = None  # (B, summary_dim): the model's summary for the image

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]


def grid_positions(h: int, w: int, batch: int = 1, device=None) -> torch.Tensor:
    """(batch, h*w, 2) centres (row + 0.5, col + 0.5) of a raster h x w grid."""
    rows = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    cols = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    pos = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(1, h * w, 2)
    return pos.expand(batch, -1, -1).clone()


def layer_features(model, x: torch.Tensor, layers: Optional[Sequence[int]] = None, aggregate: str = "concat"):
    """(patch tokens (B, h*w, C'), summary (B, S)). ``layers=None``: the final spatial features (as
    ``model(x)`` gives them); else the outputs of those blocks (negative indices count from the end,
    intermediate PHI-S normaliser applied when the checkpoint has one), concatenated along channels
    (C' = len(layers) * C) or averaged (C' = C)."""
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    if layers is None:
        out = model(x)
        out = out["backbone"] if isinstance(out, dict) else out
        return out.features, out.summary
    layers = [int(i) for i in layers]
    if not layers:
        raise ValueError("layers must name at least one block (or be None for the final features)")
    depth = len(model.blocks)
    order = [i + depth if i < 0 else i for i in layers]
    final, inter = model.forward_intermediates(x, indices=order, output_fmt="NLC")
    final = final["backbone"] if isinstance(final, dict) else final
    by_block = dict(zip(sorted(set(order)), inter))  # forward_intermediates returns them sorted
    feats = [by_block[i] for i in order]  # the caller's order
    if aggregate == "concat":
        return torch.cat(feats, dim=-1), final.summary
    return torch.stack(feats, dim=0).mean(dim=0), final.summary


def pixel_shuffle(tokens: torch.Tensor, grid: tuple[int, int], factor: int = 2) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, h*w, C) raster tokens -> (B, (h/f)*(w/f), f*f*C): each f x f block becomes one token whose
    channels are the block's tokens in (row, col) order. Returns the tokens and the new grid."""
    B, N, C = tokens.shape
    h, w = grid
    if h * w != N:
        raise ValueError(f"grid {h}x{w} does not match {N} tokens")
    if factor < 1 or h % factor or w % factor:
        raise ValueError(
            f"pixel shuffle by {factor} needs a token grid divisible by {factor}, got {h}x{w}; "
            f"use an input whose sides are multiples of {factor} x the model's resolution step"
        )
    x = tokens.reshape(B, h // factor, factor, w // factor, factor, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (h // factor) * (w // factor), factor * factor * C), (h // factor, w // factor)


def pixel_unshuffle(
    tokens: torch.Tensor, grid: tuple[int, int], factor: int = 2
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The inverse of :func:`pixel_shuffle`: (B, h*w, f*f*C) on an h x w grid -> (B, (h*f)*(w*f), C)."""
    B, N, FC = tokens.shape
    h, w = grid
    if h * w != N or FC % (factor * factor):
        raise ValueError(f"cannot unshuffle {N} tokens of {FC} channels on a {h}x{w} grid by {factor}")
    C = FC // (factor * factor)
    x = tokens.reshape(B, h, w, factor, factor, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, h * factor * w * factor, C), (h * factor, w * factor)


def merge_tokens(
    tokens: torch.Tensor,
    num_tokens: int,
    sizes: Optional[torch.Tensor] = None,
    positions: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ToMe-style bipartite soft matching down to ``num_tokens`` tokens.

    Each round splits the tokens alternately into sets A and B, links every A token to its most
    cosine-similar B token and merges the most similar links (at most half the tokens a round)
    into their B partner as a size-weighted average; sizes add up and positions become
    size-weighted centroids. The size-weighted mean of the tokens is therefore unchanged.
    Returns (tokens (B, n, C), sizes (B, n), positions (B, n, 2)), ordered by position (raster).
    """
    B, N, C = tokens.shape
    if not 1 <= num_tokens:
        raise ValueError(f"num_tokens must be at least 1, got {num_tokens}")
    if sizes is None:
        sizes = torch.ones(B, N, device=tokens.device, dtype=torch.float32)
    if positions is None:
        positions = torch.zeros(B, N, 2, device=tokens.device, dtype=torch.float32)
    x = tokens.float()
    s = sizes.float()
    pos = positions.float()
    while x.shape[1] > num_tokens:
        n = x.shape[1]
        r = min(n - num_tokens, n // 2)
        xa, xb = x[:, ::2], x[:, 1::2]
        sa, sb = s[:, ::2], s[:, 1::2]
        pa, pb = pos[:, ::2], pos[:, 1::2]
        scores = F.normalize(xa, dim=-1) @ F.normalize(xb, dim=-1).transpose(1, 2)  # (B, Na, Nb)
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        src, keep = order[:, :r], order[:, r:]
        dst = partner.gather(1, src)
        take = lambda t, idx: t.gather(1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
        sa_src = sa.gather(1, src)
        # size-weighted sums in B, then back to means
        sum_b = (xb * sb.unsqueeze(-1)).scatter_add(
            1, dst.unsqueeze(-1).expand(-1, -1, C), take(xa, src) * sa_src.unsqueeze(-1)
        )
        psum_b = (pb * sb.unsqueeze(-1)).scatter_add(
            1, dst.unsqueeze(-1).expand(-1, -1, 2), take(pa, src) * sa_src.unsqueeze(-1)
        )
        sb_new = sb.scatter_add(1, dst, sa_src)
        xb_new = sum_b / sb_new.unsqueeze(-1)
        pb_new = psum_b / sb_new.unsqueeze(-1)
        x = torch.cat([take(xa, keep), xb_new], dim=1)
        s = torch.cat([sa.gather(1, keep), sb_new], dim=1)
        pos = torch.cat([take(pa, keep), pb_new], dim=1)
    # raster order by centroid (row first)
    span = pos[..., 1].max() + 1 if pos.numel() else 1
    order = (pos[..., 0] * span + pos[..., 1]).argsort(dim=-1)
    x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, C))
    s = s.gather(1, order)
    pos = pos.gather(1, order.unsqueeze(-1).expand(-1, -1, 2))
    return x.to(tokens.dtype), s, pos


def vlm_tokens(
    model,
    x: torch.Tensor,
    layers: Optional[Sequence[int]] = None,
    compress: Optional[str] = None,
    *,
    aggregate: str = "concat",
    factor: int = 2,
    num_tokens: Optional[int] = None,
) -> VLMTokens:
    """Tokens for a language model from images ``x`` (B, 3, H, W) in [0, 1].

    Args:
        layers: blocks whose outputs to use (e.g. ``[7, 15, -1]``); None: the final features.
        compress: None (one token per patch), ``'pixel_shuffle'`` (f x f blocks -> one token with
            f*f*C channels, f = ``factor``, 2 by default: 4x fewer tokens) or ``'merge'`` (ToMe-style
            merging down to ``num_tokens``).
        aggregate: how several layers combine: ``'concat'`` along channels or ``'mean'``.
    """
    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {COMPRESSIONS}, got {compress!r}")
    if compress == "merge" and num_tokens is None:
        raise ValueError("compress='merge' needs num_tokens (the token budget)")
    if compress != "merge" and num_tokens is not None:
        raise ValueError("num_tokens applies to compress='merge' only")
    p = model.patch_size
    B, _, H, W = x.shape
    h, w = H // p, W // p
    feats, summary = layer_features(model, x, layers, aggregate)
    positions = grid_positions(h, w, B, device=feats.device)
    sizes = torch.ones(B, h * w, device=feats.device)
    if compress is None:
        return VLMTokens(feats, positions, sizes, (h, w), summary)
    if compress == "pixel_shuffle":
        tokens, grid = pixel_shuffle(feats, (h, w), factor)
        pos = grid_positions(*grid, batch=B, device=feats.device) * factor
        return VLMTokens(
            tokens, pos, torch.full((B, tokens.shape[1]), float(factor * factor), device=feats.device), grid, summary
        )
    if num_tokens > h * w:
        raise ValueError(f"num_tokens={num_tokens} is more than the {h * w} patch tokens of a {H}x{W} input")
    tokens, sizes, positions = merge_tokens(feats, num_tokens, sizes, positions)
    return VLMTokens(tokens, positions, sizes, None, summary)
