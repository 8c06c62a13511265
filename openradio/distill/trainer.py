"""Multi-teacher distillation trainer (the RADIOv2.5 recipe), from one CPU to many GPUs.

One step = for every partition this rank trains: a batch at the partition's resolution, the
student forward in training mode (CPE random crop, position dropout), each supervising teacher's
targets (PHI-S-normalised features, summaries), the losses, backward; then one optimiser step,
EMA and PHI-S updates. Components (teachers, PHI-S, losses, mosaic, data, checkpointing) live in
their own modules; this file only composes them.

Distributed: run under ``torchrun``; DDP by default (FSDP2 ``fully_shard`` as an option). Every
(rank, partition) pair is a slot; teacher t's loss in a slot is scaled by world_size / n_t
(n_t = slots that see t), so DDP's gradient average equals each teacher's mean over the slots
that see it, whatever the partition layout.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from openradio.distill.config import PartitionConfig, TrainConfig, dump_config
from openradio.distill.losses import distill_loss
from openradio.distill.mosaic import pack_mosaic, unpack_features
from openradio.distill.export import args_to_state, build_student, write_export
from openradio.distill.export import export_normalizer_key  # noqa: F401  (re-exported)
from openradio.distill.export import export_state_dict as _export_state_dict
from openradio.distill.phi_s import PhiSNormalizer
from openradio.model.backbone import make_args
from openradio.model.radio import RADIOModel


# -- distributed environment -----------------------------------------------------------------------
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
        from datetime import timedelta
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
    from datetime import timedelta
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=timeout_s or 1800))
    return dist.PrefixStore(f"openradio/attempt_{attempt}", store)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- per-partition data streams --------------------------------------------------------------------
def partition_stream(cfg: TrainConfig, part: PartitionConfig, group_rank: int, group_size: int, seed: int):
    """Endless, resumable batches of ``part.resolution`` crops for this rank's share of the data."""
    from openradio.distill import data as D
    from openradio.distill.shards import ShardDataset

    transform = D.make_train_transform(part.resolution, scale=tuple(part.crop_scale), flip=cfg.data.flip)
    ds = D.build_dataset(cfg.data.path, kind=cfg.data.kind, transform=transform, seed=seed,
                         rank=group_rank, world_size=group_size)
    sampler = None
    if not isinstance(ds, ShardDataset):
        sampler = D.ResumableSampler(len(ds), rank=group_rank, world_size=group_size, seed=seed)
    try:
        return D.BatchStream(ds, part.batch_size, sampler, num_workers=cfg.data.num_workers)
    except ValueError as e:
        raise ValueError(f"partition {part.name!r}: {e}") from None


