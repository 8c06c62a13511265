"""Fault-tolerant training checkpoints: atomic writes, the last K kept, fallback past a corrupt newest file.

A crash (kill -9, node loss, full disk) can happen at any moment, including in the middle of a
save. The rules that make that harmless:

* a checkpoint becomes visible under its final name only once it is complete: it is written to a
  temporary file in the same folder, flushed and fsynced, renamed with ``os.replace`` (atomic on
  POSIX within one file system), and the folder is fsynced so the rename itself survives a
  power loss;
* :meth:`CheckpointManager.load_latest` tries the newest file first and, if it cannot be read
  (truncated by a dying file system, hand-edited, ...), warns naming it and falls back to the
  previous one;
* everything is loaded with ``torch.load(weights_only=True)``, so a checkpoint cannot run code.
  :meth:`CheckpointManager.save` checks the state holds only what that loader accepts (tensors,
  Python scalars/strings/bytes, lists, tuples, sets, dicts, ``torch.Size``/``dtype``/``device``)
  and names the offending entry otherwise. :func:`capture_rng_state` stores the RNG states of
  Python, numpy and torch in those plain types.

Files: ``DIR/step-00001234.pt`` holding ``{'format': 'openradio-train-state/1', 'step': 1234,
'state': <the dict given to save>}``.
"""

from __future__ import annotations

import collections
import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from openradio.formats.safeload import safe_torch_load

__all__ = ["CheckpointManager", "capture_rng_state", "restore_rng_state", "check_weights_only", "FORMAT"]

FORMAT = "openradio-train-state/1"
_NAME = re.compile(r"^step-(\d{8,})\.pt$")
_TMP_PREFIX = ".tmp-step-"

_LEAF_TYPES = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device)


