"""Opt-in int8 inference on CPUs: dynamic quantisation of the ViT blocks' linear layers.

Weights become int8 (one scale per output channel); activations are quantised on the fly per
call (per tensor), so no calibration data is needed. This is torch's eager-mode dynamic
quantisation (``torch.ao.quantization.quantize_dynamic``; oneDNN int8 kernels by default,
fbgemm/x86 on request). torch marks the eager ``torch.ao`` API as deprecated in favour of
``torchao``'s ``quantize_``; it is still the one whose int8 kernels run fast on a plain CPU
without ``torch.compile``, so it is used here and the deprecation warnings it raises are
silenced once, here.

Only the blocks' ``qkv``, ``proj``, ``fc1`` and ``fc2`` are quantised: they hold almost all the
FLOPs. The patch embedding, the CPE position grid, the norms and the adaptor heads stay float32
(small, and the summary heads are where accuracy shows first).

Activations get one scale per linear call, so an image's int8 output depends slightly on what
else is in the batch (or in a ``forward_images`` pack): close to, not equal to, running it alone.
"""

from __future__ import annotations

import copy
import warnings
from typing import Optional

import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig
from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic

from openradio.model.radio import RADIOModel

# measured fastest on an AVX2 CPU (benchmarks/README.md, int8): x1.5 at 512 px against x1.4 for x86
DEFAULT_ENGINE = "onednn"


def quantize_dynamic(
    model: RADIOModel, inplace: bool = False, per_channel: bool = True, engine: Optional[str] = None
) -> RADIOModel:
    """A copy of ``model`` (float32, CPU, eval) whose ViT blocks run int8 linear layers.

    ``engine``: torch's quantised CPU backend whose int8 kernels the layers are packed for
    (``onednn``, ``x86``, ``fbgemm``; default ``onednn`` where this torch has it, else torch's
    current engine): the packed weights keep their backend, so the choice holds for every later
    call and torch's global engine setting is left as it was. Accuracy and speed-up against
    float32 per engine: benchmarks/bench_int8.py. Training a quantised model is not supported (it
    has no gradients through the int8 layers)."""
    if not isinstance(model, RADIOModel):
        raise TypeError(f"quantize_dynamic takes a RADIOModel, got {type(model).__name__}")
    if model.dtype != torch.float32:
        raise ValueError(
            f"int8 quantisation starts from a float32 model, this one is {model.dtype}: "
            "load it with dtype float32 (model.float())"
        )
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 dynamic quantisation runs on the CPU: move the model there first (model.cpu())")
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "qnnpack", "onednn")):
        raise RuntimeError(f"this torch build has no quantised CPU engine (supported: {engines})")
    engine = engine or (DEFAULT_ENGINE if DEFAULT_ENGINE in engines else torch.backends.quantized.engine)
    if engine not in engines:
        raise ValueError(f"quantised engine {engine!r} is not in this torch build (supported: {', '.join(engines)})")
    out = model if inplace else copy.deepcopy(model)
    out.eval()
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        before = torch.backends.quantized.engine
        torch.backends.quantized.engine = engine  # the weights are packed for the engine current here
        try:
            out.model.blocks = torch_quantize_dynamic(
                out.model.blocks, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=False
            )
        finally:
            torch.backends.quantized.engine = before
    out.quantized = f"int8-dynamic ({engine})"
    return out


def is_quantized(model: nn.Module) -> bool:
    return getattr(model, "quantized", None) is not None
