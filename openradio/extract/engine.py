"""The local engine: one process (or one torchrun rank) over its share of the parts.

Rows are cut into parts of ``part_size`` in their global order; rank r of W takes parts
r, r + W, ... and skips those already committed. A DataLoader decodes and resizes in ``workers``
processes; its batches never cross a part, so a part's batches, and therefore its bits, are the
same in every run, resumed or not, on any rank. A part is written when its last batch is done
(memory holds one part at most), then committed in the manifest.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from openradio.extract import manifest
from openradio.extract.hooks import kill_point
from openradio.extract.mapper import DTYPES, Mapper, Resize
from openradio.extract.sources import Row, Skip, VideoFrames, list_rows, read_row
from openradio.extract.writers import Store, write_part


class ExtractError(RuntimeError):
    """A run that cannot start or cannot write: one line that says what to do."""


@dataclass
class Options:
    """Everything but the sources, the model and the output folder (see ``openradio extract --help``)."""
    adaptors: Sequence[str] = ()
    resolution: int | None = None
    square: bool = False
    vitdet_window: int | None = None
    batch_size: int = 32
    device: str | None = None
    dtype: str | None = None  # float32 / bfloat16 / float16; default bf16 on CUDA, float32 elsewhere
    workers: int = 2
    part_size: int | None = None  # default: 10000 rows, 256 with --features full
    features: str = "none"
    features_dtype: str = "float16"
    fps: float = 1.0
    layout: str = "openradio"
    min_size: int = 16
    overwrite: bool = False
    compile: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)


class RowDataset(Dataset):
    """Decode + resize one row, in a worker. Returns (index, tensor or None, width, height, status, seconds)."""

    def __init__(self, rows: Sequence[Row], resize: Resize, min_size: int):
        self.rows, self.resize, self.min_size = rows, resize, min_size
        self.videos = None

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i: int):
        t0 = time.perf_counter()
        if self.videos is None:
            self.videos = VideoFrames()
        try:
            img, w, h = read_row(self.rows[i], self.min_size, self.videos)
            x = self.resize(img)
            return i, x, w, h, "ok", time.perf_counter() - t0
        except Skip as s:
            return i, None, None, None, s.status, time.perf_counter() - t0


def _collate(items):
    return items


def model_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode() + str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def rows_digest(rows: Sequence[Row]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r.key}\0{r.source}\n".encode())
    return "sha256:" + h.hexdigest()


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run_local(sources: Sequence[str], model: torch.nn.Module, out: str, opts: Options,
              version: str | None = None, log: Callable[[str], None] = print) -> dict:
    rank, world = dist_info()
    store = Store(out)
    try:
        store.check_writable()
    except OSError as e:
        raise ExtractError(f"cannot write to {out}: {e.strerror or e}") from None
    rows = list_rows(sources, fps=opts.fps)
    device = next(model.parameters()).device
    dtype_name = opts.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if dtype_name not in DTYPES:
        raise ExtractError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype_name}")
    if opts.features_dtype not in ("float16", "float32"):
        raise ExtractError(f"--features-dtype must be float16 or float32, got {opts.features_dtype}")
    mapper = Mapper(model, opts.adaptors, opts.features, DTYPES[opts.features_dtype], DTYPES[dtype_name],
                    opts.resolution, opts.square, batch_size=opts.batch_size)
    part_size = opts.part_size or (256 if mapper.mode == "full" else 10000)
    if part_size < 1 or opts.batch_size < 1:
        raise ExtractError("--part-size and --batch-size must be at least 1")
    if opts.compile:
        mapper.model = torch.compile(mapper.model)
    dims = mapper.dims()
    num_parts = max(1, math.ceil(len(rows) / part_size))
    header = {
        "format": manifest.FORMAT, "layout": opts.layout,
        "model": {"version": version, "digest": model_digest(model)},
        "options": {"adaptors": list(opts.adaptors), "resolution": mapper.resolution, "square": opts.square,
                    "vitdet_window": opts.vitdet_window, "batch_size": opts.batch_size, "dtype": dtype_name,
                    "device": device.type, "features": opts.features, "features_dtype": opts.features_dtype,
                    "fps": opts.fps, "min_size": opts.min_size},
        "sources": [str(s) for s in sources], "rows": len(rows), "rows_digest": rows_digest(rows),
        "part_size": part_size, "num_parts": num_parts, "columns": dims,
    }
    existing = manifest.read(store)
    if existing is not None and opts.overwrite and rank == 0:
        for d in ("embeddings", "features", "img_emb", "metadata", "manifest.d"):
            store.remove_tree(d)
        existing = None
    if existing is not None:
        try:
            manifest.check_same(existing, header, out)
        except manifest.ManifestMismatch as e:
            raise ExtractError(str(e)) from None
    else:
        manifest.write(store, header)
    done = manifest.entries(store)
    todo = [k for k in range(rank, num_parts, world) if f"{k:05d}" not in done]
    if done and todo and rank == 0:
        log(f"resuming: {len(done)} of {num_parts} part(s) already complete")

    # batches never cross a part: (part, [row indices])
    batches = [list(range(s, min(s + opts.batch_size, (k + 1) * part_size, len(rows))))
               for k in todo for s in range(k * part_size, min((k + 1) * part_size, len(rows)), opts.batch_size)]
    dataset = RowDataset(rows, mapper.resize, opts.min_size)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=opts.workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda", prefetch_factor=2 if opts.workers else None)
    total = sum(len(b) for b in batches)
    bar = tqdm(total=total, desc=f"extract{f' rank {rank}' if world > 1 else ''}", unit="image",
               disable=not opts.progress, smoothing=0.1)
    t_start = time.perf_counter()
    current, acc = None, []
    secs = {"read": 0.0, "inference": 0.0, "write": 0.0}
    wait0 = time.perf_counter()

    def finish(k: int) -> None:
        acc.sort(key=lambda r: r["index"])
        files, w = write_part(store, k, acc, dims, opts.layout, features=mapper.mode != "none")
        secs["write"] += w
        skipped: dict[str, int] = {}
        for r in acc:
            if r["status"] != "ok":
                reason = r["status"].split(":", 1)[0]
                skipped[reason] = skipped.get(reason, 0) + 1
        entry = {"rows": len(acc), "ok": len(acc) - sum(skipped.values()), "skipped": skipped, "files": files,
                 "rank": rank, "seconds": {k2: round(v, 4) for k2, v in secs.items()}}
        kill_point("commit")  # the part's files are complete, its manifest entry not yet written
        manifest.commit_part(store, k, entry)
        manifest.write(store, header)
        for k2 in secs:
            secs[k2] = 0.0

    try:
        for items in loader:
            secs["read"] += time.perf_counter() - wait0
            k = items[0][0] // part_size
            if current is not None and k != current:
                finish(current)
                acc = []
            current = k
            ok = [it for it in items if it[1] is not None]
            t0 = time.perf_counter()
            cols = mapper([it[1] for it in ok]) if ok else {}
            if device.type == "cuda":
                torch.cuda.synchronize()
            secs["inference"] += time.perf_counter() - t0
            kill_point("batch")
            j = {it[0]: n for n, it in enumerate(ok)}
            for i, x, w, h, status, _ in items:
                r = {"index": i, "key": rows[i].key, "source": rows[i].source, "width": w, "height": h,
                     "status": status, "input_height": None, "input_width": None}
                if status == "ok":
                    n = j[i]
                    r["input_height"], r["input_width"] = int(x.shape[-2]), int(x.shape[-1])
                    for c in dims:
                        r[c] = cols[c][n]
                    if "features" in cols:
                        r["features"] = cols["features"][n]
                acc.append(r)
            bar.update(len(items))
            wait0 = time.perf_counter()
        if current is not None:
            finish(current)
    except OSError as e:
        raise ExtractError(f"cannot write to {out}: {e.strerror or e} (nothing half-written is left; "
                           "free space or fix permissions and rerun the same command to resume)") from None
    finally:
        bar.close()
    elapsed = time.perf_counter() - t_start
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if rank != 0:
        return {}
    t = manifest.totals(manifest.entries(store))
    skipped = t["rows"] - t["ok"]
    why = f" ({', '.join(f'{n} {r}' for r, n in t['skipped'].items())})" if skipped else ""
    rate = total / elapsed if elapsed > 0 else 0.0
    end_line = f"{t['ok']} ok, {skipped} skipped{why}, {rate:.1f} images/s, {elapsed:.1f} s"
    doc = manifest.write(store, header, {"last_run": {"rows": total, "seconds": round(elapsed, 3),
                                                      "images_per_s": round(rate, 3), "world_size": world,
                                                      "end_line": end_line}})
    if not doc["complete"]:
        raise ExtractError(f"{num_parts - len(doc['parts'])} part(s) are not complete (another rank still "
                           "running or stopped): rerun the same command to finish them")
    return doc
