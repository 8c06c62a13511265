"""Training images: datasets, augmentation, a deterministic resumable sampler, loaders.

The pieces, and how they fit:

* :func:`build_dataset` turns the config's ``data.path`` into a dataset: an image folder
  (recursive) or a file list becomes an :class:`ImageListDataset`; tar shards (a folder made by
  ``openradio data make-shards``, an ``index.json``, ``.tar`` files, a brace pattern or URLs)
  become a :class:`openradio.distill.shards.ShardDataset`.
* :func:`~openradio.distill.transforms.make_train_transform` (in :mod:`openradio.distill.transforms`)
  is the training augmentation (random resized crop + horizontal
  flip on float ``[0, 1]`` tensors, through ``torchvision.transforms.v2.functional``). Each
  partition asks for its own crop size: build one dataset per partition with
  :meth:`ImageListDataset.with_transform` (the file list is shared, not copied).
* :class:`~openradio.distill.transforms.ResizeCenterCrop` is the deterministic alternative
  (``data.augment: false``): shorter
  side resized to the partition's size, centre crop, no flip; a function of the image alone, which
  the teacher-feature cache (:mod:`openradio.distill.teacher_cache`) requires.
* :class:`ResumableSampler` gives each rank a disjoint slice of one global permutation per epoch
  (as ``DistributedSampler``) and remembers how many samples the training loop *consumed*, so a
  resumed run continues with exactly the next samples.
* Determinism: the sampler yields :class:`SampleKey` ``(index, epoch)`` and the dataset seeds a
  fresh ``torch.Generator`` from ``(dataset seed, epoch, index)`` for that sample's crop and flip.
  The stream of batches therefore depends on nothing but the seeds: not on the number of
  DataLoader workers, not on which process loads a sample, not on whether the run was resumed.
* Corrupt or missing images never stop a run: the dataset returns ``None`` for them and
  :func:`collate_skip_none` drops them, recording the count in ``batch['skipped']``.
* :class:`BatchStream` is an endless, resumable stream of batches over either kind of dataset,
  which is what a step-based trainer wants (``next(stream)``, ``stream.state_dict()``).

Consumed-position accounting (why the sampler does not count what it yields): a DataLoader
prefetches, so the sampler's iterator runs ahead of the training loop. The sampler's position is
advanced by the consumer (:meth:`ResumableSampler.advance`, done for you by :class:`BatchStream`)
after it receives a batch; ``state_dict()`` then describes exactly what the loop has used.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, default_collate

from openradio.distill.sampling import apply_transform, sample_seed
from openradio.distill.shards import ShardDataset, ShardLoader
from openradio.inputs.imageio import ImageLoadError, list_images, load_image

__all__ = [
    "SampleKey",
    "ImageListDataset",
    "collate_skip_none",
    "ResumableSampler",
    "make_loader",
    "build_dataset",
    "BatchStream",
]

logger = logging.getLogger("openradio.data")
PathLike = Union[str, Path]


class SampleKey(NamedTuple):
    """What :class:`ResumableSampler` yields: the item index and the epoch it is drawn in."""

    index: int
    epoch: int


# -- datasets --------------------------------------------------------------------------------------
class ImageListDataset(Dataset):
    """Images from a folder (recursive), a file list, or a sequence of paths.

    ``dataset[key]`` takes an ``int`` or a :class:`SampleKey` ``(index, epoch)`` and returns
    ``{'image': float (3, S, S) tensor in [0, 1], 'index': int, 'key': str}`` (``key``: the file's
    path relative to the folder, or as listed; what a teacher-feature cache is keyed by), or ``None`` when the file is
    corrupt or missing (logged, and counted in :attr:`skipped` of the process that loaded it;
    the batch-level count is ``batch['skipped']`` from :func:`collate_skip_none`).

    The sample's crop/flip is seeded from ``(seed, epoch, index)``; a plain ``int`` key uses
    :attr:`epoch` (settable with :meth:`set_epoch`). With ``transform=None`` images keep their size.
    """

    def __init__(
        self, source: Union[PathLike, Sequence[PathLike]], transform: Optional[Callable] = None, seed: int = 0
    ):
        paths = list_images(source)
        # One numpy bytes array instead of a list of Path objects: DataLoader workers are forked,
        # and reading millions of Python objects would touch (and so copy) every refcounted page.
        self._paths = np.array([os.fsencode(str(p)) for p in paths])
        self._root = str(source) if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() else None
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> Path:
        return Path(os.fsdecode(self._paths[index]))

    def sample_key(self, index: int) -> str:
        """The image's stable name: its path relative to the folder (posix), or the path as listed."""
        p = self.path(index)
        if getattr(self, "_root", None) is not None:
            try:
                return p.relative_to(self._root).as_posix()
            except ValueError:
                pass
        return str(p)

    @property
    def paths(self) -> list[Path]:
        return [self.path(i) for i in range(len(self))]

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain ``int`` keys (sampler keys carry their own)."""
        self.epoch = int(epoch)

    def with_transform(self, transform: Optional[Callable], seed: Optional[int] = None) -> "ImageListDataset":
        """A dataset over the same files with another transform (e.g. another partition's crop size)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.transform = transform
        other.skipped = 0
        if seed is not None:
            other.seed = int(seed)
        return other

    def __getitem__(self, key: Union[int, SampleKey, tuple]) -> Optional[dict]:
        if isinstance(key, tuple):
            index, epoch = int(key[0]), int(key[1])
        else:
            index, epoch = int(key), self.epoch
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        path = self.path(index)
        try:
            img = load_image(path)
        except (ImageLoadError, OSError) as e:  # OSError covers missing files and I/O errors
            self.skipped += 1
            logger.warning("skipping image %s: %s", path, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None
        img = apply_transform(self.transform, img, sample_seed(self.seed, epoch, index))
        return {"image": img, "index": index, "key": self.sample_key(index)}


def collate_skip_none(batch: Sequence[Optional[dict]]) -> dict:
    """Collate dict samples, dropping ``None`` (unreadable images); ``batch['skipped']`` is how many.

    A batch in which every image was unreadable still has ``'image'`` (shape ``(0, 3, 0, 0)``)
    and ``'index'`` (empty), so callers can test ``batch['image'].shape[0] == 0``.
    """

    items = [b for b in batch if b is not None]
    skipped = len(batch) - len(items)
    if not items:
        return {
            "image": torch.empty(0, 3, 0, 0),
            "index": torch.empty(0, dtype=torch.long),
            "key": [],
            "skipped": skipped,
        }
    out = default_collate(items)
    out["skipped"] = skipped
    return out


# -- sampling --------------------------------------------------------------------------------------
_ORDER_TAG = 0x5EED_0DE5  # separates the permutation's seed stream from the augmentation's


class ResumableSampler(Sampler):
    """Deterministic, resumable, rank-sharded sampler over ``num_items`` items.

    Each epoch draws one permutation of all items (seeded from ``(seed, epoch)``, the same on every
    rank), trims it to a multiple of ``world_size`` (``drop_last=True``) or pads it by wrapping
    around (``drop_last=False``), and gives rank ``r`` every ``world_size``-th entry from ``r``:
    ranks get disjoint slices covering the (trimmed) permutation, as with ``DistributedSampler``.
    The permutation does not depend on ``world_size``, which lets a resume on another world size
    continue from the same global position.

    Iterating yields :class:`SampleKey` ``(index, epoch)`` (plain ints with ``yield_keys=False``)
    from :attr:`position` to the end of the epoch's slice; it does not move :attr:`position`.
    The consumer calls :meth:`advance` with the number of samples each received batch used.

    ``state_dict()``: ``{'epoch': int, 'position': int, 'seed': int, 'num_items': int,
    'rank': int, 'world_size': int, 'shuffle': bool, 'drop_last': bool}`` where ``position``
    counts this rank's samples of ``epoch`` already consumed.
    """

    def __init__(
        self,
        num_items: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        yield_keys: bool = True,
    ):
        num_items, rank, world_size = int(num_items), int(rank), int(world_size)
        if num_items < 1:
            raise ValueError(f"the sampler needs at least one item, got num_items={num_items}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, world_size={world_size}"
            )
        if drop_last and num_items < world_size:
            raise ValueError(
                f"{num_items} items cannot give every one of {world_size} ranks a sample with "
                "drop_last=True; add images or use drop_last=False"
            )
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.seed, self.shuffle, self.drop_last = int(seed), bool(shuffle), bool(drop_last)
        self.yield_keys = bool(yield_keys)
        self.num_samples = num_items // world_size if drop_last else -(-num_items // world_size)
        self.total_size = self.num_samples * world_size
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Samples per epoch on this rank (a full epoch, whatever the position)."""
        return self.num_samples

    @property
    def remaining(self) -> int:
        """Samples of the current epoch this rank has not consumed yet."""
        return self.num_samples - self.position

    def global_order(self, epoch: int) -> Tensor:
        """The epoch's permutation of all items, trimmed or padded to ``total_size``."""
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, _ORDER_TAG))
            order = torch.randperm(self.num_items, generator=g)
        else:
            order = torch.arange(self.num_items)
        if self.total_size <= self.num_items:
            return order[: self.total_size]
        reps = -(-self.total_size // self.num_items)
        return order.repeat(reps)[: self.total_size]

    def epoch_indices(self, epoch: Optional[int] = None) -> list[int]:
        """This rank's item indices for ``epoch`` (default: the current one), in order."""
        order = self.global_order(self.epoch if epoch is None else int(epoch))
        return order[self.rank : self.total_size : self.world_size].tolist()

    def __iter__(self) -> Iterator[Union[SampleKey, int]]:
        epoch = self.epoch
        for idx in self.epoch_indices(epoch)[self.position :]:
            yield SampleKey(idx, epoch) if self.yield_keys else idx

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch``; the position restarts at 0 unless it is the current epoch (resume)."""
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def advance(self, n: int) -> None:
        """Record that the training loop consumed ``n`` more samples of this epoch."""
        n = int(n)
        if n < 0 or self.position + n > self.num_samples:
            raise ValueError(
                f"cannot advance by {n}: position {self.position} of {self.num_samples} samples in epoch {self.epoch}"
            )
        self.position += n

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": self.num_items,
            "rank": self.rank,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` stopped.

        The state may come from another rank of the same run (positions are equal across ranks that
        share a batch size). A different ``num_items``, ``seed`` or ``shuffle`` is another sample
        stream and raises. A different ``world_size`` is converted through the global position
        (``position * old_world_size`` items of the permutation used), rounded down, with a
        warning: at most ``world_size`` samples are seen again, none are missed.
        """
        missing = {"epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; expected a ResumableSampler.state_dict()")
        for key in ("num_items", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]!r} but this sampler has "
                    f"{getattr(self, key)!r}: the data or seed changed, so the saved position "
                    "does not apply; start a new run or restore the original data/seed"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        old_ws = int(state.get("world_size", self.world_size))
        if old_ws != self.world_size:
            position = position * old_ws // self.world_size
            warnings.warn(
                f"resuming a sampler saved with world_size={old_ws} on world_size={self.world_size}: "
                f"position converted to {position} through the global order",
                stacklevel=2,
            )
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"sampler state position {position} is outside [0, {self.num_samples}]")
        self.epoch, self.position = epoch, position


