"""Multi-teacher distillation trainer (the RADIOv2.5 recipe), from one CPU to many GPUs.

The ``Trainer`` composes components that each live, and are tested, on their own:

* ``runtime``     process group, device, seeding, DDP / FSDP2 wrapping
* ``partitions``  which rank trains which partition at which step; per-teacher loss scales
* ``streams``     this rank's resumable data stream per (stage, partition)
* ``optim``       AdamW, warmup + cosine schedule
* ``phi_s``       one PHI-S normaliser per teacher and teacher resolution
* ``losses``      summary cosine + feature MSE, per-teacher weights (the only place they apply)
* ``metrics``     rank merge, CSV and TensorBoard
* ``checkpointing`` atomic, resumable training state; ``export`` the official ``.pth.tar``
* ``faults``      fault injection for recovery tests

One step = for every partition this rank trains: a batch at the partition's resolution, the
teachers' targets (PHI-S-normalised features, summaries; run live, or read by sample key from a
``data.teacher_cache``, see ``teacher_cache``), the student forward in training mode
(CPE random crop, position dropout), the losses, backward; then one optimiser step, EMA and PHI-S
updates. Run under ``torchrun`` for several processes.
"""

from __future__ import annotations

import copy
import math
import re
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from tqdm.auto import tqdm

from openradio.atomicio import write_text
from openradio.distill import partitions as P
from openradio.distill.checkpointing import CheckpointManager, capture_rng_state, restore_rng_state
from openradio.distill.config import PartitionConfig, TrainConfig, dump_config, validate
from openradio.distill.export import write_export
from openradio.distill.faults import maybe_inject_fault
from openradio.distill.losses import distill_loss
from openradio.distill.metrics import MetricsLogger, merge_rank_metrics
from openradio.distill.mosaic import mosaic_pad_value, pack_mosaic, unpack_features
from openradio.distill.optim import build_optimizer, build_scheduler
from openradio.distill.phi_s import PhiSNormalizer
from openradio.distill.runtime import (
    DistEnv,
    full_tensor,
    init_distributed,
    peak_memory_mb,
    seed_everything,
    wrap_model,
)
from openradio.distill.streams import PartitionStreams
from openradio.distill.student import args_to_state, build_student, student_args, student_config
from openradio.distill.teacher_cache import TeacherCache
from openradio.distill.teachers import build_teachers
from openradio.distill.transforms import resize_square
from openradio.model.radio import RADIOModel
from openradio.runtime import warn_if_slow_bf16

__all__ = ["Trainer", "DistEnv", "init_distributed", "build_teachers"]


