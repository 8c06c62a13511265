"""Safe reading of weight files: the one reader every format uses.

A file is sniffed before it is read (an image, JSON or HTML page is named as such), zip checksums
are verified (``torch.load`` does not check them), and pickles are read with
``torch.load(weights_only=True)`` and an allow-list, so nothing in a file runs code. safetensors
files are read with one-line errors too. Every failure is a :class:`CheckpointError`.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, load_file

# What an official checkpoint's pickle may reference beyond tensors and plain containers.
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, unsafe or inconsistent."""


_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7-zip archive"),
    (b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"),
    (b"\x89HDF", "an HDF5 file (Keras/h5py)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
]


def sniff_file(path: str | os.PathLike) -> Optional[str]:
    """What a file that cannot be a PyTorch checkpoint looks like ('a PNG image', 'a JSON
    document', ...), or None when it may be one (a zip archive or a pickle)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return None  # zip (torch.save) or a pickle (legacy torch.save)
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI ", b"WAVE"):
        return {b"WEBP": "a WebP image", b"AVI ": "an AVI video", b"WAVE": "a WAV file"}[head[8:12]]
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video or HEIF image"
    if len(head) > 8:
        n = int.from_bytes(head[:8], "little")
        if 0 < n < 100_000_000 and head[8:10] == b'{"':
            return "a safetensors file (a Hugging Face folder holds it with config.json: pass the folder)"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive (a folder packed with tar, not a torch.save file)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        return "a JSON document"
    if stripped.startswith(("<!DOCTYPE", "<html", "<HTML", "<?xml")):
        return "an HTML/XML page (a download that returned a web page?)"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return None


def verify_zip_checksums(path: str | os.PathLike) -> Optional[str]:
    """The first member of a zip-format torch file whose data does not match its stored CRC-32
    (``torch.load`` does not check them, so a flipped bit would load silently), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            if all(info.CRC == 0 for info in z.infolist() if info.file_size):
                return None  # written without checksums: nothing to verify against
            return z.testzip()
    except zipfile.BadZipFile:
        return None  # not readable as a zip here: torch.load says why


def safe_torch_load(path: str | os.PathLike, what: str = "PyTorch checkpoint", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` (allow-list :data:`SAFE_GLOBALS`) after cheap checks, with
    every failure as a one-line :class:`CheckpointError`: an empty file, a file of another kind
    (image, JSON, text...), a zip whose checksums fail, a truncated file, or a pickle that asks for
    anything beyond tensors and plain containers (refused before any of it runs). The reader's own
    message stays available as the exception's ``__cause__`` (``openradio --debug``).

    ``mmap=True`` maps the tensors from the file (copy-on-write) instead of reading them into
    memory: pages are read on first use, and a model built with ``build_radio(..., assign=True)``
    keeps them as its weights, so loading needs no second copy. Files in the pre-1.6 (non-zip)
    format cannot be mapped and are read normally."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch it again.")
    kind = sniff_file(path)
    if kind is not None:
        raise CheckpointError(f"{path} is not a {what}: looks like {kind}")
    bad = verify_zip_checksums(path)
    if bad is not None:
        raise CheckpointError(
            f"{path} is corrupt: the data of {bad!r} does not match its stored checksum (a bit "
            "changed in storage or transfer); fetch the file again"
        )
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        detail = _unsafe_detail(str(e))
        if detail is None:
            raise CheckpointError(
                f"cannot read {path} ({size:,} bytes): not a {what}, or a corrupt one "
                "(openradio --debug shows the reader's message)"
            ) from e
        raise CheckpointError(
            f"refusing to load {path}: its pickle asks for {detail}, which is not on the allow-list (it could run "
            "code); RADIO files hold only tensors, dtypes and argparse.Namespace. Load files only from sources you "
            "trust"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, IndexError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"cannot read {path} ({size:,} bytes): the file is truncated or corrupt; "
            "delete it and fetch it again (openradio --debug shows the reader's message)"
        ) from e


def _unsafe_detail(msg: str) -> Optional[str]:
    """The object a refused pickle asked for (``posix.mkdir``), or None when the error is not
    about a refused object (a corrupt or foreign file)."""
    m = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"Unsupported global: ([\w.]+)", msg)
    if m:
        return m.group(1)
    for line in msg.splitlines():
        if "Unsupported global" in line:
            return line.split(":", 1)[-1].strip().rstrip(".")
    return None


def _unreadable(path: str | os.PathLike, what: str, e: BaseException | None) -> CheckpointError:
    where = f"cannot read {path}" + (f" as {what}" if what else "")
    if e is None:
        return CheckpointError(f"{where}: no such file")
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return CheckpointError(f"{where}: the file is truncated or corrupt ({reason})")


def read_safetensors_file(path: str | os.PathLike, what: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file; a missing file is a ``FileNotFoundError``, a truncated
    or corrupt one (or a file of another kind) one :class:`CheckpointError` line naming it (and
    ``what`` it was read as, when given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return load_file(str(path))
    except Exception as e:
        raise _unreadable(path, what, e) from e


@contextmanager
def open_safetensors(path: str | os.PathLike, what: str = "") -> Iterator[Any]:
    """``safetensors.safe_open(path, framework="pt")`` for reading selected tensors and the metadata
    lazily. A missing file, one that cannot be opened, or one whose tensors cannot be read is one
    :class:`CheckpointError` line (a ``ValueError``) naming it (and ``what`` it was read as)."""
    if not Path(path).is_file():
        raise _unreadable(path, what, None)
    try:
        f = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise _unreadable(path, what, e) from e
    with f:
        try:
            yield f
        except SafetensorError as e:
            raise _unreadable(path, what, e) from e


def read_safetensors_bytes(data: bytes, source: str, what: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file read into memory (``source`` names it in the error), with
    the one-line :class:`CheckpointError` of :func:`read_safetensors_file`."""
    try:
        return load(data)
    except Exception as e:
        raise _unreadable(source, what, e) from e


def read_safetensors(
    folder: str | os.PathLike, default_files: Optional[Sequence[str]] = None
) -> dict[str, torch.Tensor]:
    """The tensors of a folder of safetensors files: the shards its ``model.safetensors.index.json``
    names, else ``default_files`` (default: ``model.safetensors``); a missing, truncated or corrupt
    file is one :class:`CheckpointError` line."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = list(default_files) if default_files is not None else ["model.safetensors"]
    if not files:
        raise FileNotFoundError(f"{folder} has no model.safetensors")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(read_safetensors_file(folder / name))
    return state


__all__ = [
    "CheckpointError",
    "SAFE_GLOBALS",
    "sniff_file",
    "verify_zip_checksums",
    "safe_torch_load",
    "read_safetensors",
    "read_safetensors_file",
    "read_safetensors_bytes",
    "open_safetensors",
]
