"""Per-partition data streams: this rank's share of the data, one resumable stream per
(stage, partition), created when first needed and restored from the checkpoint."""

from __future__ import annotations

from openradio.distill import data as D
from openradio.distill.config import PartitionConfig, TrainConfig
from openradio.distill.partitions import ranks_of
from openradio.distill.shards import ShardDataset
from openradio.distill.transforms import make_partition_transform

__all__ = ["partition_stream", "PartitionStreams"]


def partition_stream(cfg: TrainConfig, part: PartitionConfig, group_rank: int, group_size: int, seed: int):
    """Endless, resumable batches of ``part.resolution`` crops for this rank's share of the data."""
    transform = make_partition_transform(
        part.resolution, augment=cfg.data.augment, scale=tuple(part.crop_scale), flip=cfg.data.flip
    )
    ds = D.build_dataset(
        cfg.data.path, kind=cfg.data.kind, transform=transform, seed=seed, rank=group_rank, world_size=group_size
    )
    sampler = None
    if not isinstance(ds, ShardDataset):
        sampler = D.ResumableSampler(len(ds), rank=group_rank, world_size=group_size, seed=seed)
    try:
        return D.BatchStream(ds, part.batch_size, sampler, num_workers=cfg.data.num_workers)
    except ValueError as e:
        raise ValueError(f"partition {part.name!r}: {e}") from None


class PartitionStreams:
    """The streams of one rank. ``next_batch(stage, part)`` -> images (B, 3, H, W) in [0, 1];
    ``with_keys=True``: ``(images, keys)``, each sample's stable name (shard ``__key__`` or the
    image's relative path), which a teacher-feature cache is looked up by."""

    def __init__(self, cfg: TrainConfig, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.streams: dict = {}
        self._saved: dict[str, dict] = {}  # restored states of streams not created yet

    def _stream(self, stage: int, part: PartitionConfig):
        key = f"{stage}/{part.name}"
        if key not in self.streams:
            ranks = ranks_of(part, self.world_size)
            seed = self.cfg.seed * 1000 + stage * 100 + self.cfg.stages[stage].partitions.index(part)
            s = partition_stream(self.cfg, part, ranks.index(self.rank), len(ranks), seed=seed)
            if key in self._saved:
                s.load_state_dict(self._saved.pop(key))
            self.streams[key] = s
        return self.streams[key]

    def next_batch(self, stage: int, part: PartitionConfig, with_keys: bool = False):
        batch = next(self._stream(stage, part))
        return (batch["image"], list(batch["key"])) if with_keys else batch["image"]

    @property
    def skipped(self) -> int:
        """Unreadable images skipped so far on this rank (all partitions)."""
        return sum(s.skipped for s in self.streams.values()) + sum(
            int(st.get("skipped", 0)) for st in self._saved.values()
        )

    def state_dict(self) -> dict:
        state = dict(self._saved)
        state.update({k: s.state_dict() for k, s in self.streams.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.streams = {}
        self._saved = dict(state)
