"""RADIOModel: conditioner -> CPE ViT -> summary / spatial features (+ teacher adaptors)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from openradio.inputs.checks import check_image_values
from openradio.model import packed as packing
from openradio.model.arguments import check_feature_fmt, check_window, take_indices
from openradio.model.clips import check_clip_list, clip_to_frames, output_row
from openradio.model.config import RadioConfig
from openradio.model.fused_cpu import block_runner, run_block
from openradio.model.normalizers import NullIntermediateFeatureNormalizer
from openradio.model.vitdet import WindowedRunner, WindowLayout, windowed_blocks
from openradio.model.vlm import vlm_tokens


class Resolution(NamedTuple):
    height: int
    width: int


class RadioOutput(NamedTuple):
    summary: torch.Tensor
    features: torch.Tensor

    def to(self, *args, **kwargs) -> "RadioOutput":
        return RadioOutput(
            self.summary.to(*args, **kwargs) if self.summary is not None else None,
            self.features.to(*args, **kwargs) if self.features is not None else None,
        )


class _Loaded:
    """Default of the ``vitdet_window`` call argument: the window the model was loaded with."""

    def __repr__(self) -> str:
        return "LOADED"


LOADED = _Loaded()


def _cpu_inference(x: torch.Tensor) -> bool:
    """Where ``cpu_chunk_tokens`` applies (block passes of a batch, packs of forward_images)."""
    return x.device.type == "cpu" and not torch.is_grad_enabled()


# tokens per block pass in CPU inference (benchmarks/bench_compare.py --chunk-tokens measures it)
CPU_CHUNK_TOKENS = 2560


class RADIOModel(nn.Module):
    """The official RADIO API (``model(x)``, ``forward_intermediates``, resolution helpers).

    ``x`` is (B, 3, H, W) in [0, 1] with H, W multiples of ``min_resolution_step``. Without
    adaptors ``forward`` returns ``RadioOutput(summary, features)``; with adaptors a dict
    ``{'backbone': RadioOutput, name: RadioOutput, ...}`` whose adaptor entries are float32.
    A model with a temporal patch projection (``temporal_patch_size`` T) also takes clips of T
    frames, (B, T, 3, H, W) or packed (B, T*3, H, W): see :meth:`forward_video`.
    """

    def __init__(
        self,
        model: nn.Module,
        input_conditioner: nn.Module,
        summary_idxs: Sequence[int],
        patch_size: Optional[int] = None,
        max_resolution: Optional[int] = None,
        window_size: Optional[int] = None,
        preferred_resolution: Optional[Resolution] = None,
        adaptors: Optional[dict[str, nn.Module]] = None,
        feature_normalizer: Optional[nn.Module] = None,
        inter_feature_normalizer: Optional[nn.Module] = None,
        vitdet_num_windowed: Optional[int] = None,
        vitdet_num_global: Optional[int] = None,
        config: Optional[RadioConfig] = None,
        args: Any = None,
        version: Optional[str] = None,
    ):
        super().__init__()
        self.model = model
        self.input_conditioner = input_conditioner
        self.register_buffer("summary_idxs", torch.tensor(list(summary_idxs), dtype=torch.int64))
        self._patch_size = patch_size
        self._max_resolution = max_resolution
        self._preferred_resolution = Resolution(*preferred_resolution) if preferred_resolution else None
        self._window_size = window_size
        self.adaptors = nn.ModuleDict(adaptors or {})
        self.feature_normalizer = feature_normalizer if feature_normalizer is not None else nn.Identity()
        self.inter_feature_normalizer = inter_feature_normalizer
        self._vitdet_num_windowed = vitdet_num_windowed
        self._vitdet_num_global = vitdet_num_global
        # what the model was built from: the typed config, the official checkpoint ``args`` (kept
        # to write the model back in the official formats) and the version or path it came from
        self.config: Optional[RadioConfig] = config
        self.args: Any = args
        self.version: Optional[str] = version
        # CPU inference runs the blocks on groups of images of at most this many tokens
        # (0 or None: the whole batch at once); see _chunk_size
        self.cpu_chunk_tokens: Optional[int] = CPU_CHUNK_TOKENS

    # -- properties -----------------------------------------------------------------------------
    @property
    def patch_generator(self):
        return self.model.patch_generator

    @property
    def patch_size(self) -> int:
        if self._patch_size is not None:
            return self._patch_size
        return self.model.patch_size

    @property
    def max_resolution(self) -> Optional[int]:
        return self._max_resolution

    @property
    def preferred_resolution(self) -> Optional[Resolution]:
        return self._preferred_resolution

    @property
    def window_size(self) -> Optional[int]:
        return self._window_size

    @property
    def min_resolution_step(self) -> int:
        return self._step(self._window_size)

    def _step(self, window: Optional[int]) -> int:
        """Input sides must be multiples of this: the patch size times the ViTDet window."""
        return self.patch_size * (window or 1)

    @property
    def blocks(self) -> nn.Sequential:
        return self.model.blocks

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch features: CLS tokens and registers (timm's name; the backbone's
        count: the DINOv2 student reports its own constructor's 5 whatever its patch generator holds)."""
        return getattr(self.model, "num_prefix_tokens", self.patch_generator.num_prefix_tokens)

    @property
    def num_summary_tokens(self) -> int:
        """Deprecated alias of :attr:`num_prefix_tokens`, the official name (timm's); kept for one
        release for code written against the official ``RADIOModel``, which calls it this."""
        return self.num_prefix_tokens

    @property
    def num_cls_tokens(self) -> int:
        max_slot = max((a.head_idx for a in self.adaptors.values()), default=-1)
        return max(getattr(self.model, "num_cls_tokens", self.patch_generator.num_cls_tokens), max_slot + 1)

    @property
    def num_registers(self) -> int:
        return getattr(self.model, "num_registers", self.patch_generator.num_registers)

    @property
    def summary_dim(self) -> int:
        return self.embed_dim * len(self.summary_idxs)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_generator.pos_embed.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> "RADIOModel":
        """Hold the backbone's weights in ``dtype`` and compute in it (what a checkpoint whose
        ``args.dtype`` is bfloat16 does): the conditioner casts its float32 output to ``dtype``, the
        feature normalisers follow, the adaptor heads stay float32 (their outputs are float32).
        With bf16 weights no op casts per call, unlike ``torch.autocast``, which converts every
        weight at every linear layer. Returns the model."""
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
        self.model.to(dtype=dtype)
        self.input_conditioner.dtype = dtype
        self.feature_normalizer.to(dtype=dtype)
        if self.inter_feature_normalizer is not None:
            self.inter_feature_normalizer.to(dtype=dtype)
        return self

    @property
    def temporal_patch_size(self) -> Optional[int]:
        """Frames per token of the temporally packed video projection (None: images only)."""
        return self.patch_generator.temporal_patch_size

    @property
    def feature_info(self) -> list[dict]:
        """timm's ``feature_info``: per block (what ``forward_intermediates`` emits) its width and
        stride in pixels, e.g. ``[{'module': 'blocks.0', 'num_chs': 768, 'reduction': 16}, ...]``."""
        return [
            dict(module=f"blocks.{i}", num_chs=self.embed_dim, reduction=self.patch_size)
            for i in range(len(self.blocks))
        ]

    @property
    def vitdet_num_windowed(self) -> Optional[int]:
        """The release's count of windowed blocks per ViTDet group (None: the default schedule)."""
        return self._vitdet_num_windowed

    @property
    def vitdet_num_global(self) -> Optional[int]:
        """The release's count of global-attention blocks per ViTDet group (None: the default schedule)."""
        return self._vitdet_num_global

    @property
    def windowed_block_indices(self) -> list[int]:
        return [i for i, w in enumerate(self._schedule()) if w] if self._window_size else []

    def get_nearest_supported_resolution(self, height: int, width: int, vitdet_window=LOADED) -> Resolution:
        """The nearest size both sides of which are multiples of the patch size times the ViTDet
        window (the loaded one by default, or the one a call will use)."""
        step = self._step(self._window(vitdet_window))
        # Python's round (half to even) on purpose: the official helper gives 40 -> 32, 56 -> 64
        return Resolution(max(round(height / step) * step, step), max(round(width / step) * step, step))

    def make_preprocessor_external(self) -> nn.Module:
        """Detach the input conditioner so callers can normalise on their side (e.g. in a data
        loader); the model then expects already-normalised input."""
        conditioner = self.input_conditioner
        self.input_conditioner = nn.Identity()
        return conditioner

    def switch_to_deploy(self) -> None:  # parity with the official API; nothing to fold for a ViT
        fn = getattr(self.model, "switch_to_deploy", None)
        if fn is not None:
            fn()

    @contextmanager
    def cpe_video_mode(self, num_frames: int):
        """Inputs are clips of ``num_frames`` consecutive samples, (B*T, 3, H, W): in training mode
        each clip shares one position crop (one CPE viewport) instead of one per frame. In eval
        mode the positions are the same for every frame anyway, so outputs do not change (as
        officially). ``forward_images`` then takes whole clips (a clip is never split)."""
        with self.patch_generator.video_mode(num_frames):
            yield

    def set_vitdet_window(self, window_size: Optional[int]) -> None:
        """Change the default ViTDet window (in patches; None: global attention). A single call
        can use another window without changing the model: ``model(x, vitdet_window=...)``."""
        self._window_size = check_window(window_size)

    def _window(self, vitdet_window) -> Optional[int]:
        return self._window_size if vitdet_window is LOADED else check_window(vitdet_window)

    # -- forward --------------------------------------------------------------------------------
    def _check_resolution(self, x: torch.Tensor, window: Optional[int] = None) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected images shaped (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        check_image_values(x)  # integer, 2/4-channel, NaN/Inf or 0..255 images: a clear error
        step = self._step(window)
        H, W = x.shape[-2:]
        if H % step or W % step:
            nearest = self.get_nearest_supported_resolution(H, W, vitdet_window=window)
            raise ValueError(
                f"The input resolution must be a multiple of `self.min_resolution_step={step}`. "
                "`self.get_nearest_supported_resolution(<height>, <width>) is provided as a convenience API. "
                f"Input: {x.shape[-2:]}, Nearest: {nearest}"
            )

    def is_clip(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is a batch of clips: (B, T, C, H, W), or (B, T*C, H, W) on a model with a
        temporal patch projection of T frames."""
        return x.ndim == 5 or (x.ndim == 4 and self.patch_generator.is_packed_video(x))

    def clip_frames(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips (B, T, C, H, W) or packed (B, T*C, H, W) -> their frames (B*T, C, H, W)."""
        return clip_to_frames(clips, self.temporal_patch_size, self.patch_generator.in_chans)

    def _conditioned(self, x: torch.Tensor, window: Optional[int]) -> torch.Tensor:
        """Checked and normalised input: images (B, C, H, W) -> (B, 3, H, W); clips are checked
        and normalised frame by frame (the conditioner's mean and std are per RGB channel), then
        packed frame-major -> (B, T*3, H, W), what the video projection reads."""
        if not self.is_clip(x):
            self._check_resolution(x, window)
            return self.input_conditioner(x)
        frames = self.clip_frames(x)
        self._check_resolution(frames, window)
        y = self.input_conditioner(frames)
        return y.reshape(x.shape[0], -1, *y.shape[-2:])

    def _schedule(self) -> list[bool]:
        return windowed_blocks(len(self.blocks), self._vitdet_num_windowed, self._vitdet_num_global)

    def _runner(self, tokens: torch.Tensor, h: int, w: int, window: Optional[int]):
        if window is None:
            return None
        layout = WindowLayout(tokens.shape[0], h, w, window)
        return WindowedRunner(tokens, self.num_prefix_tokens, layout, self._schedule())

    def _chunk_size(self, tokens: torch.Tensor) -> int:
        """Images per block pass: all of them, except in CPU inference where a batch holds more
        than ``cpu_chunk_tokens`` tokens; then the blocks run on groups of whole images of at most
        that many tokens (at least one image), so each block's activations stay in the CPU caches
        (at 512 px batch 8 the block-wide activations are ~100 MB and the MLP's GELU, the
        attention's layout copies and the residual adds become memory-bound). Every image's
        tokens meet only its own tokens, so this changes no arithmetic: see the model tests."""
        B, N = tokens.shape[:2]
        limit = self.cpu_chunk_tokens
        if not limit or B == 1 or B * N <= limit or not _cpu_inference(tokens):
            return B
        return max(1, limit // N)

    def forward_tokens(self, x: torch.Tensor, vitdet_window=LOADED) -> torch.Tensor:
        """Conditioned image -> (B, prefix + h*w, D) after the last block and the final norm."""
        window = self._window(vitdet_window)
        p = self.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        # the official CPE forward is patch_generator -> blocks -> norm (timm's norm_pre unused)
        tokens = self.patch_generator(x)
        chunk = self._chunk_size(tokens)
        if chunk < tokens.shape[0]:
            return torch.cat([self._blocks_and_norm(t, h, w, window) for t in tokens.split(chunk)])
        return self._blocks_and_norm(tokens, h, w, window)

    def _blocks_and_norm(self, tokens: torch.Tensor, h: int, w: int, window: Optional[int]) -> torch.Tensor:
        runner = self._runner(tokens, h, w, window)
        if runner is None:
            for block in self.blocks:
                tokens = run_block(block, tokens)
        else:
            for i, block in enumerate(self.blocks):
                runner.run(i, block_runner(block))
            tokens = runner.raster()
        return self.model.norm(tokens)

    def forward(self, x: torch.Tensor, feature_fmt: str = "NLC", vitdet_window=LOADED):
        """``vitdet_window``: ViTDet window side in patches for this call (None: global
        attention); by default the window the model was loaded with. Clips go to
        :meth:`forward_video`."""
        window = self._window(vitdet_window)
        check_feature_fmt(feature_fmt)
        xc = self._conditioned(x, window)
        y = self.forward_tokens(xc, window)
        return self._extract_final(xc, y, feature_fmt)

    def forward_video(self, clips: torch.Tensor, feature_fmt: str = "NLC", vitdet_window=LOADED):
        """Temporally packed video: clips of T = ``temporal_patch_size`` frames in [0, 1] like
        images, shaped (B, T, 3, H, W) or already packed (B, T*3, H, W) with the frames stacked
        frame-major on the channel axis (``clips.flatten(1, 2)``: channel ``t*3 + c``, the column
        order ``(t, c, dy, dx)`` of the checkpoint's video projection). Each frame is normalised
        by the conditioner, then every p x p x T tube becomes one token: one output per clip,
        ``RadioOutput(summary (B, ...), features (B, h*w, D))``, as for one image (adaptors too).
        transformers' ``RadioModel`` gives the same for the same clips normalised frame by frame
        (its conditioner handles 3 channels, so its video path takes normalised clips)."""
        if not self.is_clip(clips):
            raise ValueError(f"forward_video takes clips (B, T, C, H, W) or (B, T*C, H, W), got {tuple(clips.shape)}")
        return self(clips, feature_fmt=feature_fmt, vitdet_window=vitdet_window)

    def forward_images(
        self,
        images: Sequence[torch.Tensor],
        feature_fmt: str = "NLC",
        vitdet_window=LOADED,
        packed: Optional[bool] = None,
        max_tokens: Optional[int] = None,
    ) -> list:
        """Images of different sizes in one call: a list of (3, H, W) or (1, 3, H, W) tensors ->
        the list of what ``model(image[None])`` returns for each (adaptors included).

        The tokens of all images run as one packed sequence (each image with its own CPE grid,
        prefix tokens and ViTDet windows; attention stays within an image): see
        :mod:`openradio.model.packed`. ``packed=False`` (or a backbone whose blocks are not
        timm's plain ``Block``, or training mode) runs the images one by one instead.
        ``max_tokens``: pack consecutive images up to this many tokens per pack, to keep a pack's
        activations within the CPU caches; ``0``: all in one pack; ``None`` (default): in CPU
        inference (no grad) the model's ``cpu_chunk_tokens`` (the limit of its block passes, 2560
        by default), elsewhere one pack. One image larger than the limit is a pack of its own.
        Packing changes no arithmetic: the grouping leaves the outputs as they are."""

        window = self._window(vitdet_window)
        check_feature_fmt(feature_fmt)
        if isinstance(images, torch.Tensor) and images.ndim == 3:
            raise ValueError("forward_images takes a list of images; for one image call model(image[None])")
        xs = [self._item(i, im, window) for i, im in enumerate(images)]
        if not xs:
            return []
        # in cpe_video_mode(t) the list is clips of t frames: each clip keeps one position crop,
        # so it runs as one batch (training) and is never split across packs
        t = self.patch_generator.num_video_frames or 1
        if t > 1:
            check_clip_list(xs, t)
        can_pack = packing.supports_packing(self.blocks) and not self.training  # no dropout in the packed path
        if packed is None:
            packed = can_pack
        if not packed or not can_pack or len(xs) == t:
            if t == 1:
                return [self(x, feature_fmt=feature_fmt, vitdet_window=window) for x in xs]
            outs = []
            for j in range(0, len(xs), t):
                out = self(torch.cat(xs[j : j + t]), feature_fmt=feature_fmt, vitdet_window=window)
                outs += [output_row(out, i) for i in range(t)]
            return outs
        p = self.patch_size
        if max_tokens is None:
            max_tokens = (self.cpu_chunk_tokens or 0) if _cpu_inference(xs[0]) else 0
        if max_tokens < 0:
            raise ValueError(
                f"max_tokens must be a number of tokens (0: one pack; None: the default), got {max_tokens}"
            )
        groups, current, count = [], [], 0
        for j in range(0, len(xs), t):  # whole clips (t = 1: single images)
            clip = xs[j : j + t]
            n = t * (clip[0].shape[-2] // p * (clip[0].shape[-1] // p) + self.num_prefix_tokens)
            if current and max_tokens and count + n > max_tokens:
                groups.append(current)
                current, count = [], 0
            current += clip
            count += n
        groups.append(current)
        outs = []
        for group in groups:
            pack = packing.PackedImages(
                self.num_prefix_tokens, [(x.shape[-2] // p, x.shape[-1] // p) for x in group], window
            )
            conds = [self._conditioned(x, window) for x in group]
            seqs = [self.patch_generator(c) for c in conds]
            runner = packing.PackedRunner(seqs, pack, self._schedule())
            for i, block in enumerate(self.blocks):
                runner.run(i, block)
            runner.x = self.model.norm(runner.x)  # token-wise: once on the packed sequence
            outs += [self._extract_final(c, yi, feature_fmt) for c, yi in zip(conds, runner.sequences())]
        return outs

    def _item(self, i: int, im, window: Optional[int]) -> torch.Tensor:
        """One entry of ``forward_images`` as a batch of one: an image (3, H, W) / (1, 3, H, W), or
        on a video model a clip (T, 3, H, W) / (T*3, H, W) / (1, T, 3, H, W), checked."""
        T = self.temporal_patch_size
        ok = isinstance(im, torch.Tensor) and im.ndim in (3, 4, 5)
        if ok and im.ndim == 5:
            ok = im.shape[0] == 1
        elif ok and im.ndim == 4 and im.shape[0] != 1:
            ok = T is not None and im.shape[0] == T  # one clip of T frames
            im = im.unsqueeze(0) if ok else im
        if not ok:
            shape = tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
            clips = f", or a clip ({T}, 3, H, W)" if T is not None else ""
            raise ValueError(
                f"forward_images: image {i} must be a (3, H, W) or (1, 3, H, W) tensor{clips}, got {shape}"
            )
        x = im if im.ndim >= 4 else im.unsqueeze(0)
        if self.is_clip(x):
            self._check_resolution(self.clip_frames(x), window)
        else:
            self._check_resolution(x, window)
        return x

    def _extract_final(self, x: torch.Tensor, y: torch.Tensor, feature_fmt: str = "NLC"):
        check_feature_fmt(feature_fmt)
        p = self.patch_size
        B, _, H, W = x.shape
        all_summary = y[:, : self.num_cls_tokens]
        # one summary token (the DINOv2 student, or a single CLS) is the summary as it is
        summary = all_summary[:, self.summary_idxs].flatten(1) if all_summary.shape[1] > 1 else all_summary.flatten(1)
        all_feat = self.feature_normalizer(y[:, self.num_prefix_tokens :])
        feats = all_feat
        if feature_fmt == "NCHW":
            feats = all_feat.reshape(B, H // p, W // p, all_feat.shape[-1]).permute(0, 3, 1, 2)
        backbone = RadioOutput(summary, feats)
        if not len(self.adaptors):
            return backbone
        out = {"backbone": backbone}
        for name, adaptor in self.adaptors.items():
            a_summary = adaptor.forward_summary(all_summary[:, adaptor.head_idx].float())
            # heads are float32; their feature output goes back to the backbone dtype first
            # (a bf16 model rounds adaptor features to bf16 once), then to float32
            a_feat = adaptor.forward_features(all_feat.float(), x, p).to(all_feat.dtype)
            if feature_fmt == "NCHW":
                u = adaptor.upsample_factor
                a_feat = a_feat.reshape(B, H // p * u, W // p * u, a_feat.shape[-1]).permute(0, 3, 1, 2)
            out[name] = RadioOutput(a_summary, a_feat).to(torch.float32)
        return out

    def vlm_tokens(
        self, x: torch.Tensor, layers: Optional[Sequence[int]] = None, compress: Optional[str] = None, **kwargs
    ):
        """Tokens for a language model (multi-layer, pixel shuffle, ToMe merging): see openradio.model.vlm."""
        return vlm_tokens(self, x, layers=layers, compress=compress, **kwargs)

    # -- intermediates --------------------------------------------------------------------------
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        aggregation: Optional[str] = "sparse",
        norm_alpha_scheme: Optional[str] = "post-alpha",
        vitdet_window=LOADED,
    ):
        """Outputs of selected blocks (timm's API, RADIO's aggregation modes).

        ``aggregation='sparse'`` emits the taken blocks; ``'dense'`` emits, at each taken block,
        the average of all blocks since the previous one. ``norm_alpha_scheme`` applies the
        checkpoint's intermediate PHI-S normaliser: 'post-alpha' (average, then scale by the mean
        alpha), 'pre-alpha' (scale each block, then average) or 'none'. Works in ViTDet mode.
        Returns the list of intermediates, or ``(final, intermediates)`` unless
        ``intermediates_only``. ``vitdet_window`` as in :meth:`forward`.
        """
        window = self._window(vitdet_window)
        check_feature_fmt(output_fmt)
        if aggregation not in ("sparse", "dense"):
            raise ValueError(f"Unsupported aggregation: {aggregation!r}. Must be 'sparse' or 'dense'")
        if norm_alpha_scheme not in ("post-alpha", "pre-alpha", "none", None):
            raise ValueError(
                f"Unsupported norm_alpha_scheme: {norm_alpha_scheme!r}. "
                "Must be one of 'post-alpha', 'pre-alpha', 'none'"
            )
        depth = len(self.blocks)
        take = take_indices(depth, indices)
        last = take[-1]
        p = self.patch_size
        xc = self._conditioned(x, window)  # images, or clips of a video model (one output per clip)
        B, _, H, W = xc.shape
        h, w = H // p, W // p
        prefix = self.patch_generator.num_prefix_tokens
        inter_norm = self.inter_feature_normalizer
        if inter_norm is None or norm_alpha_scheme in ("none", None):
            inter_norm = NullIntermediateFeatureNormalizer()
        final_norm = self.model.norm

        tokens = self.patch_generator(xc)
        runner = self._runner(tokens, h, w, window)

        intermediates = []
        accum, alpha_sum, num_accum = 0, 0, 0
        target = 0  # position in `take` of the next block to emit
        n_run = last + 1 if stop_early else depth
        for i in range(n_run):
            block = self.blocks[i]
            if runner is None:
                tokens = run_block(block, tokens)
                current = tokens
            else:
                runner.run(i, block_runner(block))
                current = None
            if aggregation == "sparse" and target < len(take) and i == take[target]:
                current = runner.raster() if current is None else current
                y, alpha = inter_norm(current, i, skip=prefix)
                intermediates.append(
                    self._split(alpha * y, final_norm if norm else None, return_prefix_tokens, output_fmt, B, h, w)
                )
                target += 1
            elif aggregation == "dense" and target < len(take):
                current = runner.raster() if current is None else current
                y, alpha = inter_norm(current, i, rot_index=take[target], skip=prefix)
                if norm_alpha_scheme == "pre-alpha":
                    accum = accum + alpha * y
                    alpha_sum = alpha_sum + 1
                else:
                    accum = accum + y
                    alpha_sum = alpha_sum + alpha
                num_accum += 1
                if i == take[target]:
                    out = (alpha_sum / num_accum) * accum / num_accum
                    intermediates.append(
                        self._split(out, final_norm if norm else None, return_prefix_tokens, output_fmt, B, h, w)
                    )
                    accum, alpha_sum, num_accum = 0, 0, 0
                    target += 1
        if intermediates_only:
            return intermediates
        last_tokens = tokens if runner is None else runner.raster()
        if norm:
            last_tokens = final_norm(last_tokens)
        final = self._extract_final(xc, last_tokens, feature_fmt=output_fmt)
        return final, intermediates

    def _split(
        self, out: torch.Tensor, norm: Optional[nn.Module], return_prefix_tokens: bool, fmt: str, B: int, h: int, w: int
    ):
        if norm is not None:
            out = norm(out)
        # intermediates follow the patch generator's own prefix layout (official, incl. the
        # DINOv2 student whose final output uses its constructor's count instead)
        prefix = out[:, : self.patch_generator.num_cls_tokens]
        feats = out[:, self.patch_generator.num_prefix_tokens :]
        if fmt == "NCHW":
            feats = feats.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()
        if not return_prefix_tokens:
            return feats
        if prefix.shape[1] > 1:
            summary = prefix[:, self.summary_idxs].flatten(1)
        else:
            summary = prefix.flatten(1)
        return RadioOutput(summary, feats)