def check_weights_only(obj: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first entry of ``obj`` that ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, torch.Tensor) or type(obj) in _LEAF_TYPES:
        return
    if type(obj) in (dict, collections.OrderedDict):
        for k, v in obj.items():
            check_weights_only(k, f"{where} key {k!r}")
            check_weights_only(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            check_weights_only(v, f"{where}[{i}]")
        return
    hint = ""
    if isinstance(obj, np.ndarray):
        hint = " (convert numpy arrays with torch.from_numpy)"
    elif isinstance(obj, np.generic):
        hint = " (convert numpy scalars with .item())"
    elif hasattr(obj, "__dict__"):
        hint = " (store vars(obj) or a dict of its fields instead)"
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which torch.load(weights_only=True) "
        f"cannot read back{hint}; training state may hold only tensors, Python scalars, strings, "
        "lists, tuples, sets and dicts"
    )


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable. Not every platform/file system allows opening a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointManager:
    """Numbered training checkpoints in one folder: ``save(state, step)`` / ``load_latest()``.

    ``keep_last``: how many of the newest checkpoints to keep (older ones are deleted after each
    successful save). ``is_writer``: only the writer (rank 0) saves and deletes; every rank may
    read. In a distributed run let rank 0 pick the step (``load_latest``) and broadcast it, then
    load that step everywhere with :meth:`load`, so all ranks resume from the same file even if
    one of them hit a transient read error.
    """

    def __init__(self, directory: Union[str, Path], keep_last: int = 3, is_writer: bool = True):
        if int(keep_last) < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.dir = Path(directory)
        self.keep_last = int(keep_last)
        self.is_writer = bool(is_writer)

    def path_for(self, step: int) -> Path:
        return self.dir / f"step-{int(step):08d}.pt"

    def steps(self) -> list[int]:
        """Steps with a checkpoint file, oldest first (whether readable or not)."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_file():
                found.append(int(m.group(1)))
        return sorted(found)

    def latest_step(self) -> Optional[int]:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, state: dict, step: int) -> Optional[Path]:
        """Write ``state`` as the checkpoint of ``step`` atomically; returns its path (``None`` if not the writer)."""
        if not self.is_writer:
            return None
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        check_weights_only(state)
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=_TMP_PREFIX, suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, "step": step, "state": state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(self.dir)
        self._prune()
        return final

    def _prune(self) -> None:
        for s in self.steps()[: -self.keep_last]:
            try:
                self.path_for(s).unlink()
            except FileNotFoundError:
                pass
        # Temporary files can only be left by a save that crashed: the writer saves one at a time.
        for p in self.dir.glob(_TMP_PREFIX + "*"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def load(self, step: int, map_location: Any = "cpu") -> dict:
        """The state saved at ``step`` (raises if missing or unreadable)."""

        path = self.path_for(step)
        obj = safe_torch_load(path, "training checkpoint")  # one line for a corrupt or unsafe file
        if map_location not in (None, "cpu"):
            obj = _to_device(obj, map_location)
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or "state" not in obj:
            raise ValueError(f"{path} is not an openradio training checkpoint (format {FORMAT})")
        if int(obj.get("step", step)) != int(step):
            raise ValueError(f"{path} holds step {obj.get('step')}, not {step}: the file was renamed or mixed up")
        return obj["state"]

    def load_latest(self, map_location: Any = "cpu") -> Optional[tuple[dict, int]]:
        """``(state, step)`` of the newest readable checkpoint, or ``None`` when there is none.

        Unreadable files are skipped with a warning naming them; if every file is unreadable
        this raises rather than letting a run silently start from scratch.
        """
        steps = self.steps()
        if not steps:
            return None
        failures = []
        for step in reversed(steps):
            path = self.path_for(step)
            try:
                return self.load(step, map_location=map_location), step
            except Exception as e:  # truncated zip, bad pickle, I/O error, foreign file: all mean "skip it"
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                failures.append(f"{path.name}: {reason}")
                warnings.warn(
                    f"skipping unreadable checkpoint {path} ({reason}); trying the previous one", stacklevel=2
                )
        raise RuntimeError(
            f"none of the {len(steps)} checkpoints in {self.dir} can be read ("
            + "; ".join(failures)
            + "); move them away to start the run afresh"
        )


def _to_device(obj: Any, device: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


# -- RNG state -------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """The RNG states of Python ``random``, numpy's global RNG, torch CPU and CUDA, as plain types.

    ``{'python': {'version': int, 'state': list[int], 'gauss_next': float | None},
    'numpy': {'bit_generator': str, 'keys': int64 tensor, 'pos': int, 'has_gauss': int,
    'cached_gaussian': float}, 'torch': uint8 tensor, 'cuda': list[uint8 tensor] | None}``.
    CUDA states are captured only when CUDA is already initialised (capturing would otherwise
    start it up).
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [t.clone() for t in torch.cuda.get_rng_state_all()]
    return {
        "python": {"version": int(version), "state": [int(v) for v in internal], "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
    }


def restore_rng_state(state: dict) -> None:
    """Restore what :func:`capture_rng_state` returned (missing parts are left as they are)."""
    if state.get("python") is not None:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))
    if state.get("numpy") is not None:
        n = state["numpy"]
        keys = n["keys"].cpu().numpy() if isinstance(n["keys"], torch.Tensor) else np.asarray(n["keys"])
        np.random.set_state(
            (
                n["bit_generator"],
                keys.astype(np.uint32),
                int(n["pos"]),
                int(n["has_gauss"]),
                float(n["cached_gaussian"]),
            )
        )
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            warnings.warn(
                "the checkpoint holds CUDA RNG states but CUDA is not available here; they are ignored", stacklevel=2
            )
        else:
            n = torch.cuda.device_count()
            if len(cuda) != n:
                warnings.warn(
                    f"the checkpoint holds {len(cuda)} CUDA RNG states for {n} visible devices; "
                    f"restoring the first {min(n, len(cuda))}",
                    stacklevel=2,
                )
            for i in range(min(n, len(cuda))):
                torch.cuda.set_rng_state(cuda[i].cpu().to(torch.uint8), device=i)
