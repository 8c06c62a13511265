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

The Ray engine (:class:`openradio.ray.RadioEmbedder`) wraps the same class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from openradio.inputs.imageio import resize_center_crop, resize_to_multiple
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
    ):
        self.model = model.eval()
        self.adaptors = list(adaptors)
        missing = [a for a in self.adaptors if a not in getattr(model, "adaptors", {})]
        if missing:
            raise ValueError(f"the model has no adaptor {', '.join(missing)}; load it with adaptor_names=[...]")
        self.mode, self.grid = parse_features(features)
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
        return ["summary", *[f"{a}_summary" for a in self.adaptors]]

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        return self.resize(image)

    def dims(self) -> dict[str, int]:
        """Each summary column's width (one small forward pass)."""
        step = self.resize.step
        x = torch.zeros(1, 3, *self.model.get_nearest_supported_resolution(step * 4, step * 4))
        outs = self._forward(x)
        return {
            ("summary" if n == "backbone" else f"{n}_summary"): int(outs[n].summary.shape[-1]) for n in self.outputs
        }

    def _forward(self, x: torch.Tensor) -> dict:
        x = x.to(self.device, non_blocking=True)
        autocast = self.dtype != torch.float32 and next(self.model.parameters()).dtype == torch.float32
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            y = self.model(x, feature_fmt="NCHW")
        return y if isinstance(y, dict) else {"backbone": y}

    def __call__(self, images: Sequence[torch.Tensor]) -> dict:
        n = len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((int(im.shape[-2]), int(im.shape[-1])), []).append(i)
        summaries = {c: [None] * n for c in self.columns}
        feats: list[dict] = [dict() for _ in range(n)]
        for idx in groups.values():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s : s + self.batch_size]
                outs = self._forward(torch.stack([images[i] for i in part]))
                for name in self.outputs:
                    col = "summary" if name == "backbone" else f"{name}_summary"
                    summ = outs[name].summary.float().cpu().numpy()
                    f = outs[name].features if self.mode != "none" else None
                    if f is not None and self.mode == "pooled":
                        f = F.adaptive_avg_pool2d(f.float(), self.grid)
                    for j, i in enumerate(part):
                        summaries[col][i] = summ[j]
                        if f is not None:
                            feats[i][name] = f[j].to(self.features_dtype).cpu().contiguous()
        out = {c: np.stack(v) if n else np.zeros((0, 0), np.float32) for c, v in summaries.items()}
        if self.mode != "none":
            out["features"] = feats
        return out
