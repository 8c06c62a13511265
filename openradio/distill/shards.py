"""Webdataset tar shards: writing them from an image folder, and reading them split across ranks and workers.

Layout written by :func:`write_shards` (``openradio data make-shards``)::

    OUT/shard-000000.tar     000000000.jpg  000000000.path.txt  000000001.png ...
    OUT/shard-000001.tar     ...
    OUT/index.json           {"format": "openradio-shards/1", "total": N,
                              "shards": [{"name": "shard-000000.tar", "count": 1000}, ...]}

Images are stored as their original encoded bytes under their extension (``jpg``, ``png``...),
with the source path as ``path.txt``. The index gives exact per-shard counts, so a trainer can
know how many samples each rank sees per epoch without reading the tars.

Reading (:class:`ShardDataset`):

* Split: each epoch the shard list is permuted (seeded from ``(seed, epoch)``, identical on
  every rank), rank ``r`` takes shards ``r, r + world_size, ...`` of that order and DataLoader
  worker ``w`` takes every ``num_workers``-th of the rank's shards from ``w``. Every shard goes
  to exactly one (rank, worker), so every image is read exactly once per epoch across all ranks
  and workers. When the shard count is not a multiple of ``world_size * num_workers``, some
  (rank, worker) pairs get one shard more than others: still exactly once per epoch, but ranks
  see different numbers of samples per epoch. With ``repeat=True`` (what training uses) the
  stream is endless and each worker moves to its next epoch when it has finished its shards, so
  ranks never run dry and nothing waits; a trainer should count steps, not epochs. Fewer shards
  than ``world_size`` is an error; fewer than ``world_size * num_workers`` leaves some workers idle
  (a warning): make more, smaller shards (``--max-count``).
* Order within a shard: a deterministic shuffle buffer (``shuffle_buffer`` samples of raw
  bytes, seeded from ``(seed, epoch, shard)``); ``write_shards`` also shuffles images across
  shards by default.
* Augmentation is seeded per sample from ``(seed, epoch, shard, offset)``: the same images and
  crops whatever the number of workers and across resumes.
* Corrupt samples (undecodable bytes, no image member) are skipped and counted
  (``batch['skipped']``); an unreadable tar or URL is skipped with a warning.
* Resume granularity: per-sample. :class:`ShardLoader` records, for each worker, the epoch, the
  position in that worker's shard list and the number of samples of the current shard already
  delivered to the training loop; on resume each worker re-reads (without decoding) the skipped
  part of its current shard and continues with exactly the next sample. This holds when the
  resumed run has the same shards, seed, ``world_size``, rank and ``num_workers``; otherwise the
  loader warns and restarts the interrupted epoch from its beginning (images are seen again,
  none are missed).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import webdataset as wds
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from openradio.distill.sampling import apply_transform, sample_seed
from openradio.inputs.imageio import ImageLoadError, image_to_tensor, list_images

__all__ = [
    "SHARD_PATTERN",
    "INDEX_NAME",
    "write_shards",
    "read_shard_index",
    "resolve_shards",
    "decode_image_bytes",
    "ShardDataset",
    "ShardLoader",
    "collate_shard_batch",
]

logger = logging.getLogger("openradio.data")
PathLike = Union[str, Path]

SHARD_PATTERN = "shard-%06d.tar"
INDEX_NAME = "index.json"
INDEX_FORMAT = "openradio-shards/1"
# Members webdataset groups under one key that hold an image, in the order we look for them.
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "img", "image")
_SHARD_ORDER_TAG = 0x5BA2_D0_0D
_BUFFER_TAG = 0xB0FF_E2


# -- writing ---------------------------------------------------------------------------------------
def _existing_outputs(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("shard-*.tar")) + ([out_dir / INDEX_NAME] if (out_dir / INDEX_NAME).exists() else [])


def _verify_image(data: bytes) -> Optional[str]:
    try:
        decode_image_bytes(data)
    except ImageLoadError as e:
        return str(e)
    return None


def write_shards(
    source: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    max_count_per_shard: int = 1000,
    max_size: float = 1e9,
    *,
    shuffle: bool = True,
    seed: int = 0,
    verify: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Pack the images of ``source`` (a folder, recursive, or a file list) into tar shards in ``out_dir``.

    A shard closes after ``max_count_per_shard`` images or ``max_size`` bytes, whichever comes
    first. ``shuffle`` writes images in a seeded random order, so each shard is a random sample of
    the data (readers only shuffle within a small buffer). ``verify`` decodes every image and
    leaves out the unreadable ones (slower; without it they are written and skipped at read time).
    Unreadable files (I/O errors) are always left out, with a warning. Writes ``index.json`` with
    the shard names and counts. Returns the shard paths.
    """
    if int(max_count_per_shard) < 1:
        raise ValueError(f"max_count_per_shard must be >= 1, got {max_count_per_shard}")
    if not max_size > 0:
        raise ValueError(f"max_size must be a positive number of bytes, got {max_size}")
    paths = list_images(source)
    src_root = Path(source) if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = _existing_outputs(out)
    if existing:
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds shards ({existing[0].name}, ...); choose an empty folder "
                "or pass overwrite=True (--overwrite) to replace them"
            )
        for p in existing:
            p.unlink()
    order = np.random.default_rng(seed).permutation(len(paths)) if shuffle else np.arange(len(paths))

    counts: dict[str, int] = {}
    left_out: list[str] = []
    written = 0
    with wds.ShardWriter(
        str(out / SHARD_PATTERN), maxcount=int(max_count_per_shard), maxsize=float(max_size), verbose=0
    ) as writer:
        for i in tqdm(order.tolist(), desc="make-shards", unit="img", disable=not progress):
            p = paths[i]
            try:
                data = p.read_bytes()
            except OSError as e:
                warnings.warn(f"leaving out {p}: {e}", stacklevel=2)
                left_out.append(str(p))
                continue
            if verify:
                reason = _verify_image(data)
                if reason is not None:
                    warnings.warn(f"leaving out {p}: {reason}", stacklevel=2)
                    left_out.append(str(p))
                    continue
            ext = p.suffix.lower().lstrip(".") or "img"
            rel = p.relative_to(src_root).as_posix() if src_root is not None else str(p)
            # Keys are running numbers: webdataset splits member names at the first dot, so
            # original file names (which may hold dots) cannot serve as keys.
            writer.write({"__key__": f"{written:09d}", ext: data, "path.txt": rel})
            counts[Path(writer.fname).name] = counts.get(Path(writer.fname).name, 0) + 1
            written += 1
    shards = sorted(out.glob("shard-*.tar"))
    for s in shards:  # ShardWriter opens its first tar eagerly; drop it if nothing went in
        if s.name not in counts:
            s.unlink()
    shards = [s for s in shards if s.name in counts]
    if not shards:
        raise ValueError(f"no readable images in {source}; nothing was written")
    index = {
        "format": INDEX_FORMAT,
        "total": written,
        "shards": [{"name": s.name, "count": counts[s.name]} for s in shards],
        "source": str(source) if isinstance(source, (str, os.PathLike)) else None,
        "left_out": left_out,
    }
    tmp = out / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX_NAME)
    return shards