# -- loaders ---------------------------------------------------------------------------------------
def make_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Optional[ResumableSampler] = None,
    num_workers: int = 0,
    *,
    drop_last: bool = True,
    collate_fn: Optional[Callable] = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: Optional[int] = None,
    multiprocessing_context: Any = None,
):
    """A DataLoader over the remaining samples of the sampler's current epoch.

    Map-style datasets: batches of ``batch_size`` keys from ``sampler`` (a single-process
    :class:`ResumableSampler` when ``None``), collated by :func:`collate_skip_none`. Each batch
    uses ``batch_size`` sampler positions (fewer for a last partial batch when
    ``drop_last=False``); call ``sampler.advance(n)`` after receiving it and
    ``sampler.set_epoch(sampler.epoch + 1)`` when the loader is exhausted (or use
    :class:`BatchStream`, which does both). Iterating again after ``advance`` resumes mid-epoch.

    A :class:`~openradio.distill.shards.ShardDataset` gets a
    :class:`~openradio.distill.shards.ShardLoader` instead (``sampler`` must be ``None``), which
    tracks its own position.
    """

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
        if multiprocessing_context is not None:
            extra["multiprocessing_context"] = multiprocessing_context
    if isinstance(dataset, ShardDataset):
        if sampler is not None:
            raise ValueError("shard datasets are split across ranks and workers by shard; pass sampler=None")
        return ShardLoader(
            dataset,
            batch_size,
            num_workers=num_workers,
            drop_last=drop_last,
            pin_memory=pin_memory,
            **{k: v for k, v in extra.items() if k != "persistent_workers"},
        )
    if sampler is None:
        sampler = ResumableSampler(len(dataset))
    elif sampler.num_items != len(dataset):
        raise ValueError(f"the sampler covers {sampler.num_items} items but the dataset has {len(dataset)}")
    # A loader's own generator: starting an iterator draws a worker base seed, and from the global
    # generator that draw would make the training RNG depend on when iterators were (re)started,
    # so a run resumed mid-epoch would drift from the uninterrupted one. Augmentations do not
    # need it: they are seeded per sample (sample_seed).
    gen = torch.Generator().manual_seed(sampler.seed)
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, batch_size, drop_last),
        num_workers=num_workers,
        collate_fn=collate_fn or collate_skip_none,
        pin_memory=pin_memory,
        generator=gen,
        **extra,
    )


