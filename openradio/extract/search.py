"""Search an extract folder: exact cosine top-k over its parquet parts in bounded memory.

The parts are streamed in record batches (only the key, source, status and the searched column
are read), each batch scored against the L2-normalised query and merged into a running top-k, so
memory holds one batch and k rows whatever the size of the folder. With ``use_faiss=True`` the
rows go into a faiss ``IndexFlatIP`` instead (exact inner products as well, faster for many
queries over large sets; it holds every vector, so memory grows with the folder).

Queries: :func:`embed_image` runs the folder's own model and options on an image (the rows and the
query share preprocessing, so a copied image scores 1.0); :func:`embed_text` runs the ``clip`` /
``siglip`` adaptor's text tower, giving a vector in the space of ``<adaptor>_summary``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from openradio.extract.engine import model_digest
from openradio.extract.manifest import ManifestMismatch
from openradio.extract.mapper import DTYPES, Mapper
from openradio.extract.writers import Store, checked_manifest, part_name
from openradio.extras import require
from openradio.formats.resolve import radio_model
from openradio.inputs.imageio import load_image
from openradio.runtime import pick_device


@dataclass
class Hit:
    rank: int
    score: float
    key: str
    source: str


def _manifest(url: str) -> tuple[Store, dict]:
    store = Store(url)
    doc = checked_manifest(store)
    if doc.get("layout") != "openradio":
        raise ValueError(f"{url} has the {doc.get('layout')} layout; search reads the openradio layout")
    return store, doc


def _normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _batches(store: Store, doc: dict, column: str, batch_rows: int):
    for k in sorted(doc["parts"], key=int):
        f = pq.ParquetFile(io.BytesIO(store.read_bytes(f"embeddings/{part_name(int(k))}.parquet")))
        if column not in f.schema_arrow.names:
            raise ValueError(f"no column {column!r} (columns: {', '.join(f.schema_arrow.names)})")
        for b in f.iter_batches(batch_size=batch_rows, columns=["key", "source", "status", column]):
            ok = np.asarray(b.column("status").to_pylist()) == "ok"
            if not ok.any():
                continue
            flat = b.column(column).filter(ok).flatten().to_numpy(zero_copy_only=False)
            vecs = flat.reshape(int(ok.sum()), -1)
            keys = np.asarray(b.column("key").to_pylist(), object)[ok]
            srcs = np.asarray(b.column("source").to_pylist(), object)[ok]
            yield _normalise(vecs), keys, srcs


def search(
    url: str, query: np.ndarray, column: str = "summary", k: int = 10, use_faiss: bool = False, batch_rows: int = 65536
) -> list[Hit]:
    """The ``k`` rows of ``column`` nearest to ``query`` by cosine, best first."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    store, doc = _manifest(url)
    q = _normalise(query).reshape(-1)
    if use_faiss:
        return _search_faiss(store, doc, q, column, k, batch_rows)
    best_s = np.zeros(0, np.float32)
    best_kv: list[tuple[str, str]] = []
    for vecs, keys, srcs in _batches(store, doc, column, batch_rows):
        if vecs.shape[1] != q.shape[0]:
            raise ValueError(f"the query has {q.shape[0]} dimensions, {column} has {vecs.shape[1]}")
        s = np.concatenate([best_s, vecs @ q])
        kv = best_kv + list(zip(keys, srcs))
        top = np.argsort(-s, kind="stable")[:k]
        best_s, best_kv = s[top], [kv[i] for i in top]
    return [Hit(i + 1, float(s), kv[0], kv[1]) for i, (s, kv) in enumerate(zip(best_s, best_kv))]


def _search_faiss(store, doc, q, column, k, batch_rows) -> list[Hit]:
    faiss = require("faiss", "searching with faiss")
    index, kv = None, []
    for vecs, keys, srcs in _batches(store, doc, column, batch_rows):
        index = index or faiss.IndexFlatIP(vecs.shape[1])
        index.add(np.ascontiguousarray(vecs))
        kv.extend(zip(keys, srcs))
    if index is None:
        return []
    scores, ids = index.search(q[None].astype(np.float32), min(k, len(kv)))
    return [Hit(r + 1, float(s), *kv[i]) for r, (s, i) in enumerate(zip(scores[0], ids[0])) if i >= 0]


def load_folder_model(url: str, version: str | None = None, device: str | None = None):
    """The model that made the folder (``version`` overrides the manifest's), with its adaptors,
    and a Mapper with the folder's options. Refuses a model whose digest differs."""
    _, doc = _manifest(url)
    o = doc["options"]
    name = version or doc["model"]["version"]
    if not name:
        raise ValueError(f"{url}'s manifest names no model version: pass --version")
    model = (
        radio_model(name, adaptor_names=o["adaptors"] or None, vitdet_window_size=o["vitdet_window"], progress=False)
        .to(pick_device(device))
        .eval()
    )
    if model_digest(model) != doc["model"]["digest"]:
        raise ManifestMismatch(f"{name} is not the model that made {url} (the weights' digest differs)")
    mapper = Mapper(model, o["adaptors"], "none", torch.float16, DTYPES[o["dtype"]], o["resolution"], o["square"])
    return model, mapper


def embed_image(mapper: Mapper, path: str, column: str = "summary") -> np.ndarray:
    if column not in mapper.columns:
        raise ValueError(f"no column {column!r} (columns: {', '.join(mapper.columns)})")
    return mapper([mapper.prepare(load_image(path))])[column][0]


def embed_text(model, text: str, adaptor: str) -> np.ndarray:
    a = model.adaptors[adaptor]
    if not hasattr(a, "encode_text"):
        raise ValueError(f"adaptor {adaptor!r} has no text tower (clip and siglip have one; pass --text-weights)")
    with torch.no_grad():
        return a.encode_text(a.tokenizer([text]), normalize=True)[0].float().cpu().numpy()


def hits_json(hits: list[Hit]) -> str:
    return json.dumps([h.__dict__ for h in hits], indent=1)