def read_shard_index(path: PathLike) -> dict:
    """The ``index.json`` of a shard folder (``path`` is the folder or the JSON file)."""
    p = Path(path)
    if p.is_dir():
        p = p / INDEX_NAME
    try:
        index = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"shard index not found: {p} (write shards with `openradio data make-shards`)"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"shard index {p} is not valid JSON: {e}") from None
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise ValueError(f"{p} is not a shard index (expected {{'shards': [{{'name', 'count'}}, ...]}})")
    return index


def _is_url(s: str) -> bool:
    return "://" in s or s.startswith("pipe:")


def resolve_shards(spec: Union[PathLike, Sequence[PathLike]]) -> tuple[list[str], Optional[list[int]]]:
    """Shard URLs/paths and, when an index gives them, their sample counts.

    ``spec``: a make-shards folder (its ``index.json``, else its ``*.tar`` files), an
    ``index.json`` (local or URL; names relative to it), a ``.tar`` path or URL, a brace pattern
    (``"shards/shard-{000000..000009}.tar"``, ``"::"`` joins several), or a list of any of these.
    """
    if not isinstance(spec, (str, os.PathLike)):
        urls: list[str] = []
        counts: Optional[list[int]] = []
        for item in spec:
            u, c = resolve_shards(item)
            urls += u
            counts = counts + c if (counts is not None and c is not None) else None
        if not urls:
            raise ValueError("the shard list is empty")
        return urls, counts
    s = str(spec)
    if not s:
        raise ValueError("no shards given")
    if s.endswith(".json"):
        if _is_url(s):
            with gopen(s) as f:
                index = json.loads(f.read())
            base = s.rsplit("/", 1)[0]
            return [f"{base}/{e['name']}" for e in index["shards"]], [int(e["count"]) for e in index["shards"]]
        index = read_shard_index(s)
        base = Path(s).parent
        return [str(base / e["name"]) for e in index["shards"]], [int(e["count"]) for e in index["shards"]]
    if _is_url(s):
        return expand_urls(s), None
    p = Path(s)
    if p.is_dir():
        if (p / INDEX_NAME).is_file():
            return resolve_shards(str(p / INDEX_NAME))
        tars = sorted(p.glob("*.tar"))
        if not tars:
            raise ValueError(f"{p} holds no .tar shards (make them with `openradio data make-shards`)")
        return [str(t) for t in tars], None
    urls = expand_urls(s)
    missing = [u for u in urls if not _is_url(u) and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shard not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return urls, None


def decode_image_bytes(data: bytes, name: str = "image") -> Tensor:
    """Encoded image bytes as a float ``(3, H, W)`` RGB tensor in [0, 1]; :class:`ImageLoadError` if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return image_to_tensor(im)
    except UnidentifiedImageError as e:
        raise ImageLoadError(f"cannot decode {name}: not an image format PIL recognises") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(f"cannot decode {name}: {reason}") from e


# -- reading ---------------------------------------------------------------------------------------
def _warn_and_continue(exn: Exception) -> bool:
    warnings.warn(f"skipping unreadable shard data: {exn!r}", stacklevel=2)
    return True


class ShardDataset(IterableDataset):
    """Images from webdataset tar shards, split across ranks and DataLoader workers (see the module doc).

    Yields ``{'image': tensor, 'key': str, 'path': str (source path from make-shards, else ''),
    'shard': int, 'offset': int, '_pos': (worker, epoch, shard_pos, offset)}`` per sample,
    or ``{'image': None, '_pos': ...}`` for a corrupt one;
    :func:`collate_shard_batch` (used by :class:`ShardLoader`) drops the latter and counts them.

    One ``iter()`` is one epoch (:attr:`epoch`) unless ``repeat=True``, which continues with the
    following epochs forever. Use it through :class:`ShardLoader` (``make_loader``) to get a
    resumable position.
    """

    def __init__(
        self,
        shards: Union[PathLike, Sequence[PathLike]],
        transform: Optional[Callable] = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        *,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        repeat: bool = False,
        epoch: int = 0,
    ):
        self.urls, self.counts = resolve_shards(shards)
        rank, world_size = int(rank), int(world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, world_size={world_size}"
            )
        if len(self.urls) < world_size:
            raise ValueError(
                f"{len(self.urls)} shards cannot be split across {world_size} ranks; write more, "
                "smaller shards (openradio data make-shards --max-count N)"
            )
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.transform = transform
        self.rank, self.world_size, self.seed = rank, world_size, int(seed)
        self.shuffle, self.shuffle_buffer, self.repeat = bool(shuffle), int(shuffle_buffer), bool(repeat)
        self.epoch = int(epoch)
        # Where each worker starts: set by ShardLoader before it starts the workers.
        self._resume: Optional[dict] = None

    @property
    def num_shards(self) -> int:
        return len(self.urls)

    @property
    def num_samples(self) -> Optional[int]:
        """Samples in all shards (``None`` without an index)."""
        return sum(self.counts) if self.counts is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def with_transform(self, transform: Optional[Callable]) -> "ShardDataset":
        """The same shards and split with another transform (e.g. another partition's crop size)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.transform, other._resume = transform, None
        return other

    def shard_order(self, epoch: int) -> list[int]:
        """The epoch's order of all shards (the same on every rank)."""
        if not self.shuffle:
            return list(range(self.num_shards))
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, _SHARD_ORDER_TAG))
        return torch.randperm(self.num_shards, generator=g).tolist()

    def rank_shards(self, epoch: int, rank: Optional[int] = None) -> list[int]:
        """Indices (into :attr:`urls`) of the shards ``rank`` (default: this rank) reads in ``epoch``."""
        r = self.rank if rank is None else int(rank)
        return self.shard_order(epoch)[r :: self.world_size]

    def worker_shards(self, epoch: int, worker: int, num_workers: int) -> list[int]:
        """The shards DataLoader worker ``worker`` of ``num_workers`` on this rank reads in ``epoch``."""
        return self.rank_shards(epoch)[worker::num_workers]

    def epoch_count(self, epoch: int, rank: Optional[int] = None) -> Optional[int]:
        """Samples ``rank`` reads in ``epoch`` (``None`` without an index)."""
        if self.counts is None:
            return None
        return sum(self.counts[i] for i in self.rank_shards(epoch, rank))

    def _raw_samples(self, shard: int, epoch: int) -> Iterator[dict]:
        """Undecoded samples of one shard in this epoch's (deterministic) order."""
        it = tarfile_samples([{"url": self.urls[shard]}], handler=_warn_and_continue)
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from it
            return
        rng = random.Random(sample_seed(self.seed, epoch, shard, _BUFFER_TAG))
        buf: list = []
        for sample in it:
            buf.append(sample)
            if len(buf) >= self.shuffle_buffer:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        while buf:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()

    def _decode(self, raw: dict, shard: int, epoch: int, offset: int) -> Optional[dict]:
        key = raw.get("__key__", "?")
        name = f"{key} in {raw.get('__url__', self.urls[shard])}"
        data = next((raw[k] for k in IMAGE_KEYS if k in raw), None)
        if data is None:
            logger.warning("skipping sample %s: no image member (looked for %s)", name, ", ".join(IMAGE_KEYS))
            return None
        try:
            img = decode_image_bytes(data, name)
        except ImageLoadError as e:
            logger.warning("skipping sample: %s", e)
            return None
        img = apply_transform(self.transform, img, sample_seed(self.seed, epoch, shard, offset))
        path = raw.get("path.txt")
        path = path.decode("utf-8", "replace") if isinstance(path, bytes) else ""
        return {"image": img, "key": str(key), "path": path, "shard": shard, "offset": offset}

    def _start(self, worker: int, num_workers: int) -> tuple[int, int, int]:
        r = self._resume
        if r is None:
            return self.epoch, 0, 0
        workers = r.get("workers")
        if workers is not None and worker < len(workers) and workers[worker] is not None:
            e, j, k = workers[worker]
            return int(e), int(j), int(k)
        return int(r["epoch"]), 0, 0

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader asks its workers for batches in turn, starting with worker 0. A resumed
        # loader shifts the roles so that the first batch comes from the worker whose turn it was.
        phase = int(self._resume.get("phase", 0)) if self._resume is not None else 0
        worker = (worker + phase) % num_workers
        epoch, start_shard, start_offset = self._start(worker, num_workers)
        while True:
            assigned = self.worker_shards(epoch, worker, num_workers)
            if not assigned:
                return  # more (rank, worker) slots than shards: this worker has nothing to read
            read_any = False
            for j in range(start_shard, len(assigned)):
                shard = assigned[j]
                for k, raw in enumerate(self._raw_samples(shard, epoch)):
                    read_any = True
                    if k < start_offset:
                        continue  # already delivered before the resume: skipped without decoding
                    item = self._decode(raw, shard, epoch, k)
                    pos = (worker, epoch, j, k)
                    yield {"image": None, "_pos": pos} if item is None else {**item, "_pos": pos}
                start_offset = 0
            start_shard = 0
            if not self.repeat:
                return
            if not read_any:
                warnings.warn(
                    f"worker {worker} of rank {self.rank} read nothing from its shards in epoch {epoch}; "
                    "stopping it (are the shards readable?)",
                    stacklevel=2,
                )
                return
            epoch += 1