def _looks_like_shards(path: str) -> bool:
    if "://" in path or path.startswith("pipe:") or ("{" in path and ".." in path):
        return True
    p = Path(path)
    if p.suffix in (".tar", ".json"):
        return True
    if p.is_dir():
        if (p / "index.json").is_file():
            return True
        entries = [e for e in p.iterdir() if not e.name.startswith(".")]
        return bool(entries) and all(e.is_file() and e.name.endswith(".tar") for e in entries)
    return False


def build_dataset(
    path: Union[PathLike, Sequence[PathLike]],
    kind: str = "auto",
    transform: Optional[Callable] = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    **shard_kwargs: Any,
):
    """The training dataset for ``data.path``.

    ``kind``: ``folder`` (recursive image folder), ``list`` (text file of paths), ``shards``
    (webdataset tars: a make-shards folder, an ``index.json``, ``.tar`` paths, a brace pattern or
    URLs) or ``auto`` (decide from the path). Folders and lists give an :class:`ImageListDataset`
    (``rank``/``world_size`` unused: the sampler shards them); shards give a ``ShardDataset`` split
    across ranks by ``rank``/``world_size``, endless (``repeat=True``) unless ``shard_kwargs`` say
    otherwise.
    """
    kinds = ("auto", "folder", "list", "shards")
    if kind not in kinds:
        raise ValueError(f"data kind must be one of {kinds}, got {kind!r}")
    if not isinstance(path, (str, os.PathLike)):
        if kind == "shards":
            shard_kwargs.setdefault("repeat", True)
            return ShardDataset(
                [str(p) for p in path], transform=transform, rank=rank, world_size=world_size, seed=seed, **shard_kwargs
            )
        return ImageListDataset(path, transform=transform, seed=seed)
    path = str(path)
    if not path:
        raise ValueError("no training data given: set data.path to an image folder, a file list or shards")
    if kind == "auto":
        kind = "shards" if _looks_like_shards(path) else ("folder" if Path(path).is_dir() else "list")
    if kind == "shards":
        shard_kwargs.setdefault("repeat", True)
        return ShardDataset(path, transform=transform, rank=rank, world_size=world_size, seed=seed, **shard_kwargs)
    if kind == "folder" and not Path(path).is_dir():
        raise ValueError(f"data kind 'folder' but {path} is not a directory")
    if kind == "list" and not Path(path).is_file():
        raise ValueError(f"data kind 'list' but {path} is not a file (one image path per line)")
    return ImageListDataset(path, transform=transform, seed=seed)


