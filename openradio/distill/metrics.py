"""Training metrics: merged across ranks, written by rank 0 to a CSV and TensorBoard."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import torch.distributed as dist

from openradio.distill.config import TrainConfig

__all__ = ["MetricsLogger", "merge_rank_metrics"]


def merge_rank_metrics(local: dict, world_size: int) -> dict:
    """Every rank's metrics on every rank (a collective): per-partition losses averaged over the
    ranks that computed them, throughput summed (and kept per rank), peak memory as the maximum."""
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, local)
    return combine_rank_metrics(gathered)


def combine_rank_metrics(gathered: list[dict]) -> dict:
    """The merge of ``merge_rank_metrics`` on already gathered per-rank dicts."""
    out: dict = {}
    sums: dict = {}
    for r, m in enumerate(gathered):
        out[f"images_per_s/rank{r}"] = m["images_per_s"]
        out[f"peak_mem_mb/rank{r}"] = m["peak_mem_mb"]
        for k, v in m.items():
            if "/" in k:
                sums.setdefault(k, []).append(v)
    out.update({k: sum(v) / len(v) for k, v in sums.items()})
    out["loss"] = sum(m["loss"] for m in gathered) / len(gathered)
    out["images_per_s"] = sum(m["images_per_s"] for m in gathered)
    out["peak_mem_mb"] = max(m["peak_mem_mb"] for m in gathered)
    out["skipped_images"] = sum(m["skipped_images"] for m in gathered)
    return out


class MetricsLogger:
    """Rank 0's metrics: a wide CSV (one row per logged step) and TensorBoard scalars."""

    BASE = ["step", "stage", "lr", "loss", "images_per_s", "skipped_images", "nonfinite", "peak_mem_mb"]

    def __init__(self, out_dir: Path, cfg: TrainConfig, enabled: bool = True, world_size: int = 1):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.csv"
        cols = list(self.BASE)
        if world_size > 1:
            cols += [f"{k}/rank{r}" for k in ("images_per_s", "peak_mem_mb") for r in range(world_size)]
        for st in cfg.stages:
            for p in st.partitions:
                names = p.teachers if p.teachers is not None else [t.name for t in cfg.teachers]
                for n in names:
                    for kind in ("summary", "features"):
                        c = f"{p.name}/{n}/{kind}"
                        if c not in cols:
                            cols.append(c)
        self.columns = cols
        self.tb = None
        if not enabled:
            return
        new = not self.path.exists()
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=cols, extrasaction="ignore")
        if new:
            self._w.writeheader()
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: openradio[train] (tensorboard)

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except Exception as e:  # tensorboard missing or broken: CSV still works
                warnings.warn(f"TensorBoard logging disabled: {e}", stacklevel=2)

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self._w.writerow(metrics)
        self._f.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, metrics["step"])

    def flush(self) -> None:
        if not self.enabled:
            return
        self._f.flush()
        if self.tb is not None:
            self.tb.flush()
