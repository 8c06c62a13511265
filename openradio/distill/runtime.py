"""The runtime a trainer runs in: process group, device, seeding, and where parallelism is applied.

``init_distributed`` joins the process group torchrun describes (env:// rendezvous; nccl on GPUs,
gloo on CPUs) or stays single-process; ``wrap_model`` applies DDP or FSDP2 to the student in one
place.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

__all__ = ["DistEnv", "init_distributed", "seed_everything", "wrap_model", "full_tensor", "peak_memory_mb"]


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "", timeout_s: Optional[float] = None) -> DistEnv:
    """Join the process group torchrun describes (env:// rendezvous); single process otherwise.
    nccl on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device:
        dev = torch.device(device)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    here = False
    if world > 1 and not dist.is_initialized():
        kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
        backend = "nccl" if dev.type == "cuda" else "gloo"
        store = _attempt_store(timeout_s)
        if store is not None:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, **kwargs)
        else:
            dist.init_process_group(backend=backend, **kwargs)
        here = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistEnv(rank, world, local, dev, here)


def _attempt_store(timeout_s: Optional[float]):
    """Under torchrun, the agent's key-value store outlives a restart: keys that the killed
    workers published (their gloo addresses) are still there, and a restarted rank can read a
    dead peer's address before the new peer overwrites it (seen as 'connection refused' or a
    hang in the process-group setup). Each restart attempt therefore gets its own namespace."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout_s or 1800),
    )
    return dist.PrefixStore(f"openradio/attempt_{attempt}", store)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def wrap_model(model: nn.Module, env: DistEnv, parallel: str = "ddp") -> nn.Module:
    """The model as the training step calls it: itself (one process), DDP, or FSDP2 ``fully_shard``
    (every ViT block, then the whole model; sharded in place, so the returned object is ``model``)."""
    if not env.distributed:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard  # lazy: only FSDP runs need it (0.6 s to import)

        for block in model.model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    if parallel != "ddp":
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # lazy: Unix only (no such module on Windows), hence the try

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except Exception:  # pragma: no cover - non-Linux
        return float("nan")
