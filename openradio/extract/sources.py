"""Readers: turn SOURCE arguments into one ordered list of rows, and decode one row.

Every input becomes a :class:`Row` with a stable ``key`` and a ``source`` string, in an order that
depends only on the arguments and the files (folders are walked sorted, lists keep their order,
tar shards their member order, videos their timestamps). Part ``k`` of a run therefore always
holds the same rows, which is what makes resume and multi-rank sharding exact.

Kinds of SOURCE (each may be a local path or an fsspec URL such as ``s3://bucket/dir``):

* an image folder (walked recursively) or an image file;
* a file list: ``.txt`` (one path a line), ``.csv`` or ``.parquet`` with a ``path`` column;
  relative paths are taken relative to the list's folder;
* webdataset tar shards, with brace patterns (``shards/part-{0000..0099}.tar``): one row per image
  member (members are read by offset; nothing is extracted to disk);
* video files (``.mp4``, ``.mkv``, ``.webm``, ``.mov``, ``.avi``): one row per frame at ``fps``,
  the row's source carrying the timestamp (``video.mp4@12.500``).
"""

from __future__ import annotations

import csv
import io
import math
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Sequence

import fsspec
import pyarrow.parquet as pq
import torch
from braceexpand import braceexpand
from PIL import Image, ImageOps, UnidentifiedImageError

from openradio.inputs.imageio import image_to_tensor, is_image_name

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
LIST_SUFFIXES = (".txt", ".csv", ".parquet")


class SourceError(ValueError):
    """A SOURCE argument that cannot be read at all (missing, empty, not a known kind)."""


@dataclass(frozen=True)
class Row:
    """One input. ``kind`` is ``file``, ``tar`` or ``video``; ``url`` the file (or shard, or video);
    ``member``/``offset``/``size`` locate a tar member; ``time`` a video frame's timestamp (s)."""

    key: str
    source: str
    kind: str
    url: str
    member: str = ""
    offset: int = 0
    size: int = 0
    time: float = 0.0


def _fs(url: str):
    return fsspec.core.url_to_fs(url)


def _join(fs, path: str) -> str:
    """The full URL of ``path`` found by walking a folder on ``fs`` (keeps the protocol)."""
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return path if proto in ("file", "local") else f"{proto}://{path}"


def is_video_name(name: str) -> bool:
    return name.lower().endswith(VIDEO_SUFFIXES)


def expand_sources(sources: Sequence[str]) -> list[str]:
    """Brace patterns expanded (``part-{00..09}.tar``), in argument order."""
    out: list[str] = []
    for s in sources:
        out.extend(braceexpand(str(s)) if "{" in str(s) else [str(s)])
    return out


def list_rows(sources: Sequence[str], fps: float = 1.0) -> list[Row]:
    """Every row of the SOURCE arguments, in order. Raises :class:`SourceError` (one line) for a
    missing source or a folder without images."""
    rows: list[Row] = []
    for src in expand_sources(sources):
        fs, path = _fs(src)
        if not fs.exists(path):
            raise SourceError(f"source not found: {src} (give an image folder, a file list, tar shards or a video)")
        if fs.isdir(path):
            found = sorted(p for p in fs.find(path) if is_image_name(p) or is_video_name(p))
            if not found:
                raise SourceError(f"no images or videos under {src}")
            for p in found:
                url = _join(fs, p)
                rel = posixpath.relpath(p, path)
                rows.extend(_video_rows(url, fps) if is_video_name(p) else [Row(rel, url, "file", url)])
        elif path.lower().endswith(".tar"):
            rows.extend(_tar_rows(src))
        elif path.lower().endswith(LIST_SUFFIXES):
            rows.extend(_list_rows(src, fs, path))
        elif is_video_name(path):
            rows.extend(_video_rows(src, fps))
        else:  # a single file: decoded (or reported unreadable) like any other
            rows.append(Row(posixpath.basename(path), src, "file", src))
    return _unique_keys(rows)


def _unique_keys(rows: list[Row]) -> list[Row]:
    """Keys made unique with ``#1``, ``#2``... (two sources may hold the same relative name)."""
    seen: dict[str, int] = {}
    out = []
    for r in rows:
        if r.key in seen:
            seen[r.key] += 1
            r = Row(f"{r.key}#{seen[r.key]}", r.source, r.kind, r.url, r.member, r.offset, r.size, r.time)
        else:
            seen[r.key] = 0
        out.append(r)
    return out


def _list_rows(src: str, fs, path: str) -> list[Row]:
    base = posixpath.dirname(src)
    if path.lower().endswith(".parquet"):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        if "path" not in table.column_names:
            raise SourceError(f"{src} has no 'path' column (columns: {', '.join(table.column_names)})")
        entries = [str(p) for p in table.column("path").to_pylist() if p]
    else:
        with fs.open(path, "rt", encoding="utf-8") as f:
            text = f.read()
        if path.lower().endswith(".csv"):
            reader = csv.DictReader(io.StringIO(text))
            if "path" not in (reader.fieldnames or []):
                raise SourceError(f"{src} has no 'path' column (columns: {', '.join(reader.fieldnames or [])})")
            entries = [r["path"] for r in reader if r.get("path")]
        else:
            entries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    rows = []
    for e in entries:
        url = e if ("://" in e or e.startswith("/")) else posixpath.join(base, e) if base else e
        rows.append(Row(e, url, "file", url))
    return rows


