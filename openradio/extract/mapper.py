"""The batched mapper: decoded images in, per-row columns out.

``Mapper(model, adaptors=(), features="none", features_dtype=torch.float16, dtype=torch.float32,
resolution=None, square=False)`` wraps a loaded :class:`~openradio.model.radio.RADIOModel`.

* :meth:`Mapper.prepare` resizes one ``(3, H, W)`` [0, 1] image to the model input the run's
  resolution policy gives (the same resize ``openradio features`` and ``viz`` use).
* :meth:`Mapper.__call__` takes a list of prepared images (any sizes), groups them by input size
  so each forward is one dense tensor, keeps the input order, and returns a dict of columns:
  ``summary`` (``(N, D)`` float32 numpy) and ``<adaptor>_summary`` per adaptor, and, unless
  ``features="none"``, ``features``: ``{output: (N, C, h, w)}`` tensors (``pooled:G`` averages
  them to G x G) in ``features_dtype``. Rows of different input sizes have different ``h, w``, so
  full features come back as a list of per-row dicts instead.
* ``upsample`` (``bilateral`` or ``bilinear``, with ``features="full"``): the spatial features are
  brought to the model input's pixel resolution (:func:`openradio.dense.upsample.upsample_features`,
  guided by the resized image) before they are stored.
* ``clip_frames`` T > 1: rows that share a clip id (the frames of one video clip, see
  :meth:`__call__`) run together through :func:`openradio.model.video.forward_frames` -- one CPE
  viewport per clip, or one temporally packed clip on a model with a temporal patch size of T; a
  clip shorter than T (a video's end) is padded with its last frame and the padding dropped.

The Ray engine (:class:`openradio.ray.RadioEmbedder`) wraps the same class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from openradio.dense.upsample import METHODS as UPSAMPLE_METHODS
from openradio.dense.upsample import upsample_features
from openradio.inputs.imageio import resize_center_crop, resize_to_multiple
from openradio.model.video import check_clip_frames, forward_frames, pad_to_clips
from openradio.runtime import model_resolution, module_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Resize:
    """The run's resolution policy as plain numbers, so DataLoader workers resize without the model:
    ``square`` resizes and centre-crops to ``(height, width)``; otherwise the shorter side becomes
    ``resolution`` and each side is rounded to ``step`` (``openradio features``' rule)."""

    def __init__(self, model: torch.nn.Module, resolution: int, square: bool):
        self.resolution, self.square = int(resolution), bool(square)
        self.step = int(model.min_resolution_step)
        hw = model.get_nearest_supported_resolution(resolution, resolution) if square else (0, 0)
        self.size = (int(hw[0]), int(hw[1]))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.square:
            return resize_center_crop(image, self.size)
        return resize_to_multiple(image, self.resolution, self.step)


def parse_features(spec: str) -> tuple[str, int]:
    """``none``, ``full`` or ``pooled:G`` -> (mode, G)."""
    spec = (spec or "none").strip().lower()
    if spec in ("none", "full"):
        return spec, 0
    if spec.startswith("pooled:"):
        try:
            g = int(spec.split(":", 1)[1])
        except ValueError:
            g = 0
        if g >= 1:
            return "pooled", g
    raise ValueError(f"--features must be none, full or pooled:G (G a positive grid side), got {spec!r}")


def summary_column(output: str) -> str:
    """The layout's column of an output's summary: ``summary`` (the backbone), ``<adaptor>_summary``."""
    return "summary" if output == "backbone" else f"{output}_summary"


def clip_groups(rows: Sequence[int], ids: Sequence | None, clip_frames: int) -> list[list[int]]:
    """``rows`` as clips: consecutive rows sharing a clip id (``ids[row]``), at most ``clip_frames``
    of them; ``ids`` None: every row a clip of its own."""
    groups: list[list[int]] = []
    for i in rows:
        if ids is not None and groups and ids[groups[-1][-1]] == ids[i] and len(groups[-1]) < clip_frames:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def clip_batches(rows: Sequence[int], ids: Sequence | None, clip_frames: int, batch_size: int) -> list[list[int]]:
    """``rows`` cut into batches of whole clips (:func:`clip_groups`), ``batch_size // clip_frames``
    clips a batch (at least one); with ``ids`` None and ``clip_frames`` 1, plain batches of
    ``batch_size`` rows. The extract engine's batches and the Mapper's forwards both cut this way."""
    groups = clip_groups(rows, ids, clip_frames)
    per = max(1, batch_size // clip_frames)
    return [[i for g in groups[s : s + per] for i in g] for s in range(0, len(groups), per)]


class Mapper:
    def __init__(
        self,
        model: torch.nn.Module,
        adaptors: Sequence[str] = (),
        features: str = "none",
        features_dtype: torch.dtype = torch.float16,
        dtype: torch.dtype = torch.float32,
        resolution: int | None = None,
        square: bool = False,
        batch_size: int = 32,
        upsample: str | None = None,
        clip_frames: int = 1,
    ):
        self.model = model.eval()
        self.adaptors = list(adaptors)
        missing = [a for a in self.adaptors if a not in getattr(model, "adaptors", {})]
        if missing:
            raise ValueError(f"the model has no adaptor {', '.join(missing)}; load it with adaptor_names=[...]")
        self.mode, self.grid = parse_features(features)
        if upsample is not None and upsample not in UPSAMPLE_METHODS:
            raise ValueError(f"--upsample must be one of {', '.join(UPSAMPLE_METHODS)}, got {upsample!r}")
        if upsample is not None and self.mode != "full":
            raise ValueError("--upsample brings the full feature maps to pixel resolution: use it with --features full")
        self.upsample = upsample
        self.clip_frames = check_clip_frames(clip_frames)
        self.features_dtype = features_dtype
        self.dtype = dtype
        self.square = square
        self.batch_size = batch_size
        self.resolution = model_resolution(model, resolution)
        self.device = module_device(model)
        self.outputs = ["backbone", *self.adaptors]
        self.resize = Resize(model, self.resolution, square)

    @property
    def columns(self) -> list[str]:
        return [summary_column(n) for n in self.outputs]

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        return self.resize(image)

    def dims(self) -> dict[str, int]:
        """Each summary column's width (one small forward pass)."""
        step = self.resize.step
        x = torch.zeros(1, 3, *self.model.get_nearest_supported_resolution(step * 4, step * 4))
        outs = self._forward(x)
        return {summary_column(n): int(outs[n].summary.shape[-1]) for n in self.outputs}

    def _forward(self, x: torch.Tensor, clip_frames: int = 1) -> dict:
        x = x.to(self.device, non_blocking=True)
        autocast = self.dtype != torch.float32 and next(self.model.parameters()).dtype == torch.float32
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            if clip_frames > 1:
                y = forward_frames(self.model, x, clip_frames, feature_fmt="NCHW")
            else:
                y = self.model(x, feature_fmt="NCHW")
        return y if isinstance(y, dict) else {"backbone": y}

    def _chunks(self, idx: list[int], clips: Sequence | None) -> list[list[int]]:
        """One shape group's rows cut into forward passes: ``batch_size`` rows, or with clips whole
        clips (:func:`clip_batches`)."""
        if self.clip_frames == 1 or clips is None:
            return clip_batches(idx, None, 1, self.batch_size)
        return clip_batches(idx, clips, self.clip_frames, self.batch_size)

    def _run(self, images: Sequence[torch.Tensor], part: list[int], clips: Sequence | None) -> tuple[dict, list[int]]:
        """The forward of one chunk -> (outputs, the output row of each input row)."""
        if self.clip_frames == 1 or clips is None:
            return self._forward(torch.stack([images[i] for i in part])), list(range(len(part)))
        xs, where, start = [], [], 0
        for clip in clip_groups(part, clips, self.clip_frames):
            padded, n = pad_to_clips(torch.stack([images[r] for r in clip]), self.clip_frames)
            xs.append(padded)
            where.extend(range(start, start + n))
            start += padded.shape[0]
        return self._forward(torch.cat(xs), self.clip_frames), where

    def __call__(self, images: Sequence[torch.Tensor], clips: Sequence | None = None) -> dict:
        """``clips``: one hashable clip id per image (used when ``clip_frames`` > 1); consecutive
        images with the same id form a clip (at most ``clip_frames`` of them)."""
        n = len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((int(im.shape[-2]), int(im.shape[-1])), []).append(i)
        summaries = {c: [None] * n for c in self.columns}
        feats: list[dict] = [dict() for _ in range(n)]
        for idx in groups.values():
            for part in self._chunks(idx, clips):  # the input rows of one forward
                outs, where = self._run(images, part, clips)
                guide = torch.stack([images[i] for i in part]) if self.upsample else None
                for name in self.outputs:
                    col = summary_column(name)
                    summ = outs[name].summary.float().cpu().numpy()[where]
                    f = outs[name].features if self.mode != "none" else None
                    if f is not None:
                        f = f[where]
                        if self.mode == "pooled":
                            f = F.adaptive_avg_pool2d(f.float(), self.grid)
                        elif self.upsample:
                            f = upsample_features(f.float(), guide.to(f.device), self.upsample)
                    for j, i in enumerate(part):
                        summaries[col][i] = summ[j]
                        if f is not None:
                            feats[i][name] = f[j].to(self.features_dtype).cpu().contiguous()
        out = {c: np.stack(v) if n else np.zeros((0, 0), np.float32) for c, v in summaries.items()}
        if self.mode != "none":
            out["features"] = feats
        return out
