"""A test hook: ``OPENRADIO_EXTRACT_TEST_KILL=point:n`` SIGKILLs the run the n-th time it reaches
``point`` (``batch``: after a batch's forward pass; ``part``: after a part's parquet or metadata
file is written under its temporary name, before the rename; ``commit``: after a part's
files are renamed, before its manifest entry; ``manifest``: while the manifest is
written, before its rename). The kill tests use it to stop a run at exact moments; unset, it costs
one dictionary lookup."""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def kill_point(point: str) -> None:
    spec = os.environ.get("OPENRADIO_EXTRACT_TEST_KILL")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