def _tar_rows(src: str) -> list[Row]:
    """One row per image member of a webdataset shard; the key is webdataset's (shard stem +
    member key). Only the headers are read here."""
    shard = posixpath.splitext(posixpath.basename(src))[0]
    rows = []
    try:
        with fsspec.open(src, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
            for m in tf:
                if m.isfile() and is_image_name(m.name):
                    rows.append(Row(f"{shard}/{m.name}", f"{src}::{m.name}", "tar", src, m.name, m.offset_data, m.size))
    except tarfile.TarError as e:
        raise SourceError(f"cannot read tar shard {src}: {e}") from e
    return rows


def _video_rows(url: str, fps: float) -> list[Row]:
    """Frames at ``fps`` from 0 to the video's duration (read from the container, no decoding)."""
    import av  # optional: the [viz] extra (video sources only)

    try:
        with fsspec.open(url, "rb") as f, av.open(f) as c:
            stream = c.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif c.duration is not None:
                duration = c.duration / av.time_base
            else:
                duration = stream.frames / float(stream.average_rate or 1) if stream.frames else 0.0
    except (av.error.FFmpegError, IndexError):  # not a video, or no video stream: one row, skipped
        return [Row(posixpath.basename(url), url, "video", url, time=-1.0)]
    n = max(1, math.ceil(duration * fps - 1e-9))
    name = posixpath.basename(url)
    return [Row(f"{name}@{k / fps:.3f}", f"{url}@{k / fps:.3f}", "video", url, time=k / fps) for k in range(n)]


# -- decoding (runs in DataLoader workers) ------------------------------------------------------


class Skip(Exception):
    """A row that has no embedding; ``status`` is its reason (``unreadable: ...``, ``empty``...)."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


def decode_bytes(data: bytes, min_size: int) -> tuple[torch.Tensor, int, int]:
    if not data:
        raise Skip("empty: 0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            t = image_to_tensor(im)
    except UnidentifiedImageError:
        raise Skip("unreadable: not an image PIL can identify") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise Skip(f"unreadable: {reason}") from None
    return check_size(t, min_size)


def check_size(t: torch.Tensor, min_size: int) -> tuple[torch.Tensor, int, int]:
    """The image and its width, height; :class:`Skip` (too_small) when a side is below ``min_size``."""
    h, w = int(t.shape[-2]), int(t.shape[-1])
    if min(h, w) < min_size:
        raise Skip(f"too_small: {w}x{h} below --min-size {min_size}")
    return t, w, h


class VideoFrames:
    """Decodes frames of one video in a worker, forwards when timestamps increase (one seek
    otherwise). The frame for time t is the last one shown at or before t, on every path."""

    def __init__(self):
        self.url = None
        self.container = None
        self.frames = None
        self.prev = None  # (time, frame)
        self.pending = None

    def close(self):
        if self.container is not None:
            self.container.close()
            self.file.close()
        self.container = self.frames = self.prev = self.pending = None

    def _open(self, url: str, t: float):
        import av  # optional: the [viz] extra (video sources only)

        self.close()
        self.url = url
        self.file = fsspec.open(url, "rb").open()
        self.container = av.open(self.file)
        stream = self.container.streams.video[0]
        if t > 0:
            self.container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
        self.frames = self.container.decode(stream)

    def frame(self, url: str, t: float):
        if url != self.url or self.prev is None or self.prev[0] > t + 1e-6:
            self._open(url, t)
        while True:
            nxt = self.pending
            self.pending = None
            if nxt is None:
                f = next(self.frames, None)
                if f is None:
                    break
                nxt = (float(f.time or 0.0), f)
            if nxt[0] > t + 1e-6:
                self.pending = nxt
                break
            self.prev = nxt
        if self.prev is None:  # the first frame starts after t
            if self.pending is None:
                raise Skip("unreadable: no video frames")
            self.prev, self.pending = self.pending, None
        return self.prev[1]


def read_row(row: Row, min_size: int, videos: VideoFrames | None = None) -> tuple[torch.Tensor, int, int]:
    """Decode a row to a ``(3, H, W)`` float tensor in [0, 1]; raises :class:`Skip` with the reason."""
    if row.kind == "video":
        if row.time < 0:
            raise Skip("unreadable: not a readable video")
        import av  # optional: the [viz] extra (video sources only)

        try:
            frame = (videos or VideoFrames()).frame(row.url, row.time)
            return check_size(image_to_tensor(frame.to_ndarray(format="rgb24")), min_size)
        except av.error.FFmpegError as e:
            raise Skip(f"unreadable: {e}") from None
    try:
        if row.kind == "tar":
            with fsspec.open(row.url, "rb") as f:
                f.seek(row.offset)
                data = f.read(row.size)
        else:
            with fsspec.open(row.url, "rb") as f:
                data = f.read()
    except FileNotFoundError:
        raise Skip("missing: file not found") from None
    except IsADirectoryError:
        raise Skip("unreadable: a directory") from None
    except OSError as e:
        raise Skip(f"unreadable: {e.strerror or e}") from None
    return decode_bytes(data, min_size)
