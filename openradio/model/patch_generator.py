"""CPE patch generator: linear patch embedding, a learned position grid, CLS tokens and registers.

Cropped Position Embedding (CPE, AM-RADIO): one R x R grid of position embeddings is learned for
the largest supported image. At inference the grid is resampled to the token grid; in training
each sample sees a random crop of it, so the model learns to work at any resolution.

Temporally packed video (the vision encoder of Nemotron-3-Nano-Omni; transformers'
``RadioConfig.video_temporal_patch_size``): a generator built with ``temporal_patch_size=T`` has a
second projection, ``video_embedder`` (D, T*C*p*p), for clips of T frames stacked on the channel
axis, frame-major: ``(B, T, C, H, W).reshape(B, T*C, H, W)``. Each token is then a p x p x T
tube whose vector is ordered ``(t, c, dy, dx)``, the column order of the checkpoint's
``video_embedder``; the position grid, CLS tokens and registers are those of images. Which
projection runs is told by the channel count (C: images, T*C: clips), as transformers does.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from openradio.runtime import capturing, tensor_state


class ClsToken(nn.Module):
    """Prefix tokens: one CLS token per teacher followed by registers (parameter ``token``)."""

    def __init__(self, embed_dim: int, num_tokens: int, num_registers: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.num_tokens = num_tokens if enabled else 0
        self.num_registers = num_registers if enabled else 0
        total = self.num_tokens + self.num_registers
        self.token = nn.Parameter(torch.randn(total, embed_dim) * 0.02) if total > 0 else None

    @property
    def num_prefix_tokens(self) -> int:
        """CLS tokens plus registers (the official class calls this ``num_patches``)."""
        return self.num_tokens + self.num_registers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token is None:
            return x
        prefix = self.token.unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([prefix, x], dim=1)


def num_registers_for(num_cls: int, register_multiple: int | None, num_registers: int | None) -> int:
    """Registers pad the prefix to a multiple; a full extra group when already a multiple."""
    if num_registers is not None:
        return int(num_registers)
    if register_multiple:
        return register_multiple - (num_cls % register_multiple)
    return 0


class ViTPatchGenerator(nn.Module):
    """Image (B,3,H,W) -> token sequence (B, prefix + H/p * W/p, D).

    State dict keys: ``pos_embed`` (1, R*R, D), ``embedder.weight`` (D, 3p^2), ``cls_token.token``,
    and with ``temporal_patch_size=T`` ``video_embedder.weight`` (D, T*3p^2) for packed clips
    (B, T*3, H, W) -> (B, prefix + H/p * W/p, D).
    """

    def __init__(
        self,
        patch_size: int,
        embed_dim: int,
        grid_size: int,
        num_cls_tokens: int,
        num_registers: int,
        cls_token: bool = True,
        pos_dropout: float = 0.1,
        in_chans: int = 3,
        patch_bias: bool = False,
        cpe_mode: bool = True,
        temporal_patch_size: int | None = None,
    ):
        super().__init__()
        if temporal_patch_size is not None and (isinstance(temporal_patch_size, bool) or temporal_patch_size < 2):
            # transformers tells clips from images by their channel count: one frame would be an image
            raise ValueError(
                f"temporal_patch_size must be at least 2 frames (or None: images only), got {temporal_patch_size!r}"
            )
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid_size = grid_size  # R: the position grid is R x R
        self.pos_dropout = pos_dropout
        self.random_crop = True  # training-mode random crop of the grid (off: eval resampling)
        self.num_video_frames: int | None = None
        # Linear on (c, dy, dx)-ordered patch vectors: equal to a stride-p conv in value but
        # the official code multiplies this way, and only this order is bit-exact.
        # (The DINOv2 student's embedder has a bias: one F.linear, i.e. an addmm, as officially.)
        self.embedder = nn.Linear(in_chans * patch_size * patch_size, embed_dim, bias=patch_bias)
        self.in_chans = in_chans
        self.temporal_patch_size = temporal_patch_size
        self.video_embedder = (
            nn.Linear(temporal_patch_size * in_chans * patch_size * patch_size, embed_dim, bias=patch_bias)
            if temporal_patch_size
            else None
        )
        # cpe_mode False only when the largest size equals the ViT's own img_size: the official
        # generator then crops the grid instead of resampling it (see eval_position_encoding)
        self.cpe_mode = cpe_mode
        self.pos_embed = nn.Parameter(torch.randn(1, grid_size * grid_size, embed_dim) * 0.02)
        self.cls_token = ClsToken(embed_dim, num_cls_tokens, num_registers, enabled=cls_token)
        self.patch_normalizer = nn.Identity()

    @property
    def num_cls_tokens(self) -> int:
        return self.cls_token.num_tokens

    @property
    def num_registers(self) -> int:
        return self.cls_token.num_registers

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: CLS tokens and registers (timm's name; the official
        generator calls it ``num_skip``)."""
        return self.cls_token.num_prefix_tokens

    def is_packed_video(self, x: torch.Tensor) -> bool:
        """Whether ``x`` (B, channels, H, W) holds temporally packed clips (T*C channels)."""
        return self.video_embedder is not None and x.shape[1] == self.in_chans * self.temporal_patch_size

    @contextmanager
    def video_mode(self, num_frames: int):
        """Consecutive groups of ``num_frames`` samples (the frames of a clip, or packed clips of
        one video) share one random position crop: inputs are (B*num_frames, C, H, W)."""
        if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
            raise ValueError(f"cpe video mode needs a positive number of frames per clip, got {num_frames!r}")
        prev, self.num_video_frames = self.num_video_frames, int(num_frames)
        try:
            yield
        finally:
            self.num_video_frames = prev

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[1] == self.in_chans:
            embedder = self.embedder
        elif self.is_packed_video(x):
            embedder = self.video_embedder
        else:
            clips = (
                f" or {self.in_chans * self.temporal_patch_size} (clips of {self.temporal_patch_size} frames)"
                if self.video_embedder is not None
                else ""
            )
            raise ValueError(f"the patch generator takes {self.in_chans} channels{clips}, got {x.shape[1]}")
        # frames stacked on the channel axis flatten (t, c, dy, dx): the video_embedder's column order
        patches = rearrange(x, "b c (py yy) (px xx) -> b (py px) (c yy xx)", yy=p, xx=p)
        return embedder(patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.embed_patches(x)
        tokens = tokens + self.position_encoding(tokens.shape[0], h, w)
        tokens = self.cls_token(tokens)
        return self.patch_normalizer(tokens)

    # -- position encodings -------------------------------------------------------------------
    def _grid(self) -> torch.Tensor:
        R = self.grid_size
        return self.pos_embed.reshape(1, R, R, -1).permute(0, 3, 1, 2)

    def position_encoding(self, batch: int, h: int, w: int) -> torch.Tensor:
        if self.training:
            return self._train_position_encoding(batch, h, w)
        return self.eval_position_encoding(h, w)

    def eval_position_encoding(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, D): the full grid when it matches, else the grid resampled to a square of
        side max(h, w) and its top-left h x w window (not a centre crop, not an (h, w) resize).

        Without autograd the resampled encoding is kept per (h, w) (the last 8 sizes), keyed by
        the grid's :func:`~openradio.runtime.tensor_state`, so a changed grid is resampled again.
        The values are the same ones; what is saved is the resampling and, for a bf16 grid, its
        float32 copy (a 128 x 128 grid is 12.6 M values: 13 % of a bf16 ViT-B call at 224 px on a
        2-core AMX CPU)."""
        R = self.grid_size
        if (h, w) == (R, R):
            return self.pos_embed
        pe = self.pos_embed
        ident = None if torch.is_grad_enabled() or capturing() else tensor_state(pe)
        if ident is None:  # autograd or a capture (they must see the computation), or an inference tensor
            return self._resample_position_encoding(h, w)
        held = self.__dict__.get("_pe_cache_grid")
        if held is None or held[0] != ident:
            # another grid (loaded, cast, moved or changed in place): start over. The grid's data is
            # held with the cache, so its memory cannot be reused by a new grid at the same address.
            self.__dict__["_pe_cache"] = {}
            self.__dict__["_pe_cache_grid"] = (ident, pe.detach())
        cache = self.__dict__["_pe_cache"]
        key = (h, w)
        hit = cache.get(key)
        if hit is None:
            with torch.inference_mode(False), torch.no_grad():
                hit = self._resample_position_encoding(h, w)
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[key] = hit
        return hit

    def _resample_position_encoding(self, h: int, w: int) -> torch.Tensor:
        R = self.grid_size
        pe = self._grid()
        if not self.cpe_mode:
            pe = pe[:, :, : min(h, R), : min(w, R)]
            if pe.shape[-2:] != (h, w):
                pe = F.interpolate(pe.float(), size=(h, w), mode="bilinear", align_corners=False).to(pe.dtype)
            return pe.flatten(2).permute(0, 2, 1)
        side = max(h, w)
        pe = F.interpolate(pe.float(), size=(side, side), mode="bilinear", align_corners=False).to(pe.dtype)
        pe = pe[:, :, :h, :w]
        return pe.flatten(2).permute(0, 2, 1)

    def _train_position_encoding(self, batch: int, h: int, w: int) -> torch.Tensor:
        """Random crop of the grid per sample (area 10-100 %, aspect 3/4-4/3), resampled to the
        token grid, then the whole encoding dropped with probability ``pos_dropout``."""
        t = self.num_video_frames or 1
        if batch % t:
            raise ValueError(f"video mode with {t} frames needs a batch that is a multiple of {t}, got {batch}")
        n = batch // t
        dev = self.pos_embed.device
        if not self.random_crop:
            pe = self.eval_position_encoding(h, w).expand(n, -1, -1)
            if self.pos_dropout > 0:
                keep = (torch.rand(n, 1, 1, device=dev) >= self.pos_dropout).to(pe.dtype)
                pe = pe * keep
            return pe.repeat_interleave(t, dim=0) if t > 1 else pe
        pe = self._grid().float().expand(n, -1, -1, -1)
        scale = torch.empty(n, 1, device=dev).uniform_(math.sqrt(0.1), 1.0)
        aspect = torch.empty(n, 1, device=dev).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
        sx = (scale * aspect).clamp(0, 1)
        sy = (scale / aspect).clamp(0, 1)
        ox = torch.rand(n, 1, device=dev) * (1 - sx)
        oy = torch.rand(n, 1, device=dev) * (1 - sy)
        lin_y = torch.linspace(0, 1, h, device=dev).unsqueeze(0) * sy + oy  # (n, h) in [0, 1]
        lin_x = torch.linspace(0, 1, w, device=dev).unsqueeze(0) * sx + ox
        gy = lin_y[:, :, None].expand(n, h, w)
        gx = lin_x[:, None, :].expand(n, h, w)
        grid = torch.stack([gx, gy], dim=-1) * 2 - 1  # grid_sample wants (x, y) in [-1, 1]
        pe = F.grid_sample(pe, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        if self.pos_dropout > 0:
            keep = (torch.rand(n, 1, 1, 1, device=dev) >= self.pos_dropout).to(pe.dtype)
            pe = pe * keep
        pe = pe.to(self.pos_embed.dtype).flatten(2).permute(0, 2, 1)
        if t > 1:
            pe = pe.repeat_interleave(t, dim=0)
        return pe
