"""The local engine: one process (or one torchrun rank) over its share of the parts.

Rows are cut into parts of ``part_size`` in their global order; rank r of W takes parts
r, r + W, ... and skips those already committed. A DataLoader decodes and resizes in ``workers``
processes; its batches never cross a part, so a part's batches, and therefore its bits, are the
same in every run, resumed or not, on any rank. A part is written when its last batch is done
(memory holds one part at most), then committed in the manifest.
"""

from __future__ import annotations

import contextlib
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
from openradio.extract.mapper import DTYPES, Mapper, Resize, clip_batches
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
    upsample: str | None = None  # bilateral / bilinear, with features="full"
    clip_frames: int = 1  # >1: video frames run in clips of T (one viewport per clip)
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


def clip_ids(rows: Sequence[Row], clip_frames: int, part_size: int) -> list | None:
    """One clip id per row when ``clip_frames`` > 1: the frames of a video in runs of
    ``clip_frames`` (a clip never crosses a part), every other row a clip of its own."""
    if clip_frames == 1:
        return None
    ids, frame = [], {}
    for i, r in enumerate(rows):
        if r.kind != "video":
            ids.append(("row", i))
            continue
        n = frame.get(r.url, 0)
        frame[r.url] = n + 1
        ids.append((r.url, i // part_size, n // clip_frames))
    return ids


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class Job:
    """One rank's run: the checked output folder, the rows, the mapper, the manifest header and the
    parts still to do; :meth:`add` collects finished rows, :meth:`finish_part` writes and commits
    a part, :meth:`close` writes the final manifest. Both engines (local, Ray) drive one."""

    def __init__(
        self,
        sources: Sequence[str],
        model: torch.nn.Module,
        out: str,
        opts: Options,
        version: str | None = None,
        rank: int = 0,
        world: int = 1,
        log: Callable[[str], None] = print,
    ):
        self.opts, self.rank, self.world, self.out = opts, rank, world, out
        self.store = store = Store(out)
        try:
            store.check_writable()
        except OSError as e:
            raise ExtractError(f"cannot write to {out}: {e.strerror or e}") from None
        self.device = device = next(model.parameters()).device
        dtype_name = opts.dtype or ("bfloat16" if device.type == "cuda" else "float32")
        if dtype_name not in DTYPES:
            raise ExtractError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype_name}")
        if opts.features_dtype not in ("float16", "float32"):
            raise ExtractError(f"--features-dtype must be float16 or float32, got {opts.features_dtype}")
        try:
            mapper = Mapper(
                model,
                opts.adaptors,
                opts.features,
                DTYPES[opts.features_dtype],
                DTYPES[dtype_name],
                opts.resolution,
                opts.square,
                batch_size=opts.batch_size,
                upsample=opts.upsample,
                clip_frames=opts.clip_frames,
            )
        except ValueError as e:
            raise ExtractError(str(e)) from None
        self.mapper = mapper
        # options are checked before the sources are listed: a wrong flag fails at once
        self.rows = rows = list_rows(sources, fps=opts.fps)
        # feature maps at pixel resolution are patch_size^2 times bigger than token maps
        self.part_size = part_size = opts.part_size or (
            16 if mapper.upsample else 256 if mapper.mode == "full" else 10000
        )
        if part_size < 1 or opts.batch_size < 1:
            raise ExtractError("--part-size and --batch-size must be at least 1")
        self.dims = mapper.dims()
        if opts.compile:
            mapper.model = torch.compile(mapper.model)
        self.num_parts = num_parts = max(1, math.ceil(len(rows) / part_size))
        self.header = {
            "format": manifest.FORMAT,
            "layout": opts.layout,
            "engine": opts.extra.get("engine", "local"),
            "model": {"version": version, "digest": model_digest(model)},
            "options": {
                "adaptors": list(opts.adaptors),
                "resolution": mapper.resolution,
                "square": opts.square,
                "vitdet_window": opts.vitdet_window,
                "batch_size": opts.batch_size,
                "dtype": dtype_name,
                "device": device.type,
                "features": opts.features,
                "features_dtype": opts.features_dtype,
                "fps": opts.fps,
                "upsample": mapper.upsample,
                "clip_frames": mapper.clip_frames,
                "min_size": opts.min_size,
            },
            "sources": [str(s) for s in sources],
            "rows": len(rows),
            "rows_digest": rows_digest(rows),
            "part_size": part_size,
            "num_parts": num_parts,
            "columns": self.dims,
        }
        weights = str(next(model.parameters()).dtype).replace("torch.", "")
        if weights != "float32":  # bf16 weights (extract --dtype bfloat16 on a native-bf16 CPU) compute differently
            self.header["options"]["weights_dtype"] = weights
        if opts.overwrite and rank == 0 and store.exists("manifest.json"):  # even one that is not JSON
            for d in ("embeddings", "features", "img_emb", "metadata", "manifest.d"):
                store.remove_tree(d)
            store.remove_tree("manifest.json")
        if opts.overwrite and world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()  # the other ranks read the folder only once rank 0 has emptied it
        existing = manifest.read(store)
        if existing is not None:
            try:
                manifest.check_same(existing, self.header, out)
            except manifest.ManifestMismatch as e:
                raise ExtractError(str(e)) from None
        else:
            manifest.write(store, self.header)
        done = manifest.entries(store)
        self.todo = [k for k in range(rank, num_parts, world) if f"{k:05d}" not in done]
        if done and self.todo and rank == 0:
            log(f"resuming: {len(done)} of {num_parts} part(s) already complete")
        self.clips = clip_ids(rows, mapper.clip_frames, part_size)
        self.secs = {"read": 0.0, "inference": 0.0, "write": 0.0}
        self.acc: dict[int, list[dict]] = {}  # part -> its finished rows
        self.t_start = time.perf_counter()
        self.processed = 0

    def batches(self) -> list[list[int]]:
        """The rows still to do cut into forward batches. Batches never cross a part (so a part's
        batches, and bits, are the same in every run) nor split a clip: with ``clip_frames`` T a
        batch holds whole clips, ``batch_size // T`` of them (at least one)."""
        frames, bs = self.mapper.clip_frames, self.opts.batch_size
        return [b for k in self.todo for b in clip_batches(self.part_rows(k), self.clips, frames, bs)]

    def part_rows(self, k: int) -> range:
        return range(k * self.part_size, min((k + 1) * self.part_size, len(self.rows)))

    def row(self, i: int, status: str, width=None, height=None, x_shape=None, cols=None, n=0) -> dict:
        r = {
            "index": i,
            "key": self.rows[i].key,
            "source": self.rows[i].source,
            "width": width,
            "height": height,
            "status": status,
            "input_height": None,
            "input_width": None,
        }
        if status == "ok":
            r["input_height"], r["input_width"] = int(x_shape[-2]), int(x_shape[-1])
            for c in self.dims:
                r[c] = cols[c][n]
            if "features" in cols:
                r["features"] = cols["features"][n]
        return r

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            self.acc.setdefault(r["index"] // self.part_size, []).append(r)
        self.processed += len(rows)

    def finish_part(self, k: int) -> None:
        acc = sorted(self.acc.pop(k, []), key=lambda r: r["index"])
        files, w = write_part(self.store, k, acc, self.dims, self.opts.layout, features=self.mapper.mode != "none")
        self.secs["write"] += w
        skipped: dict[str, int] = {}
        for r in acc:
            if r["status"] != "ok":
                reason = r["status"].split(":", 1)[0]
                skipped[reason] = skipped.get(reason, 0) + 1
        entry = {
            "rows": len(acc),
            "ok": len(acc) - sum(skipped.values()),
            "skipped": skipped,
            "files": files,
            "rank": self.rank,
            "seconds": {k2: round(v, 4) for k2, v in self.secs.items()},
        }
        kill_point("commit")  # the part's files are complete, its manifest entry not yet written
        manifest.commit_part(self.store, k, entry)
        manifest.write(self.store, self.header)
        self.secs = {k2: 0.0 for k2 in self.secs}

    def close(self) -> dict:
        elapsed = time.perf_counter() - self.t_start
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if self.rank != 0:
            return {}
        t = manifest.totals(manifest.entries(self.store))
        skipped = t["rows"] - t["ok"]
        why = f" ({', '.join(f'{n} {r}' for r, n in t['skipped'].items())})" if skipped else ""
        rate = self.processed / elapsed if elapsed > 0 else 0.0
        end_line = f"{t['ok']} ok, {skipped} skipped{why}, {rate:.1f} images/s, {elapsed:.1f} s"
        doc = manifest.write(
            self.store,
            self.header,
            {
                "last_run": {
                    "rows": self.processed,
                    "seconds": round(elapsed, 3),
                    "images_per_s": round(rate, 3),
                    "world_size": self.world,
                    "end_line": end_line,
                }
            },
        )
        if not doc["complete"]:
            raise ExtractError(
                f"{self.num_parts - len(doc['parts'])} part(s) are not complete (another rank still "
                "running or stopped): rerun the same command to finish them"
            )
        return doc


@contextlib.contextmanager
def write_errors(out: str):
    """An OSError while writing becomes one line that says nothing half-written is left."""
    try:
        yield
    except OSError as e:
        raise ExtractError(
            f"cannot write to {out}: {e.strerror or e} (nothing half-written is left; "
            "free space or fix permissions and rerun the same command to resume)"
        ) from None


def run_local(
    sources: Sequence[str],
    model: torch.nn.Module,
    out: str,
    opts: Options,
    version: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    rank, world = dist_info()
    job = Job(sources, model, out, opts, version, rank, world, log)
    batches = job.batches()
    dataset = RowDataset(job.rows, job.mapper.resize, opts.min_size)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=opts.workers,
        collate_fn=_collate,
        pin_memory=job.device.type == "cuda",
        prefetch_factor=2 if opts.workers else None,
    )
    bar = tqdm(
        total=sum(len(b) for b in batches),
        desc=f"extract{f' rank {rank}' if world > 1 else ''}",
        unit="image",
        disable=not opts.progress,
        smoothing=0.1,
    )
    current = None
    wait0 = time.perf_counter()
    with write_errors(out):
        try:
            for items in loader:
                job.secs["read"] += time.perf_counter() - wait0
                k = items[0][0] // job.part_size
                if current is not None and k != current:
                    job.finish_part(current)
                current = k
                ok = [it for it in items if it[1] is not None]
                t0 = time.perf_counter()
                clips = [job.clips[it[0]] for it in ok] if job.clips else None
                cols = job.mapper([it[1] for it in ok], clips) if ok else {}
                if job.device.type == "cuda":
                    torch.cuda.synchronize()
                job.secs["inference"] += time.perf_counter() - t0
                kill_point("batch")
                j = {it[0]: n for n, it in enumerate(ok)}
                job.add(
                    [
                        job.row(i, status, w, h, x.shape if x is not None else None, cols, j.get(i, 0))
                        for i, x, w, h, status, _ in items
                    ]
                )
                bar.update(len(items))
                wait0 = time.perf_counter()
            if current is not None:
                job.finish_part(current)
        finally:
            bar.close()
    return job.close()