# -- the trainer -----------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, env: Optional[DistEnv] = None, teachers: Optional[dict] = None):
        self.cfg = cfg
        self.env = env or init_distributed(cfg.device, cfg.dist_timeout_s)
        self.device = self.env.device
        self.out_dir = Path(cfg.out_dir)
        if self.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(dump_config(cfg))
        seed_everything(cfg.seed + self.env.rank)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        if teachers is None:
            # randomly initialised teachers (tests, demo) must be the same network on every rank
            # and in every restart
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                teachers = self._build_teachers()
        self.teachers = teachers
        self.args = self._student_args()
        head_dims = {t.name: (self.teachers[t.name].summary_dim, self.teachers[t.name].feature_dim)
                     for t in cfg.teachers}
        self.head_dims = head_dims
        # identical initial weights on every rank, whatever the rank's seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            student = build_student(self.args, head_dims)
        student.patch_generator.pos_dropout = cfg.student.pos_dropout
        student.patch_generator.random_crop = cfg.student.cpe_random_crop
        self.student: RADIOModel = student.to(self.device)
        self.ema: Optional[RADIOModel] = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(self.student).eval()
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self._template = copy.deepcopy(self.student) if (self.env.distributed and cfg.parallel == "fsdp"
                                                         and self.ema is None) else None
        self.model = self._wrap(self.student)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambda)
        ps = cfg.phi_s
        self.phi_s = nn.ModuleDict({key: PhiSNormalizer(self.teachers[t].feature_dim, ps.update_every, ps.freeze_after,
                                                        align=ps.align, align_tol=ps.align_tol)
                                    for key, t in self._phi_s_keys()}).to(self.device)
        self.step = 0
        self.nonfinite = 0
        self.streams: dict = {}
        self._stream_state: dict[str, dict] = {}
        from openradio.distill.checkpointing import CheckpointManager
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", keep_last=cfg.keep_checkpoints,
                                      is_writer=self.env.is_main)
        self.logger = MetricsLogger(self.out_dir, cfg, enabled=self.env.is_main, world_size=self.env.world_size)

    # -- construction helpers ----------------------------------------------------------------------
    def _build_teachers(self) -> dict:
        from openradio.teachers import build_teacher
        out = {}
        for t in self.cfg.teachers:
            out[t.name] = build_teacher(t.build_kwargs()).to(self.device)
        return out

    def _student_args(self):
        s = self.cfg.student
        teachers = []
        for t in self.cfg.teachers:
            teacher = self.teachers[t.name]
            d = {"name": t.name, "type": t.type or t.name, "model": t.model, "pretrained": t.pretrained,
                 "input_size": teacher.input_size,
                 "use_summary": bool(t.summary_weight) and teacher.summary_dim is not None}
            if t.fd_upsample_factor > 1:
                d["fd_upsample_factor"] = t.fd_upsample_factor
            teachers.append(d)
        kwargs = dict(s.model_kwargs)
        return make_args(s.model, teachers=teachers, model_kwargs=kwargs, cpe_max_size=s.cpe_max_size,
                         register_multiple=s.register_multiple, mlp_version=s.mlp_version,
                         mlp_hidden_size=s.mlp_hidden_size, mlp_num_inner=s.mlp_num_inner,
                         drop_path=s.drop_path or None, feature_normalization="PHI_S" if self.cfg.phi_s.enabled else None,
                         amp_dtype="bfloat16" if self.cfg.amp else None)

    def _wrap(self, student: nn.Module) -> nn.Module:
        if not self.env.distributed:
            return student
        if self.cfg.parallel == "fsdp":
            from torch.distributed.fsdp import fully_shard
            for block in student.model.blocks:
                fully_shard(block)
            fully_shard(student)
            return student
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(student, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            # norms, biases, position grid and prefix tokens are not decayed
            (no_decay if p.ndim <= 1 or "pos_embed" in name or "cls_token" in name else decay).append(p)
        o = self.cfg.optim
        return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=tuple(o.betas), eps=o.eps)

    def _lr_lambda(self, step: int) -> float:
        o = self.cfg.optim
        total = max(self.cfg.total_steps, 1)
        if step < o.warmup_steps:
            return (step + 1) / max(o.warmup_steps, 1)
        t = min((step - o.warmup_steps) / max(total - o.warmup_steps, 1), 1.0)
        floor = o.min_lr / o.lr if o.lr else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    def teacher_resolution(self, part: PartitionConfig, name: str) -> int:
        teacher = self.teachers[name]
        if name in part.mosaic:  # the canvas is the teacher's native input
            return teacher.input_size
        mode = part.teacher_resolution.get(name, self.cfg.teacher(name).resolution_mode)
        if mode == "native":
            return teacher.input_size
        if mode == "match":  # the teacher's token grid lines up with the student's
            return part.resolution * teacher.patch_size // self.student.patch_size
        if isinstance(mode, int) and mode > 0 and mode % teacher.patch_size == 0:
            return mode
        raise ValueError(f"teacher {name!r} in partition {part.name!r}: resolution must be 'native', 'match' or "
                         f"a multiple of the teacher's patch size {teacher.patch_size}, got {mode!r}")

    def _phi_s_keys(self):
        if not self.cfg.phi_s.enabled:
            return []
        keys = {}
        for si in range(len(self.cfg.stages)):
            for key, t in self.stage_phi_s_keys(si).items():
                keys[key] = t
        return sorted(keys.items())

    def stage_phi_s_keys(self, stage: int) -> dict[str, str]:
        """The PHI-S normalisers (``teacher@resolution`` -> teacher) that stage ``stage`` uses, over
        every partition of every rank: the same on every rank, so all ranks step them together."""
        if not self.cfg.phi_s.enabled:
            return {}
        keys = {}
        for p in self.cfg.stages[stage].partitions:
            for t in self._partition_teachers(p):
                keys[f"{t}@{self.teacher_resolution(p, t)}"] = t
        return dict(sorted(keys.items()))

    def _partition_teachers(self, part: PartitionConfig) -> list[str]:
        return list(part.teachers) if part.teachers is not None else [t.name for t in self.cfg.teachers]

    # -- stages and partitions ---------------------------------------------------------------------
    def stage_at(self, step: int) -> int:
        acc = 0
        for i, st in enumerate(self.cfg.stages):
            acc += st.steps
            if step < acc:
                return i
        return len(self.cfg.stages) - 1

    def _ranks_of(self, part: PartitionConfig) -> list[int]:
        ranks = list(range(self.env.world_size)) if part.ranks is None else [int(r) for r in part.ranks]
        bad = [r for r in ranks if not 0 <= r < self.env.world_size]
        if bad:
            raise ValueError(f"partition {part.name!r} names ranks {bad} but the world size is {self.env.world_size}")
        return ranks

    def my_partitions(self, stage: int) -> list[PartitionConfig]:
        parts = [p for p in self.cfg.stages[stage].partitions if self.env.rank in self._ranks_of(p)]
        return parts

    def loss_scales(self, stage: int) -> dict[str, float]:
        """world_size / (number of (rank, partition) slots that see teacher t)."""
        slots = {t.name: 0 for t in self.cfg.teachers}
        for p in self.cfg.stages[stage].partitions:
            for t in self._partition_teachers(p):
                slots[t] += len(self._ranks_of(p))
        return {t: self.env.world_size / n for t, n in slots.items() if n}

    @property
    def skipped_images(self) -> int:
        """Unreadable images skipped so far on this rank (all partitions)."""
        return sum(s.skipped for s in self.streams.values()) + sum(
            int(st.get("skipped", 0)) for st in self._stream_state.values())

    def _stream(self, stage: int, part: PartitionConfig):
        key = f"{stage}/{part.name}"
        if key not in self.streams:
            ranks = self._ranks_of(part)
            s = partition_stream(self.cfg, part, ranks.index(self.env.rank), len(ranks),
                                 seed=self.cfg.seed * 1000 + stage * 100 + self.cfg.stages[stage].partitions.index(part))
            if key in self._stream_state:
                s.load_state_dict(self._stream_state.pop(key))
            self.streams[key] = s
        return self.streams[key]

    # -- one step ----------------------------------------------------------------------------------
    def _teacher_outputs(self, part: PartitionConfig, images: torch.Tensor) -> dict:
        """Raw teacher outputs ``{name: (summary, features_NCHW)}``; the features also go into
        their PHI-S normaliser's statistics (once per batch)."""
        out = {}
        for name in self._partition_teachers(part):
            teacher = self.teachers[name]
            res = self.teacher_resolution(part, name)
            # bf16 autocast for the teachers too: they are most of a step's FLOPs in the B/L recipes
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp):
                if name in part.mosaic:
                    canvases, layout = pack_mosaic(images, res, teacher.patch_size)
                    t_out = teacher(canvases)
                    summary, feats = None, unpack_features(t_out.features, layout)
                else:
                    summary, feats = teacher(images, resolution=res)
            feats = feats.float()
            key = f"{name}@{res}"
            if key in self.phi_s:
                self.phi_s[key].update(feats, "NCHW")
            out[name] = (summary.float() if summary is not None else None, feats)
        return out

    def _targets(self, part: PartitionConfig, raw: dict) -> dict:
        """Loss targets: features in their normaliser's PHI-S space."""
        out = {}
        for name, (summary, feats) in raw.items():
            key = f"{name}@{self.teacher_resolution(part, name)}"
            if key in self.phi_s:
                norm = self.phi_s[key]
                if not bool(norm.initialized):  # train_step initialises before any loss
                    raise RuntimeError(f"PHI-S normaliser {key} is used before it has statistics")
                feats = norm.normalize(feats, "NCHW").float()
            out[name] = (summary, feats)
        return out

    def _partition_loss(self, part: PartitionConfig, images: torch.Tensor, scales: dict, metrics: dict,
                        raw: Optional[dict] = None):
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)
        with amp:
            out = self.model(images, feature_fmt="NCHW")
        targets = self._targets(part, raw if raw is not None else self._teacher_outputs(part, images))
        names = list(targets)
        student = {n: (out[n].summary, out[n].features.float()) for n in names}
        weights = {n: (self.cfg.teacher(n).summary_weight, self.cfg.teacher(n).feature_weight) for n in names}
        losses = distill_loss(student, targets, weights, feature_loss_kind=self.cfg.feature_loss)
        total = images.new_zeros(())
        for n in names:
            w_s, w_f = weights[n]
            term = 0.0
            if f"{n}/summary" in losses:
                term = term + w_s * losses[f"{n}/summary"]
                metrics[f"{part.name}/{n}/summary"] = losses[f"{n}/summary"].item()
            if f"{n}/features" in losses:
                term = term + w_f * losses[f"{n}/features"]
                metrics[f"{part.name}/{n}/features"] = losses[f"{n}/features"].item()
            total = total + scales[n] * term
        # every head takes part in the graph on every rank (zero gradient where unsupervised),
        # so DDP's reducer sees the same parameters everywhere
        total = total + sum(0.0 * (o.summary.float().sum() + o.features.float().sum())
                            for k, o in out.items() if k != "backbone")
        return total

    def _maybe_vitdet(self, res: int) -> Optional[int]:
        if self.cfg.vitdet_aug_prob <= 0 or torch.rand(()) >= self.cfg.vitdet_aug_prob:
            return None
        grid = res // self.student.patch_size
        options = [w for w in self.cfg.vitdet_aug_windows if grid % w == 0 and w < grid]
        if not options:
            return None
        return options[int(torch.randint(len(options), ()))]

    def _initialize_new_normalizers(self, stage: int, passes: list, batches: list) -> dict:
        """Give every PHI-S normaliser that this stage introduces its statistics before its first loss.

        The choice: the estimation pass is the first step of the stage that introduces the
        normaliser, on that step's own batches (all ranks, all accumulation passes), run through the
        teachers before the student's loss. The alternative, keeping a teacher-resolution's loss off
        for its first batches while it estimates, would silently drop supervision and make the
        switch-on step a config-dependent special case; an extra pass over fresh batches would cost
        teacher forwards for nothing. The first transform comes from one global batch (e.g. 512
        images x 729 tokens in the B/L recipes' stage 2), is recomputed every ``update_every`` of the
        normaliser's own steps and frozen after ``freeze_after`` of them.

        Returns the raw teacher outputs computed here, by pass index, so the loss reuses them
        (each batch enters the statistics once)."""
        new = [k for k in self.stage_phi_s_keys(stage) if not bool(self.phi_s[k].initialized)]
        if not new:
            return {}
        raw = {i: self._teacher_outputs(part, images) for i, ((_, part), images) in enumerate(zip(passes, batches))}
        for key in new:  # same order on every rank: each holds a collective
            self.phi_s[key].initialize()
        return raw

    def train_step(self) -> dict:
        stage = self.stage_at(self.step)
        parts = self.my_partitions(stage)
        scales = self.loss_scales(stage)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {}
        n_images = 0
        accum = max(self.cfg.optim.accumulation, 1)
        loss_sum = 0.0
        t0 = time.perf_counter()
        passes = [(m, p) for m in range(accum) for p in parts]
        batches = [next(self._stream(stage, part))["image"].to(self.device, non_blocking=True) for _, part in passes]
        raw = self._initialize_new_normalizers(stage, passes, batches)
        for i, (_, part) in enumerate(passes):
            images = batches[i]
            n_images += images.shape[0]
            window = self._maybe_vitdet(part.resolution)
            self.student.set_vitdet_window(window)
            try:
                sync = i == len(passes) - 1
                ctx = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else _null()
                with ctx:
                    loss = self._partition_loss(part, images, scales, metrics, raw.pop(i, None)) / accum
                    loss.backward()
            finally:
                self.student.set_vitdet_window(None)
            loss_sum += float(loss.detach())
        if not passes:  # a rank without partitions in this stage still joins the collectives
            loss = sum(0.0 * p.sum() for p in self.student.parameters())
            loss.backward()
        finite = torch.tensor([1.0 if math.isfinite(loss_sum) else 0.0], device=self.device)
        if self.env.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        lr = self.optimizer.param_groups[0]["lr"]
        if finite.item() < 1:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            warnings.warn(f"step {self.step}: non-finite loss, step skipped ({self.nonfinite} so far)")
            if self.nonfinite > self.cfg.max_nonfinite:
                raise FloatingPointError(f"stopping: {self.nonfinite} non-finite steps (max_nonfinite="
                                         f"{self.cfg.max_nonfinite}); lower the learning rate or check the data")
        else:
            if self.cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.grad_clip)
            self.optimizer.step()
            self._update_ema()
        with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        for key in self.stage_phi_s_keys(stage):  # each counts the steps in which it saw data
            self.phi_s[key].step()
        self.step += 1
        dt = time.perf_counter() - t0
        metrics.update(loss=loss_sum, images_per_s=n_images / max(dt, 1e-9), skipped_images=self.skipped_images,
                       peak_mem_mb=peak_memory_mb(self.device))
        if self.env.distributed and (self.step % self.cfg.log_every == 0 or self.step == self.cfg.total_steps):
            metrics = merge_rank_metrics(metrics, self.env.world_size)
        metrics.update(step=self.step, stage=stage, lr=lr, nonfinite=self.nonfinite)
        return metrics

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        d = self.cfg.ema_decay
        for pe, p in zip(self.ema.parameters(), self.student.parameters()):
            pe.lerp_(_full(p.detach()), 1 - d)
        for be, b in zip(self.ema.buffers(), self.student.buffers()):
            be.copy_(b)

    # -- loop --------------------------------------------------------------------------------------
    def train(self, max_steps: Optional[int] = None, resume: bool = True) -> dict:
        """Train to the end of the schedule (or ``max_steps``); resumes from the newest readable
        checkpoint in ``out_dir/checkpoints`` when there is one."""
        if resume:
            self.resume()
        end = self.cfg.total_steps if max_steps is None else min(max_steps, self.cfg.total_steps)
        bar = None
        if self.cfg.progress and self.env.is_main:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.cfg.total_steps, initial=self.step, desc="distill", unit="step", dynamic_ncols=True)
        last = {}
        try:
            while self.step < end:
                last = self.train_step()
                if self.env.is_main:
                    if self.step % self.cfg.log_every == 0 or self.step == end:
                        self.logger.log(last)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                if self.step % self.cfg.checkpoint_every == 0 or self.step == end:
                    self.save_checkpoint()
                _maybe_inject_fault(self.step, self.env.rank)
        finally:
            if bar is not None:
                bar.close()
            self.logger.flush()
        return last

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        from openradio.distill.checkpointing import capture_rng_state
        rng = capture_rng_state()
        if self.env.distributed:
            gathered = [None] * self.env.world_size
            dist.all_gather_object(gathered, {"rng": rng, "streams": self._streams_state()})
        else:
            gathered = [{"rng": rng, "streams": self._streams_state()}]
        return {
            "step": self.step,
            "model": self._model_state(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self._optim_state(),
            "scheduler": self.scheduler.state_dict(),
            "phi_s": self.phi_s.state_dict(),
            "per_rank": gathered,
            "nonfinite": self.nonfinite,
            "world_size": self.env.world_size,
            # what export needs without the teachers (openradio.distill.export.export_run)
            "student_args": args_to_state(self.args),
            "head_dims": {k: list(v) for k, v in self.head_dims.items()},
        }

    @property
    def _sharded(self) -> bool:
        return self.env.distributed and self.cfg.parallel == "fsdp"

    def _dcp_options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions
        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def _model_state(self) -> dict:
        if self._sharded:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict
            return get_model_state_dict(self.student, options=self._dcp_options())
        return self.student.state_dict()

    def _optim_state(self) -> dict:
        if self._sharded:
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
            return get_optimizer_state_dict(self.student, self.optimizer, options=self._dcp_options())
        return self.optimizer.state_dict()

    def _load_model_state(self, state: dict) -> None:
        if self._sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
            set_model_state_dict(self.student, state, options=StateDictOptions(full_state_dict=True))
        else:
            self.student.load_state_dict(state)

    def _load_optim_state(self, state: dict) -> None:
        if self._sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            set_optimizer_state_dict(self.student, self.optimizer, state,
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state)

    def _streams_state(self) -> dict:
        state = dict(self._stream_state)
        state.update({k: s.state_dict() for k, s in self.streams.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        from openradio.distill.checkpointing import restore_rng_state
        self.step = int(state["step"])
        self._load_model_state(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self._load_optim_state(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.phi_s.load_state_dict(state["phi_s"])
        self.nonfinite = int(state.get("nonfinite", 0))
        per_rank = state["per_rank"]
        if len(per_rank) != self.env.world_size:
            warnings.warn(f"checkpoint was written by {len(per_rank)} ranks, resuming on {self.env.world_size}: "
                          "data positions and random streams restart from the checkpoint's rank 0")
        mine = per_rank[self.env.rank] if self.env.rank < len(per_rank) else per_rank[0]
        restore_rng_state(mine["rng"])
        self.streams = {}
        self._stream_state = dict(mine["streams"])

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # collective: every rank takes part
        self.ckpt.save(state, self.step)

    def resume(self) -> bool:
        """Load the newest readable checkpoint (an unreadable newest one is skipped with a
        warning). Rank 0 chooses and every rank loads that same step."""
        if self.env.distributed:
            choice = [None]
            if self.env.is_main:
                found = self.ckpt.load_latest(map_location="cpu")
                choice = [found[1] if found else None]
            dist.broadcast_object_list(choice, src=0)
            step = choice[0]
            if step is None:
                return False
            state = found[0] if self.env.is_main else self.ckpt.load(step, map_location="cpu")
        else:
            found = self.ckpt.load_latest(map_location="cpu")
            if found is None:
                return False
            state, step = found
        self.load_state_dict(state)
        if self.env.is_main:
            print(f"resumed from step {step} ({self.ckpt.dir})")
        return True

    # -- export ------------------------------------------------------------------------------------
    def export(self, path: str | Path, use_ema: Optional[bool] = None) -> Path:
        """Write an official-format ``.pth.tar`` that ``openradio.radio_model`` loads: the student
        (EMA weights as ``state_dict_ema`` when configured) with every feature head's PHI-S inverse
        folded into its final Linear, so adaptors emit raw teacher features."""
        use_ema = self.cfg.export_ema if use_ema is None else use_ema
        student = self.student
        if self._sharded:  # gather the full weights (a collective; rank 0 receives them)
            full = self._model_state()
            if not self.env.is_main:
                return Path(path)
            student = copy.deepcopy(self.ema if self.ema is not None else self._template)
            student.load_state_dict(full)
        if not self.env.is_main:
            return Path(path)
        ema = self.ema if use_ema else None
        return write_export(path, self.args, student, self.phi_s, ema=ema, step=self.step)


def merge_rank_metrics(local: dict, world_size: int) -> dict:
    """Every rank's metrics on every rank: per-partition losses averaged over the ranks that
    computed them, throughput summed (and kept per rank), peak memory as the maximum."""
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, local)
    out: dict = {}
    sums: dict = {}
    for r, m in enumerate(gathered):
        out[f"images_per_s/rank{r}"] = m["images_per_s"]
        out[f"peak_mem_mb/rank{r}"] = m["peak_mem_mb"]
        for k, v in m.items():
            if "/" in k:
                sums.setdefault(k, []).append(v)
    out.update({k: sum(v) / len(v) for k, v in sums.items()})
    out["loss"] = sum(m["loss"] for m in gathered) / world_size
    out["images_per_s"] = sum(m["images_per_s"] for m in gathered)
    out["peak_mem_mb"] = max(m["peak_mem_mb"] for m in gathered)
    out["skipped_images"] = sum(m["skipped_images"] for m in gathered)
    return out


FAULT_ENV = "OPENRADIO_FAULT_KILL"


def _maybe_inject_fault(step: int, rank: int) -> None:
    """Fault injection for recovery tests: ``OPENRADIO_FAULT_KILL=STEP:RANK:MARKER`` SIGKILLs that
    rank once, right after STEP, unless MARKER exists (it is created first, so a restarted
    worker runs on)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    k, r, marker = spec.split(":", 2)
    if step == int(k) and rank == int(r) and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), 9)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def export_state_dict(model: RADIOModel, phi_s: nn.ModuleDict, cfg: Optional[TrainConfig] = None) -> dict:
    """``openradio.distill.export.export_state_dict`` (``cfg`` is not needed; kept for old callers)."""
    return _export_state_dict(model, phi_s)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except Exception:  # pragma: no cover - non-Linux
        return float("nan")


class MetricsLogger:
    """Rank 0's metrics: a wide CSV (one row per logged step) and TensorBoard scalars."""

    BASE = ["step", "stage", "lr", "loss", "images_per_s", "skipped_images", "nonfinite", "peak_mem_mb"]

    def __init__(self, out_dir: Path, cfg: TrainConfig, enabled: bool = True, world_size: int = 1):
        self.enabled = enabled
        self.path = out_dir / "metrics.csv"
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
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except Exception as e:  # tensorboard missing or broken: CSV still works
                warnings.warn(f"TensorBoard logging disabled: {e}")

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


def train(cfg: TrainConfig, max_steps: Optional[int] = None, export: Optional[str] = None) -> Trainer:
    """Build a Trainer, run it, optionally export; returns the trainer."""
    trainer = Trainer(cfg)
    trainer.train(max_steps=max_steps)
    if export and trainer.step >= cfg.total_steps:
        trainer.export(export)
    return trainer