class BatchStream:
    """An endless, resumable stream of batches for one partition on this rank.

    ``next(stream)`` returns the next non-empty batch (a dict with ``'image'`` and the dataset's
    metadata), moving through epochs by itself; :attr:`skipped` counts unreadable images since
    the run began (restored on resume). Works for map-style datasets (with a
    :class:`ResumableSampler`) and for shard datasets.

    ``state_dict()``: map-style ``{'kind': 'sampler', 'sampler': ResumableSampler.state_dict(),
    'skipped': int}``; shards ``{'kind': 'shards', 'loader': ShardLoader.state_dict(),
    'skipped': int}``. Each rank has its own state: the trainer keeps every rank's state in the
    checkpoint and gives each rank its own back.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        sampler: Optional[ResumableSampler] = None,
        num_workers: int = 0,
        **loader_kwargs: Any,
    ):

        self.dataset, self.batch_size, self.num_workers = dataset, int(batch_size), int(num_workers)
        self.is_shards = isinstance(dataset, ShardDataset)
        loader_kwargs.setdefault("drop_last", True)
        self._loader_kwargs = loader_kwargs
        if self.is_shards:
            self.sampler = None
            self.loader = make_loader(dataset, batch_size, None, num_workers, **loader_kwargs)
        else:
            self.sampler = sampler if sampler is not None else ResumableSampler(len(dataset))
            if loader_kwargs["drop_last"] and len(self.sampler) < batch_size:
                raise ValueError(
                    f"{len(self.sampler)} samples per epoch on this rank is fewer than one batch of "
                    f"{batch_size}; add images or lower the batch size"
                )
            self.loader = make_loader(dataset, batch_size, self.sampler, num_workers, **loader_kwargs)
        self.skipped = 0
        self._it: Optional[Iterator] = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch if self.sampler is not None else self.loader.current_epoch

    def __iter__(self) -> "BatchStream":
        return self

    def _epoch_done(self) -> bool:
        s = self.sampler
        return s.remaining == 0 or (self._loader_kwargs["drop_last"] and s.remaining < self.batch_size)

    def __next__(self) -> dict:
        empty_epochs = 0
        while True:
            if self._it is None:
                if not self.is_shards and self._epoch_done():
                    self.sampler.set_epoch(self.sampler.epoch + 1)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                empty_epochs += 1
                if empty_epochs > 2:
                    raise RuntimeError(
                        "the data stream produced no batch in two whole epochs; every image may be "
                        "unreadable, or there are fewer samples per rank than one batch"
                    ) from None
                continue  # the next pass starts the next epoch (see the top of the loop)
            if not self.is_shards:
                used = int(batch["image"].shape[0]) + int(batch.get("skipped", 0))
                self.sampler.advance(used)
            self.skipped += int(batch.get("skipped", 0))
            if batch["image"].shape[0] == 0:
                continue
            return batch

    def close(self) -> None:
        """Stop the loader's worker processes (the next ``next()`` restarts them at the same position)."""
        self._it = None

    def state_dict(self) -> dict:
        if self.is_shards:
            return {"kind": "shards", "loader": self.loader.state_dict(), "skipped": self.skipped}
        return {"kind": "sampler", "sampler": self.sampler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        kind = "shards" if self.is_shards else "sampler"
        if state.get("kind") != kind:
            raise ValueError(f"stream state is for {state.get('kind')!r} data but this stream reads {kind!r} data")
        self._it = None  # the next batch comes from the restored position
        if self.is_shards:
            self.loader.load_state_dict(state["loader"])
        else:
            self.sampler.load_state_dict(state["sampler"])
        self.skipped = int(state.get("skipped", 0))
