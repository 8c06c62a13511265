"""The features file ``openradio features`` writes: its layout, version, writer and reader.

One ``.safetensors`` file:

* ``<image>/<output>/summary``  — ``(1, D)`` float32 summary vector;
* ``<image>/<output>/features`` — ``(1, C, h, w)`` float32 spatial features (NCHW);

where ``<image>`` is a unique name per input (the command uses the file's stem, ``_1``, ``_2``...
appended when two inputs share one; it cannot contain ``/``) and ``<output>`` is ``backbone`` or an
adaptor name. The metadata holds, each as a JSON-encoded string: ``format`` (:data:`FORMAT`),
``version``, ``feature_fmt`` ("NCHW"), ``adaptors``, ``outputs``, ``resolution`` (per image: the
model input ``[height, width]``), ``images`` (per image: the source path), ``requested_resolution``,
``square``, ``vitdet_window``, ``amp``. Any safetensors reader opens it::

    from safetensors import safe_open
    with safe_open("feats.safetensors", "pt") as f:
        feats = f.get_tensor("cat/backbone/features")   # (1, C, h, w)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from openradio.atomicio import atomic_path
from openradio.formats.safeload import open_safetensors

__all__ = ["FORMAT", "FORMAT_NAME", "FORMAT_VERSION", "write_features", "read_features"]

FORMAT_NAME = "openradio.features"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"

Features = Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]]  # image -> output -> summary|features


def write_features(path: str | os.PathLike, features: Features, metadata: Mapping[str, Any]) -> Path:
    """Write ``{image: {output: {'summary': t, 'features': t}}}`` and ``metadata`` (``format`` is set
    here) atomically: the file appears complete under its name or not at all."""
    tensors = {}
    for image, outputs in features.items():
        if "/" in image:
            raise ValueError(f"image name {image!r} contains '/', which separates the parts of a key")
        for output, parts in outputs.items():
            for kind, t in parts.items():
                tensors[f"{image}/{output}/{kind}"] = t.detach().float().cpu().contiguous()
    meta = {"format": FORMAT, **{k: v for k, v in metadata.items() if k != "format"}}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    return path


def read_features(path: str | os.PathLike) -> tuple[dict[str, dict[str, dict[str, torch.Tensor]]], dict]:
    """Read a file written by :func:`write_features`: ``({image: {output: {'summary', 'features'}}}, metadata)``.
    A file of another kind, or of a newer version of this format, is a one-line ``ValueError``."""
    nested: dict = {}
    with open_safetensors(path, "an openradio features file") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        fmt = str(meta.get("format", ""))
        name, _, version = fmt.partition("/")
        if name != FORMAT_NAME or not version.isdigit():
            raise ValueError(
                f"{path} is not an openradio features file (format {fmt or 'missing'!r}, "
                f"expected {FORMAT!r}); write one with `openradio features`"
            )
        if int(version) > FORMAT_VERSION:
            raise ValueError(f"{path} is in {fmt}, newer than this openradio reads ({FORMAT}); upgrade openradio")
        for key in f.keys():
            image, output, kind = key.rsplit("/", 2)
            nested.setdefault(image, {}).setdefault(output, {})[kind] = f.get_tensor(key)
    return nested, meta
