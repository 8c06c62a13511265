"""The file ``openradio features`` writes: one safetensors file of summaries and spatial features
per image and output, keyed ``<image stem>/<output>/<summary|features>``, with JSON metadata."""
from __future__ import annotations

import json
import os


def read_features(path: str | os.PathLike) -> tuple[dict[str, dict[str, dict[str, "object"]]], dict]:
    """Read a file written by ``openradio features``: ``({image: {output: {'summary', 'features'}}}, metadata)``."""
    from safetensors import safe_open

    nested: dict = {}
    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        for key in f.keys():
            image, output, kind = key.rsplit("/", 2)
            nested.setdefault(image, {}).setdefault(output, {})[kind] = f.get_tensor(key)
    return nested, meta
