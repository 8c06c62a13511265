"""``openradio extract``: features of millions of images or hours of video, streamed to parquet
(+ safetensors for dense features) in parts, with bounded memory, exact resume and a manifest.

The split follows the data path: :mod:`~openradio.extract.sources` (readers: folders, file lists,
webdataset shards, videos) -> :mod:`~openradio.extract.mapper` (batches through the model) ->
:mod:`~openradio.extract.writers` (parquet + safetensors, or clip-retrieval's layout) and
:mod:`~openradio.extract.manifest`; :mod:`~openradio.extract.engine` runs them on one process or
one torchrun rank. The format is specified in docs/extract.md.
"""

from __future__ import annotations

import importlib
import os
from typing import Sequence

import torch

from openradio.formats.resolve import radio_model
from openradio.runtime import cpu_has_native_bf16, pick_device

__all__ = ["extract", "read", "read_features", "ExtractError", "Options", "FORMAT"]

# the names below need the `extract` extra (pyarrow, fsspec, braceexpand); they are imported on first
# use, so `openradio.extract.mapper` (also the batching of `openradio features`) imports without it
_LAZY = {
    "ExtractError": "openradio.extract.engine",
    "Options": "openradio.extract.engine",
    "run_local": "openradio.extract.engine",
    "FORMAT": "openradio.extract.writers",
    "read_features": "openradio.extract.writers",
    "read_table": "openradio.extract.writers",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read(url: str):
    """The embeddings of an extract folder as one pyarrow Table (every complete part, in order)."""
    from openradio.extract.writers import read_table  # optional: the extract extra (pyarrow, fsspec)

    return read_table(url)


def extract(sources: Sequence[str], model: "str | torch.nn.Module", out: str, **options) -> dict:
    """Run an extraction (or resume it) and return the manifest. ``model`` is a version name, a
    checkpoint path or a loaded model; ``options`` are :class:`Options`' fields."""
    from openradio.extract.engine import Options, run_local  # optional: the extract extra (pyarrow, fsspec)

    opts = Options(**options)
    version = model if isinstance(model, str) else getattr(model, "version", None)
    loaded = isinstance(model, str)
    if isinstance(model, str):
        model = radio_model(
            model,
            adaptor_names=list(opts.adaptors) or None,
            vitdet_window_size=opts.vitdet_window,
            progress=opts.progress,
        )
    device = pick_device(opts.device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per rank
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    model = model.to(device).eval()
    if loaded and device.type == "cpu" and opts.dtype == "bfloat16" and cpu_has_native_bf16():
        # bf16 weights instead of autocast on CPUs that compute bf16 natively: no per-call weight
        # casts, and the fused oneDNN blocks (openradio.model.fused_cpu); a model passed in is left as it is
        model.set_compute_dtype(torch.bfloat16)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        # torchrun: ranks share nothing but the final barrier (gloo on CPUs, nccl on GPUs)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return run_local(list(sources), model, out, opts, version=str(version) if version else None)
