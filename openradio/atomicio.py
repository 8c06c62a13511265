"""Atomic output files: write under a temporary name in the same folder, then rename.

A command killed mid-write (Ctrl-C, SIGKILL, out of memory, a full disk) then leaves either the
previous file or none under the final name, never a truncated one. The temporary name is hidden
and carries the writer's process id (``.NAME.partial-PID.EXT``, keeping the extension so that
writers which pick a format from it still do); a later write to the same path removes temporaries
left by processes that no longer run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_text", "write_bytes", "partial_name"]


def partial_name(path: Path, pid: int | None = None) -> Path:
    path = Path(path)
    stem, suffix = (path.name[: -len(path.suffix)], path.suffix) if path.suffix else (path.name, "")
    return path.with_name(f".{stem}.partial-{os.getpid() if pid is None else pid}{suffix}")


def alive(pid: int) -> bool:
    """Whether a local process with this pid exists (a temporary file of a dead one is stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(path: Path) -> None:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for p in path.parent.glob(f".{stem}.partial-*{path.suffix}"):
        pid = p.name[len(stem) + 10 : len(p.name) - len(path.suffix)]  # after ".{stem}.partial-"
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            with contextlib.suppress(OSError):
                p.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """``with atomic_path(out) as tmp: writer(tmp)``: ``out`` appears (renamed) only when the block
    ends without an exception; on an exception the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = partial_name(path)
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
