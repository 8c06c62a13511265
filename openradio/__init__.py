"""openradio: an open implementation of NVIDIA's RADIOv2.5 vision foundation models.

Public API: ``radio_model`` (load a released version or a local checkpoint), ``RADIOModel``,
``RadioOutput``, ``Resolution`` and ``versions``; ``save_hf``, ``save_transformers`` and ``export_onnx``
(write a model out); ``quantize_dynamic``, ``backbone`` and ``segment``. Attributes are imported on
first use so that ``import openradio`` (and the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = [
    "radio_model",
    "RADIOModel",
    "RadioOutput",
    "Resolution",
    "versions",
    "save_hf",
    "save_transformers",
    "export_onnx",
    "quantize_dynamic",
    "backbone",
    "segment",
]

_LAZY = {
    "radio_model": ("openradio.formats.resolve", "radio_model"),
    "RADIOModel": ("openradio.model.radio", "RADIOModel"),
    "RadioOutput": ("openradio.model.radio", "RadioOutput"),
    "Resolution": ("openradio.model.radio", "Resolution"),
    "versions": ("openradio.versions", None),
    "save_hf": ("openradio.formats.hf", "save_hf"),
    "save_transformers": ("openradio.formats.native", "save_transformers"),
    "export_onnx": ("openradio.formats.onnx", "export_onnx"),
    "quantize_dynamic": ("openradio.model.quantize", "quantize_dynamic"),
    "backbone": ("openradio.dense.backbone", "backbone"),
    "segment": ("openradio.dense.segment", "segment"),
}


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        m = importlib.import_module(mod)
        value = m if attr is None else getattr(m, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'openradio' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
