"""ONNX export of a RADIOModel (backbone, optionally adaptor heads) with dynamic batch, height and width.

The graph takes ``pixel_values`` (B, 3, H, W) RGB in [0, 1] (the input conditioner is inside) with
H and W any multiples of ``model.min_resolution_step`` (patch size, times the window in ViTDet
mode), and returns ``summary`` and ``features`` plus ``<adaptor>_summary`` / ``<adaptor>_features``
for each adaptor kept. Exported through ``torch.onnx.export(dynamo=True)`` (torch.export +
onnxscript), so the position-grid resampling stays a function of the input size.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn
from torch.export import Dim

from openradio.model.arguments import FEATURE_FORMATS
from openradio.model.radio import RADIOModel

__all__ = ["export_onnx", "onnx_output_names", "RadioOnnxWrapper", "MIN_OPSET"]

MIN_OPSET = 17


class RadioOnnxWrapper(nn.Module):
    """``model(x)`` flattened to a tuple of tensors (ONNX outputs are positional)."""

    def __init__(self, model: RADIOModel, adaptor_names: Sequence[str], feature_fmt: str = "NCHW"):
        super().__init__()
        if feature_fmt not in FEATURE_FORMATS:
            raise ValueError(f"feature_fmt must be one of {FEATURE_FORMATS}, got {feature_fmt!r}")
        self.model = model
        self.adaptor_names = list(adaptor_names)
        self.feature_fmt = feature_fmt

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(pixel_values, feature_fmt=self.feature_fmt)
        if not isinstance(out, dict):
            return out.summary, out.features
        res = [out["backbone"].summary, out["backbone"].features]
        for name in self.adaptor_names:
            res += [out[name].summary, out[name].features]
        return tuple(res)


def onnx_output_names(adaptor_names: Sequence[str]) -> list[str]:
    names = ["summary", "features"]
    for n in adaptor_names:
        names += [f"{n}_summary", f"{n}_features"]
    return names


def export_onnx(
    model: RADIOModel,
    path: str | os.PathLike,
    *,
    adaptor_names: Optional[Sequence[str]] = None,
    feature_fmt: str = "NCHW",
    opset: int = 18,
    example_size: Optional[tuple[int, int]] = None,
    max_size: int = 4096,
    verbose: bool = False,
) -> Path:
    """Write ``model`` to ``path`` (a single .onnx file, weights inside) with dynamic B, H and W.

    ``adaptor_names``: which of the model's attached adaptors to export (default: all of them;
    ``[]`` for the backbone only). The ViTDet window, if set on the model, is baked in and H, W
    must then be multiples of patch x window. ``max_size``: the largest side the graph accepts.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: use {MIN_OPSET} or newer (LayerNorm and attention need it)")
    try:
        import onnxscript  # noqa: F401  (optional [onnx]: torch.onnx's dynamo exporter needs it)
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'openradio[onnx]'") from None
    names = list(model.adaptors) if adaptor_names is None else list(adaptor_names)
    unknown = [n for n in names if n not in model.adaptors]
    if unknown:
        raise ValueError(
            f"adaptors {unknown} are not attached to the model (attached: {list(model.adaptors)}); "
            "load it with adaptor_names=[...]"
        )
    export_model = model
    if set(names) != set(model.adaptors):  # a shallow copy without the unwanted heads
        export_model = copy.copy(model)
        export_model._modules = dict(model._modules)
        export_model.adaptors = nn.ModuleDict({n: model.adaptors[n] for n in names})
    wrapper = RadioOnnxWrapper(export_model, names, feature_fmt).eval()
    step = model.min_resolution_step
    if example_size is None:
        example_size = (2 * step, 3 * step)
    h, w = example_size
    if h % step or w % step:
        raise ValueError(f"example_size {example_size} must be multiples of {step}")
    x = torch.rand(2, 3, h, w, dtype=torch.float32, device=next(model.parameters()).device)
    batch = Dim("batch", min=1, max=1024)
    hs = Dim("h_steps", min=1, max=max(max_size // step, 4))
    ws = Dim("w_steps", min=1, max=max(max_size // step, 4))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (x,),
            input_names=["pixel_values"],
            output_names=onnx_output_names(names),
            dynamic_shapes={"pixel_values": {0: batch, 2: step * hs, 3: step * ws}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=verbose,
            report=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned nothing; this torch release lacks the dynamo exporter")
    program.save(str(path), external_data=False)
    return path