def collate_shard_batch(items: Sequence[dict]) -> dict:
    """Stack a shard batch; corrupt samples are dropped and counted in ``batch['skipped']``.

    ``batch['position']`` is ``(worker, epoch, shard_pos, offset)`` of the batch's last sample
    (delivered or skipped), which :class:`ShardLoader` turns into a resume position.
    """
    good = [it for it in items if it["image"] is not None]
    out: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in good]) if good else torch.empty(0, 3, 0, 0),
        "key": [it["key"] for it in good],
        "path": [it["path"] for it in good],
        "shard": torch.tensor([it["shard"] for it in good], dtype=torch.long),
        "offset": torch.tensor([it["offset"] for it in good], dtype=torch.long),
        "skipped": len(items) - len(good),
        "position": tuple(int(v) for v in items[-1]["_pos"]),
    }
    return out


class ShardLoader:
    """Batches from a :class:`ShardDataset` with a per-sample resumable position.

    Iterating yields the batches of ``collate_shard_batch`` (``'position'`` removed). Without
    ``repeat`` one iteration is one epoch, and a complete iteration moves :attr:`epoch` on; an
    interrupted one resumes where the training loop stopped when iterated again. Worker processes
    start anew at each ``iter()`` so they always see the current position.

    ``state_dict()``: ``{'epoch': int, 'workers': [[epoch, shard_pos, offset] | None, ...],
    'next_worker': int, 'num_workers': int, 'rank': int, 'world_size': int, 'seed': int, 'num_shards': int,
    'shuffle': bool, 'shuffle_buffer': int, 'skipped': int}``. ``workers[w]`` says worker ``w``
    has delivered the first ``offset`` samples of the ``shard_pos``-th shard of its list in
    ``epoch`` (and all shards before it); ``None``: nothing delivered yet, start at ``epoch``.
    ``next_worker`` is whose turn it is: a resumed loader continues the same interleaving of the
    workers' batches, so with ``repeat=True`` the batch sequence is exactly the uninterrupted
    one. (Without ``repeat``, when workers run out at different times, each worker's own sequence
    and the epoch's set of samples are exact; the interleaving after a resume may differ.)
    """

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        num_workers: int = 0,
        drop_last: bool = False,
        pin_memory: bool = False,
        **dataloader_kwargs: Any,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.num_workers = int(num_workers)
        slots = max(1, self.num_workers)
        per_rank = len(dataset.rank_shards(dataset.epoch))
        if per_rank < slots:
            warnings.warn(
                f"rank {dataset.rank} has {per_rank} shards for {slots} workers: {slots - per_rank} "
                "worker(s) stay idle; write more, smaller shards or use fewer workers",
                stacklevel=2,
            )
        self.epoch = dataset.epoch
        self.workers: list[Optional[list[int]]] = [None] * slots
        self.next_worker = 0  # whose batch comes next (round-robin)
        self.skipped = 0
        # own generator: starting an iterator must not draw from the global (checkpointed) RNG
        dataloader_kwargs.setdefault("generator", torch.Generator().manual_seed(int(dataset.seed)))
        self._loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_shard_batch,
            drop_last=drop_last,
            pin_memory=pin_memory,
            **dataloader_kwargs,
        )

    def __iter__(self) -> Iterator[dict]:
        self.dataset._resume = {
            "epoch": self.epoch,
            "workers": [list(w) if w else None for w in self.workers],
            "phase": self.next_worker,
        }
        for batch in self._loader:
            w, e, j, k = batch.pop("position")
            self.workers[w] = [e, j, k + 1]
            self.next_worker = (w + 1) % len(self.workers)
            self.skipped += int(batch["skipped"])
            yield batch
        if not self.dataset.repeat:  # a complete epoch
            self.epoch += 1
            self.workers = [None] * len(self.workers)
            self.next_worker = 0

    @property
    def current_epoch(self) -> int:
        """The oldest epoch a worker that has delivered batches is still in (informational)."""
        known = [w[0] for w in self.workers if w is not None]
        return min(known) if (self.dataset.repeat and known) else self.epoch

    def _signature(self) -> dict:
        d = self.dataset
        return {
            "num_workers": self.num_workers,
            "rank": d.rank,
            "world_size": d.world_size,
            "seed": d.seed,
            "num_shards": d.num_shards,
            "shuffle": d.shuffle,
            "shuffle_buffer": d.shuffle_buffer,
        }

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "workers": [list(w) if w else None for w in self.workers],
            "next_worker": self.next_worker,
            **self._signature(),
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        if "epoch" not in state or "workers" not in state:
            raise ValueError("shard loader state lacks 'epoch'/'workers'; expected a ShardLoader.state_dict()")
        sig = self._signature()
        changed = {k: (state.get(k), v) for k, v in sig.items() if k in state and state[k] != v}
        self.skipped = int(state.get("skipped", 0))
        workers = state["workers"]
        if changed or len(workers) != len(self.workers):
            restart = min([int(state["epoch"])] + [int(w[0]) for w in workers if w is not None])
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()) or "worker count"
            warnings.warn(
                f"shard position saved under a different setup ({what}): restarting epoch {restart} from its beginning",
                stacklevel=2,
            )
            self.epoch, self.workers, self.next_worker = restart, [None] * len(self.workers), 0
            return
        self.epoch = int(state["epoch"])
        self.next_worker = int(state.get("next_worker", 0)) % len(self.workers)
        self.workers = [list(map(int, w)) if w is not None else None for w in workers]
