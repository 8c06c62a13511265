"""Fault injection for recovery tests (a worker killed mid-run, restarted by torchrun)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FAULT_ENV", "maybe_inject_fault"]

FAULT_ENV = "OPENRADIO_FAULT_KILL"


def maybe_inject_fault(step: int, rank: int) -> None:
    """``OPENRADIO_FAULT_KILL=STEP:RANK:MARKER`` SIGKILLs that rank once, right after STEP, unless
    MARKER exists (it is created first, so a restarted worker runs on)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    try:
        k, r, marker = spec.split(":", 2)
        k, r = int(k), int(r)
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected STEP:RANK:MARKER_FILE, e.g. 5:1:/tmp/killed") from None
    if step == k and rank == r and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), 9)
