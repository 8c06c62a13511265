"""Writers: the output folder on any fsspec filesystem, and the two layouts of a part.

Every file is written under a temporary name in its folder and then renamed, so a file under its
final name is complete. On stores without an atomic rename (S3, GCS) the rename is a copy; there a
part counts only once its entry is committed in the manifest (:mod:`openradio.extract.manifest`),
which is written after the part's files.

The format (:data:`FORMAT`, recorded in the manifest) is this module's: it writes the parts, and
its readers (:func:`read_table`, :func:`read_features`) refuse a folder whose manifest records a
version they do not read. Layouts (spelled out in docs/extract.md):

* ``openradio``: ``embeddings/part-NNNNN.parquet`` (one row per input: ``key``, ``source``,
  ``width``, ``height``, ``input_height``, ``input_width``, ``summary``, ``<adaptor>_summary``...,
  ``status``) and, with ``--features``, ``features/part-NNNNN.safetensors`` (tensor
  ``<key>/<output>`` per ok row, ``output`` = ``backbone`` or an adaptor);
* ``clip-retrieval``: ``img_emb/img_emb_N.npy`` (float16, L2-normalised, ok rows only) and
  ``metadata/metadata_N.parquet`` (``image_path``, ``key``, ``width``, ``height``, same order),
  which clip-retrieval's tools and autofaiss read as they are.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import socket
import time
from typing import Iterable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save as save_tensors

from openradio.atomicio import alive
from openradio.extract.hooks import kill_point
from openradio.formats.safeload import read_safetensors_bytes

FORMAT_NAME = "openradio.extract"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"  # the manifest's "format"
FEATURES_FORMAT = "openradio.extract.features/1"  # the metadata "format" of features/part-NNNNN.safetensors


class Store:
    """A folder on an fsspec filesystem with atomic (temporary name + rename) writes."""

    def __init__(self, url: str):
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def write_bytes(self, rel: str, data: bytes, point: str | None = None) -> None:
        final = self.path(rel)
        folder, name = posixpath.split(final)
        self.fs.makedirs(folder, exist_ok=True)
        tmp = posixpath.join(folder, f".{name}.partial-{os.getpid()}")
        self._remove_stale(folder, name)
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            if point:
                kill_point(point)
            self.fs.mv(tmp, final)
        except BaseException:
            try:
                self.fs.rm(tmp)
            except (OSError, FileNotFoundError):
                pass
            raise

    def _remove_stale(self, folder: str, name: str) -> None:
        """Temporary files a killed writer of ``name`` left. Parts belong to one rank, so any other
        temporary of a part is stale; ``manifest.json`` is written by every rank, so there only those
        of dead local processes go."""
        prefix = f".{name}.partial-"
        try:
            siblings = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return
        for p in siblings:
            base = posixpath.basename(p)
            if not base.startswith(prefix):
                continue
            pid = base[len(prefix) :]
            if name == "manifest.json" and (not self.local or not pid.isdigit() or alive(int(pid))):
                continue
            try:
                self.fs.rm(p)
            except FileNotFoundError:
                pass

    @property
    def local(self) -> bool:
        proto = self.fs.protocol
        return bool({"file", "local"} & set(proto if isinstance(proto, (tuple, list)) else [proto]))

    def listdir(self, rel: str) -> list[str]:
        p = self.path(rel)
        if not self.fs.exists(p):
            return []
        return sorted(posixpath.basename(x) for x in self.fs.ls(p, detail=False))

    def remove_tree(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)

    def check_writable(self) -> None:
        """Fail at the start, in one line, when the output cannot be written."""
        if self.fs.exists(self.root) and not self.fs.isdir(self.root):
            raise OSError(f"--out {self.url} is a file; give a folder")
        # one probe per process: torchrun ranks start together on the same folder, and a shared
        # name let one rank remove the probe (or its temporary) the other was writing
        probe = f".write-test-{socket.gethostname()}-{os.getpid()}"
        self.write_bytes(probe, b"ok")
        self.fs.rm(self.path(probe))


def part_name(k: int) -> str:
    return f"part-{k:05d}"


def _fixed_list(values: list, dim: int) -> pa.Array:
    flat = np.zeros((len(values), dim), np.float32)
    mask = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        if v is None:
            mask[i] = True
        else:
            flat[i] = v
    kind = pa.list_(pa.float32(), dim)
    values = pa.array(flat.reshape(-1))
    if mask.any():
        return pa.FixedSizeListArray.from_arrays(values, type=kind, mask=pa.array(mask))
    return pa.FixedSizeListArray.from_arrays(values, type=kind)


def schema(dims: dict[str, int]) -> pa.Schema:
    fields = [
        pa.field("key", pa.string()),
        pa.field("source", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("input_height", pa.int32()),
        pa.field("input_width", pa.int32()),
    ]
    fields += [pa.field(c, pa.list_(pa.float32(), d)) for c, d in dims.items()]
    return pa.schema(fields + [pa.field("status", pa.string())])


def rows_table(rows: list[dict], dims: dict[str, int]) -> pa.Table:
    cols = {
        "key": pa.array([r["key"] for r in rows], pa.string()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        **{
            c: pa.array([r.get(c) for r in rows], pa.int32())
            for c in ("width", "height", "input_height", "input_width")
        },
        **{c: _fixed_list([r.get(c) for r in rows], d) for c, d in dims.items()},
        "status": pa.array([r["status"] for r in rows], pa.string()),
    }
    return pa.Table.from_pydict(cols, schema=schema(dims))


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_part(
    store: Store,
    k: int,
    rows: list[dict],
    dims: dict[str, int],
    layout: str,
    features: bool = False,
    column: str = "summary",
) -> tuple[list[str], float]:
    """Write part ``k``'s files; returns their names (relative to the folder) and the seconds taken."""
    t0 = time.perf_counter()
    name = part_name(k)
    files = []
    if layout == "clip-retrieval":
        ok = [r for r in rows if r["status"] == "ok"]
        emb = np.stack([r[column] for r in ok]).astype(np.float32) if ok else np.zeros((0, dims[column]), np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        buf = io.BytesIO()
        np.save(buf, emb.astype(np.float16))
        meta = pa.table(
            {
                "image_path": [r["source"] for r in ok],
                "key": [r["key"] for r in ok],
                "width": pa.array([r["width"] for r in ok], pa.int32()),
                "height": pa.array([r["height"] for r in ok], pa.int32()),
            }
        )
        files = [f"img_emb/img_emb_{k}.npy", f"metadata/metadata_{k}.parquet"]
        store.write_bytes(files[0], buf.getvalue())
        store.write_bytes(files[1], _parquet_bytes(meta), point="part")
    else:
        files.append(f"embeddings/{name}.parquet")
        store.write_bytes(files[0], _parquet_bytes(rows_table(rows, dims)), point="part")
        tensors = {f"{r['key']}/{o}": t for r in rows for o, t in (r.get("features") or {}).items()}
        if features:
            files.append(f"features/{name}.safetensors")
            meta = {"format": FEATURES_FORMAT, "part": str(k), "feature_fmt": "CHW"}
            store.write_bytes(files[1], save_tensors(tensors, metadata=meta))
    return files, time.perf_counter() - t0


def check_format(doc: dict, url: str) -> None:
    """Raise a one-line ``ValueError`` unless manifest ``doc`` records :data:`FORMAT` (a folder of
    another kind, or of a version of the format this openradio does not read)."""
    fmt = str(doc.get("format") or "")
    name, _, version = fmt.partition("/")
    if name != FORMAT_NAME or not version.isdigit():
        raise ValueError(
            f"{url} is not an openradio extract folder: its manifest.json records format {fmt or 'none'!r}, "
            f"expected {FORMAT!r}"
        )
    if int(version) != FORMAT_VERSION:
        newer = "; upgrade openradio" if int(version) > FORMAT_VERSION else ""
        raise ValueError(
            f"{url} is in format version {version} ({fmt}); this openradio reads version {FORMAT_VERSION} "
            f"({FORMAT}){newer}"
        )


def load_manifest(store: Store) -> dict | None:
    """The folder's ``manifest.json`` parsed (None when there is none); one ``ValueError`` line when
    it is not JSON. The one reader of the file: the engine's resume check and the readers use it."""
    if not store.exists("manifest.json"):
        return None
    try:
        return json.loads(store.read_bytes("manifest.json"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{store.url}/manifest.json is not valid JSON ({e})") from None


def checked_manifest(store: Store) -> dict:
    """The folder's ``manifest.json``, checked with :func:`check_format`; one line when it is missing
    or not JSON."""
    doc = load_manifest(store)
    if doc is None:
        raise FileNotFoundError(f"{store.url} has no manifest.json: is it an `openradio extract` output folder?")
    check_format(doc if isinstance(doc, dict) else {}, store.url)
    return doc


def read_table(url: str, parts: Iterable[int] | None = None) -> pa.Table:
    """The embeddings of a folder as one pyarrow Table (the parts the manifest lists, in order)."""
    store = Store(url)
    doc = checked_manifest(store)
    if parts is None:
        parts = sorted(doc["parts"], key=int)
    tables = [pq.read_table(io.BytesIO(store.read_bytes(f"embeddings/{part_name(int(k))}.parquet"))) for k in parts]
    return pa.concat_tables(tables) if tables else pa.table({})


def read_features(url: str, part: int) -> dict[str, torch.Tensor]:
    """The dense features of one part: ``{"<key>/<output>": (C, h, w) tensor}``."""
    store = Store(url)
    checked_manifest(store)
    rel = f"features/{part_name(part)}.safetensors"
    return read_safetensors_bytes(store.read_bytes(rel), f"{store.url}/{rel}", "an openradio extract features part")
