"""One typed training config: dataclasses, loaded from YAML, overridable from the command line.

    cfg = load_config("configs/radio_v2.5-b.yaml", ["optim.lr=5e-4", "stages.0.steps=1000"])

Overrides are ``dotted.path=value`` with YAML-parsed values; list items are addressed by index.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


@dataclass
class TeacherConfig:
    name: str
    type: str = ""                       # open_clip | dino_v2 | sam | equivariant (default: name)
    model: str = ""
    pretrained: Union[str, bool, None] = None
    input_size: Optional[int] = None     # native side in pixels
    weights: Optional[str] = None        # local weights file
    tiny: bool = False                   # small random configuration of the same architecture
    overrides: dict = field(default_factory=dict)
    summary_weight: float = 1.0          # 0 for SAM: no summary target
    feature_weight: float = 1.0
    fd_upsample_factor: int = 1          # student feature head emits a u x finer grid
    # 'native': run at input_size and resample the larger grid down after the head;
    # 'match': run at student_res * teacher_patch / student_patch so the grids line up
    resolution_mode: str = "native"     # a partition's teacher_resolution overrides it
    extra: dict = field(default_factory=dict)  # passed to build_teacher as is

    def build_kwargs(self) -> dict:
        d = {"name": self.name, "type": self.type or self.name}
        if self.model:
            d["model"] = self.model
        if self.pretrained is not None:
            d["pretrained"] = self.pretrained
        if self.input_size is not None:
            d["input_size"] = self.input_size
        if self.weights:
            d["weights"] = self.weights
        if self.tiny:
            d["tiny"] = True
        if self.overrides:
            d["overrides"] = dict(self.overrides)
        d.update(self.extra)
        return d


@dataclass
class StudentConfig:
    model: str = "vit_base_patch16_224"  # timm name
    model_kwargs: dict = field(default_factory=dict)
    cpe_max_size: int = 2048
    register_multiple: int = 8
    mlp_version: str = "v2"
    mlp_hidden_size: int = 1520
    mlp_num_inner: int = 1
    drop_path: float = 0.0
    pos_dropout: float = 0.1
    cpe_random_crop: bool = True         # CPE's random position crop in training mode
    # sigma-reparametrisation of the ViT blocks' Linear layers during training:
    # W_eff = W * (softplus(scale) + 0.05) / sigma_max(W) (power iteration); export folds it
    spectral_reparam: bool = False


@dataclass
class PartitionConfig:
    name: str
    resolution: int
    batch_size: int                      # per rank
    teachers: Optional[list] = None      # names; None = every teacher (the v2.5 mode-switching fix)
    mosaic: list = field(default_factory=list)  # teachers whose canvas holds several student views
    ranks: Optional[list] = None         # ranks that train this partition; None = every rank
    crop_scale: tuple = (0.35, 1.0)
    # per-teacher override of TeacherConfig.resolution_mode for this partition:
    # 'native' | 'match' | a side length in pixels
    teacher_resolution: dict = field(default_factory=dict)
    # sample the student's side for each step from this set (C-RADIOv4); crops are made at
    # `resolution` and resized; 'match' teachers follow the sampled side, PHI-S keeps the
    # normaliser of `resolution`. None: always `resolution`
    resolutions: Optional[list] = None


@dataclass
class StageConfig:
    steps: int
    partitions: list = field(default_factory=list)  # list[PartitionConfig]


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.02
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    grad_clip: float = 1.0
    accumulation: int = 1


@dataclass
class PhiSConfig:
    enabled: bool = True
    update_every: int = 100              # own steps (batches that normaliser saw) between recomputes
    freeze_after: int = 3000             # own steps after which the transform is frozen
    # keep the target basis continuous across recomputes: 'procrustes' (signs, and rotation inside
    # groups of eigenvalues within align_tol * mean eigenvalue), 'sign', or 'none' (raw eigh)
    align: str = "procrustes"
    align_tol: float = 0.05


@dataclass
class DataConfig:
    path: str = ""                       # image folder, file list, or shards (dir/pattern/URLs)
    kind: str = "auto"                   # auto | folder | list | shards
    num_workers: int = 0
    flip: bool = True


@dataclass
class TrainConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: list = field(default_factory=list)  # list[TeacherConfig]
    stages: list = field(default_factory=list)    # list[StageConfig]
    optim: OptimConfig = field(default_factory=OptimConfig)
    phi_s: PhiSConfig = field(default_factory=PhiSConfig)
    data: DataConfig = field(default_factory=DataConfig)
    feature_loss: str = "mse"            # mse | hybrid (AM-RADIO's 0.9 cos + 0.1 smooth-L1)
    ema_decay: float = 0.9996            # 0 disables EMA
    export_ema: bool = True
    amp: bool = False                    # bf16 autocast (GPU)
    mosaic_pad: str = "zero"             # zero | teacher_mean (zero in each teacher's normalised space)
    vitdet_aug_prob: float = 0.0         # windowed-attention augmentation
    vitdet_aug_windows: list = field(default_factory=lambda: list(range(6, 17)))
    seed: int = 0
    out_dir: str = "runs/openradio"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    max_nonfinite: int = 10              # stop after this many skipped non-finite steps
    tensorboard: bool = True
    progress: bool = True
    device: str = ""                     # '' = cuda if available else cpu
    parallel: str = "ddp"                # ddp | fsdp (FSDP2 fully_shard)
    dist_timeout_s: Optional[float] = None  # collective / process-group timeout (None: torch's default)
    deterministic: bool = False

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def teacher(self, name: str) -> TeacherConfig:
        for t in self.teachers:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- construction from plain data ------------------------------------------------------------------
def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for a in args:
            try:
                return _convert(a, value, where)
            except (ValueError, TypeError):
                continue
        return value
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads '1e-4' (no dot) as a string
            value = float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is int and isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if tp is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


_LIST_ITEMS = {("TrainConfig", "teachers"): TeacherConfig, ("TrainConfig", "stages"): StageConfig,
               ("StageConfig", "partitions"): PartitionConfig}


def from_dict(cls, data: dict, where: str = "config"):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        item_cls = _LIST_ITEMS.get((cls.__name__, f.name))
        if item_cls is not None:
            if not isinstance(v, list):
                raise ValueError(f"{where}.{f.name}: expected a list")
            v = [_convert(item_cls, x, f"{where}.{f.name}[{i}]") for i, x in enumerate(v)]
        else:
            v = _convert(hints[f.name], v, f"{where}.{f.name}")
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for ov in overrides or []:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} must look like key.path=value")
        key, raw = ov.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.strip().split(".")
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[int(p)]
            else:
                node = node.setdefault(p, {})
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a training config must be a YAML mapping")
    data = apply_overrides(data, overrides or [])
    cfg = from_dict(TrainConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    names = [t.name for t in cfg.teachers]
    if not names:
        raise ValueError("config has no teachers")
    if len(set(names)) != len(names):
        raise ValueError(f"teacher names must be unique, got {names}")
    if not cfg.stages:
        raise ValueError("config has no stages (each stage: steps + partitions)")
    for si, st in enumerate(cfg.stages):
        if st.steps < 0:
            raise ValueError(f"stages[{si}].steps must be >= 0")
        if not st.partitions:
            raise ValueError(f"stages[{si}] has no partitions")
        for p in st.partitions:
            for t in (p.teachers or []) + list(p.mosaic):
                if t not in names:
                    raise ValueError(f"partition {p.name!r} names unknown teacher {t!r}; teachers: {names}")
            for t, mode in p.teacher_resolution.items():
                if t not in names:
                    raise ValueError(f"partition {p.name!r}: teacher_resolution names unknown teacher {t!r}")
                if mode not in ("native", "match") and not (isinstance(mode, int) and mode > 0):
                    raise ValueError(f"partition {p.name!r}: teacher_resolution[{t!r}] must be 'native', 'match' "
                                     f"or a size in pixels, got {mode!r}")
            if p.resolutions is not None and (not p.resolutions or not all(
                    isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in p.resolutions)):
                raise ValueError(f"partition {p.name!r}: resolutions must be a non-empty list of sizes in pixels, "
                                 f"got {p.resolutions!r}")
            for t in p.mosaic:
                if cfg.teacher(t).summary_weight:
                    raise ValueError(f"partition {p.name!r}: mosaic teacher {t!r} must have summary_weight 0 "
                                     "(a canvas of several views has no per-view summary)")
    if cfg.mosaic_pad not in ("zero", "teacher_mean"):
        raise ValueError(f"mosaic_pad must be 'zero' or 'teacher_mean', got {cfg.mosaic_pad!r}")
    if cfg.phi_s.align not in ("procrustes", "sign", "none"):
        raise ValueError(f"phi_s.align must be 'procrustes', 'sign' or 'none', got {cfg.phi_s.align!r}")
    if cfg.feature_loss not in ("mse", "hybrid"):
        raise ValueError(f"feature_loss must be 'mse' or 'hybrid', got {cfg.feature_loss!r}")
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {cfg.parallel!r}")


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