class Trainer:
    def __init__(self, cfg: TrainConfig, env: Optional[DistEnv] = None, teachers: Optional[dict] = None):
        validate(cfg)  # every value checked before anything is built (load_config does too; from_dict does not)
        self.cfg = cfg
        self.env = env or init_distributed(cfg.device, cfg.dist_timeout_s)
        self.device = self.env.device
        self.out_dir = Path(cfg.out_dir)
        if self.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.out_dir / "config.yaml", dump_config(cfg))
        seed_everything(cfg.seed + self.env.rank)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        # randomly initialised teachers (tests, demo) and the student's initial weights must be the
        # same on every rank and in every restart, whatever the rank's seed
        self.cache = None  # data.teacher_cache: targets read by sample key, no teacher is built or run
        if cfg.data.teacher_cache:
            if teachers is not None:
                raise ValueError("pass teachers or set data.teacher_cache, not both")
            self.cache = TeacherCache(cfg.data.teacher_cache)
            self.teachers = self.cache.teacher_specs(cfg)
        else:
            self.teachers = teachers if teachers is not None else build_teachers(cfg, self.device)
        self.args = student_args(cfg, self.teachers)
        self.head_dims = {
            t.name: (self.teachers[t.name].summary_dim, self.teachers[t.name].feature_dim) for t in cfg.teachers
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            student = build_student(
                student_config(cfg, self.teachers), self.head_dims, spectral_reparam=cfg.student.spectral_reparam
            )
        student.patch_generator.pos_dropout = cfg.student.pos_dropout
        student.patch_generator.random_crop = cfg.student.cpe_random_crop
        self.student: RADIOModel = student.to(self.device)
        if self.cache is not None:
            self.cache.check(cfg, self.student.patch_size)
        self.ema: Optional[RADIOModel] = None
        if cfg.ema_decay > 0:
            self.ema = copy.deepcopy(self.student).eval().requires_grad_(False)
        self._template = copy.deepcopy(self.student) if (self._sharded and self.ema is None) else None
        self.model = wrap_model(self.student, self.env, cfg.parallel)
        self.optimizer = build_optimizer(self.student, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.total_steps)
        ps = cfg.phi_s
        self.phi_s = nn.ModuleDict(
            {
                key: PhiSNormalizer(
                    self.teachers[t].feature_dim,
                    ps.update_every,
                    ps.freeze_after,
                    align=ps.align,
                    align_tol=ps.align_tol,
                )
                for key, t in self._phi_s_keys()
            }
        ).to(self.device)
        self.step = 0
        self.nonfinite = 0
        self.data = PartitionStreams(cfg, self.env.rank, self.env.world_size)
        self.ckpt = CheckpointManager(
            self.out_dir / "checkpoints", keep_last=cfg.keep_checkpoints, is_writer=self.env.is_main
        )
        self.logger = MetricsLogger(self.out_dir, cfg, enabled=self.env.is_main, world_size=self.env.world_size)
        self._check_resolutions()

    @property
    def _sharded(self) -> bool:
        return self.env.distributed and self.cfg.parallel == "fsdp"

    # -- what each stage trains (openradio.distill.partitions) -------------------------------------
    def teacher_resolution(self, part: PartitionConfig, name: str, student_resolution: Optional[int] = None) -> int:
        """The side teacher ``name`` runs at in ``part`` (for a student side other than the
        partition's own when the partition samples its resolution)."""
        t = self.teachers[name]
        return P.teacher_resolution(
            self.cfg, part, name, t.input_size, t.patch_size, self.student.patch_size, student_resolution
        )

    def _phi_s_key(self, part: PartitionConfig, name: str) -> str:
        """The normaliser of ``name`` in ``part``: keyed by the partition's nominal resolution, so a
        partition that samples its resolution per step keeps one normaliser per teacher."""
        return f"{name}@{self.teacher_resolution(part, name)}"

    def _student_resolution(self, stage: int, part: PartitionConfig, pass_index: int) -> int:
        """The partition's side for this step: fixed, or drawn from ``part.resolutions`` with a
        generator keyed by (seed, step, stage, pass), so every rank of the partition draws the same
        side and a resumed run draws what the uninterrupted one did, without touching the global RNG."""
        if not part.resolutions:
            return part.resolution
        g = torch.Generator().manual_seed(((self.cfg.seed * 1_000_003 + self.step) * 1009 + stage) * 101 + pass_index)
        return int(part.resolutions[int(torch.randint(len(part.resolutions), (), generator=g))])

    def _check_resolutions(self) -> None:
        p = self.student.patch_size
        for si, st in enumerate(self.cfg.stages):
            for part in st.partitions:
                bad = [r for r in [part.resolution, *(part.resolutions or [])] if r % p]
                if bad:
                    raise ValueError(
                        f"stages[{si}] partition {part.name!r}: student sides {bad} are not multiples of "
                        f"the student's patch size {p}"
                    )

    def stage_phi_s_keys(self, stage: int) -> dict[str, str]:
        """The PHI-S normalisers (``teacher@resolution`` -> teacher) that stage ``stage`` uses, over
        every partition of every rank: the same on every rank, so all ranks step them together."""
        if not self.cfg.phi_s.enabled:
            return {}
        keys = {}
        for p in self.cfg.stages[stage].partitions:
            for t in P.partition_teachers(self.cfg, p):
                keys[self._phi_s_key(p, t)] = t
        return dict(sorted(keys.items()))

    def _phi_s_keys(self) -> list[tuple[str, str]]:
        keys: dict[str, str] = {}
        for si in range(len(self.cfg.stages)):
            keys.update(self.stage_phi_s_keys(si))
        return sorted(keys.items())

    # -- targets and losses ------------------------------------------------------------------------
    def _teacher_outputs(self, part: PartitionConfig, images: torch.Tensor, keys: Optional[list] = None) -> dict:
        """Raw teacher outputs ``{name: (summary, features_NCHW)}`` (run, or read from the teacher
        cache by the samples' ``keys``); the features also go into their PHI-S normaliser's
        statistics (once per batch)."""
        out = {}
        for name in P.partition_teachers(self.cfg, part):
            teacher = self.teachers[name]
            res = self.teacher_resolution(part, name, images.shape[-1])
            if self.cache is not None:  # per view alone for mosaic teachers (see teacher_cache)
                summary, feats = self.cache.lookup(
                    keys, name, part.resolution, images.shape[-1], res, name in part.mosaic, device=self.device
                )
            else:
                # bf16 autocast for the teachers too: they are most of a step's FLOPs in the B/L recipes
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp):
                    if name in part.mosaic:
                        pad = mosaic_pad_value(teacher, self.cfg.mosaic_pad)
                        canvases, layout = pack_mosaic(images, res, teacher.patch_size, pad_value=pad)
                        summary, feats = None, unpack_features(teacher(canvases).features, layout)
                    else:
                        summary, feats = teacher(images, resolution=res)
            feats = feats.float()
            key = self._phi_s_key(part, name)
            if key in self.phi_s:
                self.phi_s[key].update(feats, "NCHW")
            out[name] = (summary.float() if summary is not None else None, feats)
        return out

    def _targets(self, part: PartitionConfig, raw: dict) -> dict:
        """Loss targets: features in their normaliser's PHI-S space."""
        out = {}
        for name, (summary, feats) in raw.items():
            key = self._phi_s_key(part, name)
            if key in self.phi_s:
                norm = self.phi_s[key]
                if not bool(norm.initialized):  # train_step initialises before any loss
                    raise RuntimeError(f"PHI-S normaliser {key} is used before it has statistics")
                feats = norm.normalize(feats, "NCHW").float()
            out[name] = (summary, feats)
        return out

    def _partition_loss(
        self,
        part: PartitionConfig,
        images: torch.Tensor,
        scales: dict,
        metrics: dict,
        raw: Optional[dict] = None,
        keys: Optional[list] = None,
    ) -> torch.Tensor:
        """This partition's loss: every teacher's summary and feature terms, each weighted once (in
        ``distill_loss``) by the teacher's weight times its partition-layout scale."""
        if self.cfg.amp:
            warn_if_slow_bf16(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp):
            out = self.model(images, feature_fmt="NCHW", vitdet_window=self._vitdet_window(images.shape[-1]))
        targets = self._targets(part, raw if raw is not None else self._teacher_outputs(part, images, keys))
        student = {n: (out[n].summary, out[n].features.float()) for n in targets}
        weights = {
            n: (scales[n] * self.cfg.teacher(n).summary_weight, scales[n] * self.cfg.teacher(n).feature_weight)
            for n in targets
        }
        losses = distill_loss(student, targets, weights, feature_loss_kind=self.cfg.feature_loss)
        for k, v in losses.items():
            if k != "total":
                metrics[f"{part.name}/{k}"] = v.item()
        # every head takes part in the graph on every rank (zero gradient where unsupervised),
        # so DDP's reducer sees the same parameters everywhere
        return losses["total"] + sum(
            0.0 * (o.summary.float().sum() + o.features.float().sum()) for k, o in out.items() if k != "backbone"
        )

    def _vitdet_window(self, res: int) -> Optional[int]:
        if self.cfg.vitdet_aug_prob <= 0 or torch.rand(()) >= self.cfg.vitdet_aug_prob:
            return None
        grid = res // self.student.patch_size
        options = [w for w in self.cfg.vitdet_aug_windows if grid % w == 0 and w < grid]
        return options[int(torch.randint(len(options), ()))] if options else None

    def _initialize_new_normalizers(self, stage: int, passes: list, batches: list, keys: Optional[list] = None) -> dict:
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
        keys = keys or [None] * len(passes)
        raw = {i: self._teacher_outputs(part, images, keys[i]) for i, (part, images) in enumerate(zip(passes, batches))}
        for key in new:  # same order on every rank: each holds a collective
            self.phi_s[key].initialize()
        return raw

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self) -> dict:
        stage, t0 = P.stage_at(self.cfg, self.step), time.perf_counter()
        scales = P.loss_scales(self.cfg, stage, self.env.world_size)
        accum = max(self.cfg.optim.accumulation, 1)
        passes = [
            p for _ in range(accum) for p in P.rank_partitions(self.cfg, stage, self.env.rank, self.env.world_size)
        ]
        fetched = [self.data.next_batch(stage, p, with_keys=True) for p in passes]  # (images, sample keys)
        batches = [
            resize_square(images.to(self.device, non_blocking=True), self._student_resolution(stage, p, i))
            for i, (p, (images, _)) in enumerate(zip(passes, fetched))
        ]
        keys = [k for _, k in fetched]
        raw = self._initialize_new_normalizers(stage, passes, batches, keys)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {}
        loss_sum = 0.0
        for i, (part, images) in enumerate(zip(passes, batches)):
            last = i == len(passes) - 1  # DDP all-reduces gradients on the last backward only
            with nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync():
                loss = self._partition_loss(part, images, scales, metrics, raw.pop(i, None), keys[i]) / accum
                loss.backward()
            loss_sum += float(loss.detach())
        if not passes:  # a rank without partitions in this stage still joins the collectives
            sum(0.0 * p.sum() for p in self.student.parameters()).backward()
        lr = self.optimizer.param_groups[0]["lr"]
        self._optimizer_step(math.isfinite(loss_sum))
        for key in self.stage_phi_s_keys(stage):  # each counts the steps in which it saw data
            self.phi_s[key].step()
        self.step += 1
        metrics.update(
            loss=loss_sum,
            images_per_s=sum(b.shape[0] for b in batches) / max(time.perf_counter() - t0, 1e-9),
            skipped_images=self.data.skipped,
            peak_mem_mb=peak_memory_mb(self.device),
        )
        if self.env.distributed and (self.step % self.cfg.log_every == 0 or self.step == self.cfg.total_steps):
            metrics = merge_rank_metrics(metrics, self.env.world_size)
        metrics.update(step=self.step, stage=stage, lr=lr, nonfinite=self.nonfinite)
        return metrics

    def _optimizer_step(self, finite: bool) -> None:
        """Clip, step and update the EMA, or skip the step everywhere if any rank's loss is not finite."""
        ok = torch.tensor([1.0 if finite else 0.0], device=self.device)
        if self.env.distributed:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item() < 1:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            warnings.warn(f"step {self.step}: non-finite loss, step skipped ({self.nonfinite} so far)", stacklevel=2)
            if self.nonfinite > self.cfg.max_nonfinite:
                raise FloatingPointError(
                    f"stopping: {self.nonfinite} non-finite steps (max_nonfinite="
                    f"{self.cfg.max_nonfinite}); lower the learning rate or check the data"
                )
        else:
            if self.cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.grad_clip)
            self.optimizer.step()
            self._update_ema()
        with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        for pe, p in zip(self.ema.parameters(), self.student.parameters()):
            pe.lerp_(full_tensor(p.detach()), 1 - self.cfg.ema_decay)
        for be, b in zip(self.ema.buffers(), self.student.buffers()):
            be.copy_(b)

    # -- the loop ----------------------------------------------------------------------------------
    def train(self, max_steps: Optional[int] = None, resume: bool = True) -> dict:
        """Train to the end of the schedule (or ``max_steps``); resumes from the newest readable
        checkpoint in ``out_dir/checkpoints`` when there is one."""
        if resume:
            self.resume()
        end = self.cfg.total_steps if max_steps is None else min(max_steps, self.cfg.total_steps)
        bar = None
        if self.cfg.progress and self.env.is_main:
            bar = tqdm(total=self.cfg.total_steps, initial=self.step, desc="distill", unit="step", dynamic_ncols=True)
        last: dict = {}
        try:
            while self.step < end:
                last = self.train_step()
                if self.env.is_main and (self.step % self.cfg.log_every == 0 or self.step == end):
                    self.logger.log(last)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                if self.step % self.cfg.checkpoint_every == 0 or self.step == end:
                    self.save_checkpoint()
                maybe_inject_fault(self.step, self.env.rank)
        finally:
            if bar is not None:
                bar.close()
            self.logger.flush()
        return last

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The whole training state (a collective: every rank contributes its RNG and data position)."""
        mine = {"rng": capture_rng_state(), "streams": self.data.state_dict()}
        gathered = [mine]
        if self.env.distributed:
            gathered = [None] * self.env.world_size
            dist.all_gather_object(gathered, mine)
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

    def _model_state(self) -> dict:
        if self._sharded:
            return get_model_state_dict(self.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.student.state_dict()

    def _optim_state(self) -> dict:
        if self._sharded:
            return get_optimizer_state_dict(
                self.student, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        if self._sharded:
            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.student, state["model"], options=opts)
            set_optimizer_state_dict(self.student, self.optimizer, state["optimizer"], options=opts)
        else:
            self.student.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.phi_s.load_state_dict(state["phi_s"])
        self.nonfinite = int(state.get("nonfinite", 0))
        per_rank = state["per_rank"]
        if len(per_rank) != self.env.world_size:
            warnings.warn(
                f"checkpoint was written by {len(per_rank)} ranks, resuming on {self.env.world_size}: "
                "data positions and random streams restart from the checkpoint's rank 0",
                stacklevel=2,
            )
        mine = per_rank[self.env.rank] if self.env.rank < len(per_rank) else per_rank[0]
        restore_rng_state(mine["rng"])
        self.data.load_state_dict(mine["streams"])

    def save_checkpoint(self) -> None:
        self.ckpt.save(self.state_dict(), self.step)  # state_dict is collective: every rank takes part

    def resume(self, quiet: bool = False) -> bool:
        """Load the newest readable checkpoint (an unreadable newest one is skipped with a
        warning). Rank 0 chooses and every rank loads that same step. ``quiet``: no "resumed"
        line."""
        found = self.ckpt.load_latest(map_location="cpu") if self.env.is_main or not self.env.distributed else None
        if self.env.distributed:
            choice = [found[1] if found else None]
            dist.broadcast_object_list(choice, src=0)
            if choice[0] is None:
                return False
            if not self.env.is_main:
                found = (self.ckpt.load(choice[0], map_location="cpu"), choice[0])
        if found is None:
            return False
        self.load_state_dict(found[0])
        if self.env.is_main and not quiet:
            print(f"resumed from step {found[1]} ({self.ckpt.dir})")
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
        return write_export(path, self.args, student, self.phi_s, ema=self.ema if use_ema else None, step=self.step)
