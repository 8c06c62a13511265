"""Optional dependencies: what each extra installs and one clear error when it is missing.

Inference needs only the base install (torch, timm, safetensors, ...). Video, plots, TensorBoard
logs and the bundled sample photographs come with extras, so an inference-only install stays small.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> (extra that installs it, PyPI package)
EXTRAS: dict[str, tuple[str, str]] = {
    "av": ("viz", "av"),
    "matplotlib": ("viz", "matplotlib"),
    "skimage": ("demo", "scikit-image"),
    "skimage.data": ("demo", "scikit-image"),
    "sklearn": ("demo", "scikit-learn"),
    "sklearn.datasets": ("demo", "scikit-learn"),
    "torch.utils.tensorboard": ("train", "tensorboard"),
    "transformers": ("hf", "transformers"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "pyarrow": ("extract", "pyarrow"),
    "fsspec": ("extract", "fsspec"),
    "braceexpand": ("extract", "braceexpand"),
    "faiss": ("faiss", "faiss-cpu"),
    "ray": ("ray", "ray[data]"),
    "s3fs": ("s3", "s3fs"),
}


class MissingExtra(ImportError, RuntimeError):
    """An optional dependency is not installed; the message names the extra to install. (Also a
    RuntimeError, so the CLI reports it as one line like its other errors.)"""


def require(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or one line saying which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra, package = EXTRAS.get(module, ("all", module))
        raise MissingExtra(
            f"{purpose} needs {package}, which is not installed: pip install 'openradio[{extra}]'"
        ) from None
