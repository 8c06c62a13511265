"""One typed training config: dataclasses, loaded from YAML, overridable from the command line.

    cfg = load_config("configs/radio_v2.5-b.yaml", ["optim.lr=5e-4", "stages.0.steps=1000"])

Overrides are ``dotted.path=value`` with YAML-parsed values; list items are addressed by index.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml


@dataclass
class TeacherConfig:
    name: str
    type: str = ""  # open_clip | dino_v2 | sam | equivariant (default: name)
    model: str = ""
    pretrained: Union[str, bool, None] = None
    input_size: Optional[int] = None  # native side in pixels
    weights: Optional[str] = None  # local weights file
    tiny: bool = False  # small random configuration of the same architecture
    overrides: dict = field(default_factory=dict)
    summary_weight: float = 1.0  # 0 for SAM: no summary target
    feature_weight: float = 1.0
    fd_upsample_factor: int = 1  # student feature head emits a u x finer grid
    # 'native': run at input_size and resample the larger grid down after the head;
    # 'match': run at student_res * teacher_patch / student_patch so the grids line up
    resolution_mode: str = "native"  # a partition's teacher_resolution overrides it
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
    cpe_random_crop: bool = True  # CPE's random position crop in training mode
    # sigma-reparametrisation of the ViT blocks' Linear layers during training:
    # W_eff = W * (softplus(scale) + 0.05) / sigma_max(W) (power iteration); export folds it
    spectral_reparam: bool = False


@dataclass
class PartitionConfig:
    name: str
    resolution: int
    batch_size: int  # per rank
    teachers: Optional[list] = None  # names; None = every teacher (the v2.5 mode-switching fix)
    mosaic: list = field(default_factory=list)  # teachers whose canvas holds several student views
    ranks: Optional[list] = None  # ranks that train this partition; None = every rank
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
    update_every: int = 100  # own steps (batches that normaliser saw) between recomputes
    freeze_after: int = 3000  # own steps after which the transform is frozen
    # keep the target basis continuous across recomputes: 'procrustes' (signs, and rotation inside
    # groups of eigenvalues within align_tol * mean eigenvalue), 'sign', or 'none' (raw eigh)
    align: str = "procrustes"
    align_tol: float = 0.05


@dataclass
class DataConfig:
    path: str = ""  # image folder, file list, or shards (dir/pattern/URLs)
    kind: str = "auto"  # auto | folder | list | shards
    num_workers: int = 0
    flip: bool = True
    # false: no augmentation, every partition sees each image resized (shorter side) and centre-cropped
    # to its resolution, never flipped (the student's CPE random crop still applies)
    augment: bool = True
    # a folder written by `openradio data cache-teachers`: targets are read from it and the teachers
    # are neither built nor run (needs augment: false)
    teacher_cache: str = ""


@dataclass
class TrainConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: list = field(default_factory=list)  # list[TeacherConfig]
    stages: list = field(default_factory=list)  # list[StageConfig]
    optim: OptimConfig = field(default_factory=OptimConfig)
    phi_s: PhiSConfig = field(default_factory=PhiSConfig)
    data: DataConfig = field(default_factory=DataConfig)
    feature_loss: str = "mse"  # mse | hybrid (AM-RADIO's 0.9 cos + 0.1 smooth-L1)
    ema_decay: float = 0.9996  # 0 disables EMA
    export_ema: bool = True
    amp: bool = False  # bf16 autocast (GPU)
    mosaic_pad: str = "zero"  # zero | teacher_mean (zero in each teacher's normalised space)
    vitdet_aug_prob: float = 0.0  # windowed-attention augmentation
    vitdet_aug_windows: list = field(default_factory=lambda: list(range(6, 17)))
    seed: int = 0
    out_dir: str = "runs/openradio"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    max_nonfinite: int = 10  # stop after this many skipped non-finite steps
    tensorboard: bool = True
    progress: bool = True
    device: str = ""  # '' = cuda if available else cpu
    parallel: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard)
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
def shipped_recipe(name: str) -> Path:
    """A recipe shipped with the package (``openradio/configs/<name>.yaml``: tiny, radio_v2.5-b,
    radio_v2.5-l); the repository's ``configs/`` is the same folder."""
    path = Path(str(resources.files("openradio") / "configs" / f"{name.removesuffix('.yaml')}.yaml"))
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no shipped recipe {name!r}; shipped: {', '.join(known)}")
    return path


class ConfigError(ValueError):
    """A mistake in a config, located by its dotted path (``stages.0.partitions.1.resolution``).

    :func:`load_config` turns it into one line in the config's own words: the override that set the
    value (``stages.0.steps=abc: expected an integer, got 'abc'``), else the file and
    ``path=value``."""

    def __init__(self, path: tuple, problem: str, value: Any = None, show_value: bool = True):
        self.path = tuple(str(p) for p in path)
        self.problem = problem
        self.value = value
        self.show_value = show_value
        super().__init__(self.render())

    def render(self, override: Optional[str] = None, source: str = "") -> str:
        if override is not None:
            return f"{override}: {self.problem}"
        where = ".".join(self.path)
        if self.show_value and where:
            where = f"{where}={_show(self.value)}"
        head = f"{source}: " if source else ""
        return f"{head}{where}: {self.problem}" if where else f"{head}{self.problem}"


def _show(v: Any) -> str:
    """A value as it would be typed in YAML flow style."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_show(x)}" for k, x in v.items()) + "}"
    return str(v)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


def _convert(tp, value, where: tuple):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping of {tp.__name__} keys, got {value!r}", value)
        return from_dict(tp, value, where)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        err = None
        for a in args:
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                err = err or e
        raise err
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(where, f"expected an integer, got {value!r}", value)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(where, f"expected an integer, got {value!r}", value) from None
        if not float(value).is_integer():
            raise ConfigError(where, f"expected an integer, got {value!r}", value)
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads '1e-4' (no dot) as a string
                value = float(value)
            except ValueError:
                raise ConfigError(where, f"expected a number, got {value!r}", value) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"expected a number, got {value!r}", value)
        return float(value)
    if tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected a list, got {value!r}", value)
        return tuple(value)
    if tp is list and not isinstance(value, list):
        raise ConfigError(where, f"expected a list, got {value!r}", value)
    if tp is dict and not isinstance(value, dict):
        raise ConfigError(where, f"expected a mapping, got {value!r}", value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(where, f"expected true or false, got {value!r}", value)
    if tp is str and not isinstance(value, str):
        raise ConfigError(where, f"expected a string, got {value!r}", value)
    return value


_LIST_ITEMS = {
    ("TrainConfig", "teachers"): TeacherConfig,
    ("TrainConfig", "stages"): StageConfig,
    ("StageConfig", "partitions"): PartitionConfig,
}
# where each config key lives, for "unknown key" hints
_HOMES = {
    "StudentConfig": "student",
    "TeacherConfig": "teachers.N",
    "StageConfig": "stages.N",
    "PartitionConfig": "stages.N.partitions.N",
    "OptimConfig": "optim",
    "PhiSConfig": "phi_s",
    "DataConfig": "data",
    "TrainConfig": "",
}


def _home_of(key: str, cls) -> Optional[str]:
    for other in (
        StudentConfig,
        TeacherConfig,
        StageConfig,
        PartitionConfig,
        OptimConfig,
        PhiSConfig,
        DataConfig,
        TrainConfig,
    ):
        if other is not cls and key in {f.name for f in dataclasses.fields(other)}:
            home = _HOMES[other.__name__]
            return f"{home}.{key}" if home else key
    return None


def from_dict(cls, data: dict, where: tuple = ()):
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        homes = [h for h in (_home_of(k, cls) for k in unknown) if h]
        hint = (
            f" ({', '.join(unknown)} live{'s' if len(unknown) == 1 else ''} under {', '.join(homes)})"
            if len(homes) == len(unknown)
            else ""
        )
        raise ConfigError(
            where + (unknown[0],), f"unknown key(s) {unknown}{hint}; allowed: {sorted(names)}", show_value=False
        )
    missing = [
        f.name
        for f in fields
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(where, f"missing key(s) {missing}", show_value=False)
    kwargs = {}
    for f in fields:
        if f.name not in data:
            continue
        v = data[f.name]
        item_cls = _LIST_ITEMS.get((cls.__name__, f.name))
        if item_cls is not None:
            if not isinstance(v, list):
                raise ConfigError(where + (f.name,), f"expected a list, got {v!r}", v)
            v = [_convert(item_cls, x, where + (f.name, i)) for i, x in enumerate(v)]
        else:
            v = _convert(hints[f.name], v, where + (f.name,))
        kwargs[f.name] = v
    return cls(**kwargs)


def _items(n: int) -> str:
    return "no items" if n == 0 else "1 item: 0" if n == 1 else f"{n} items: 0..{n - 1}"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for ov in overrides or []:
        if "=" not in ov:
            raise ValueError(f"override {ov!r} must look like key.path=value")
        key, raw = ov.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ValueError(f"{ov}: the value is not valid YAML (quote it: {key}='...')") from None
        parts = key.strip().split(".")
        if not all(parts):
            raise ValueError(f"{ov}: key.path must be names and item numbers separated by single dots")
        node: Any = data
        for i, p in enumerate(parts):
            here = ".".join(parts[:i])
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not p.isdigit():
                    raise ValueError(f"{ov}: {here} is a list, address its items by number ({here}.0, {here}.1, ...)")
                if int(p) >= len(node):
                    raise ValueError(f"{ov}: there is no {here}.{p} ({here} has {_items(len(node))})")
                if last:
                    node[int(p)] = value
                else:
                    node = node[int(p)]
            elif isinstance(node, dict):
                if last:
                    node[p] = value
                else:
                    node = node.setdefault(p, {})
            else:
                raise ValueError(f"{ov}: {here} is {_kind(node)}, not a mapping")
    return data


def _override_for(path: tuple, overrides: list[str]) -> Optional[str]:
    """The last override that set ``path`` (or a value containing it, or inside it)."""
    for ov in reversed(overrides or []):
        if "=" not in ov:
            continue
        parts = tuple(ov.split("=", 1)[0].strip().split("."))
        n = min(len(parts), len(path))
        if parts[:n] == path[:n]:
            return ov
    return None


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ValueError(f"{p}: not valid YAML{at}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a training config must be a YAML mapping")
    data = apply_overrides(data, overrides or [])
    try:
        cfg = from_dict(TrainConfig, data)
        validate(cfg)
    except ConfigError as e:
        ov = _override_for(e.path, overrides or []) if e.path else None
        raise ValueError(e.render(ov, source=str(path) if path and ov is None else "")) from None
    return cfg


def student_patch_size(cfg: TrainConfig) -> Optional[int]:
    """The student's patch size from ``student.model_kwargs.patch_size`` or the timm name
    (``vit_base_patch16_224`` -> 16); None when neither says."""
    ps = cfg.student.model_kwargs.get("patch_size")
    if isinstance(ps, int) and not isinstance(ps, bool):
        return ps
    m = re.search(r"patch(\d+)", cfg.student.model)
    return int(m.group(1)) if m else None


def _at_least(path: tuple, value, low) -> None:
    if value < low:
        raise ConfigError(path, f"must be at least {low}", value)


def _in_unit(path: tuple, value, closed: bool) -> None:
    if not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ConfigError(path, f"must be in [0, 1{']' if closed else ')'}", value)


def validate(cfg: TrainConfig) -> None:
    """Every value checked before anything is built; errors carry the value's dotted path."""
    names = [t.name for t in cfg.teachers]
    if not names:
        raise ConfigError(("teachers",), "config has no teachers", show_value=False)
    if len(set(names)) != len(names):
        raise ConfigError(("teachers",), f"teacher names must be unique, got {names}", show_value=False)
    types = None
    for i, t in enumerate(cfg.teachers):
        if types is None:
            # lazy: openradio.teachers imports torch (2 s); reading a config stays light
            from openradio.teachers import TEACHER_TYPES as types
        kind = t.type or t.name
        if kind not in types:
            field_ = "type" if t.type else "name"
            raise ConfigError(("teachers", i, field_), f"unknown teacher type; known types: {sorted(types)}", kind)
        if t.fd_upsample_factor < 1:
            raise ConfigError(("teachers", i, "fd_upsample_factor"), "must be at least 1", t.fd_upsample_factor)
        if t.resolution_mode not in ("native", "match"):
            raise ConfigError(("teachers", i, "resolution_mode"), "must be 'native' or 'match'", t.resolution_mode)
    if not cfg.stages:
        raise ConfigError(("stages",), "config has no stages (each stage: steps + partitions)", show_value=False)
    ps = student_patch_size(cfg)
    for si, st in enumerate(cfg.stages):
        _at_least(("stages", si, "steps"), st.steps, 0)
        if not st.partitions:
            raise ConfigError(("stages", si, "partitions"), "a stage needs at least one partition", show_value=False)
        for pi, p in enumerate(st.partitions):
            at = ("stages", si, "partitions", pi)
            if p.resolution <= 0:
                raise ConfigError(
                    at + ("resolution",), f"must be a positive multiple of {ps or 'the patch size'}", p.resolution
                )
            if ps and p.resolution % ps:
                raise ConfigError(
                    at + ("resolution",), f"must be a multiple of {ps} (the student's patch size)", p.resolution
                )
            _at_least(at + ("batch_size",), p.batch_size, 1)
            cs = p.crop_scale
            if not (
                len(cs) == 2
                and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in cs)
                and 0 < cs[0] <= cs[1] <= 1
            ):
                raise ConfigError(at + ("crop_scale",), "must be two numbers 0 < low <= high <= 1", list(cs))
            if p.ranks is not None and not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in p.ranks
            ):
                raise ConfigError(at + ("ranks",), "must be a list of rank numbers >= 0", p.ranks)
            for key in ("teachers", "mosaic"):
                for t in getattr(p, key) or []:
                    if t not in names:
                        raise ConfigError(
                            at + (key,),
                            f"partition {p.name!r} names unknown teacher {t!r}; teachers: {names}",
                            getattr(p, key),
                        )
            for t, mode in p.teacher_resolution.items():
                if t not in names:
                    raise ConfigError(
                        at + ("teacher_resolution", t),
                        f"partition {p.name!r}: teacher_resolution names unknown teacher {t!r}",
                        mode,
                    )
                if mode not in ("native", "match") and not (isinstance(mode, int) and mode > 0):
                    raise ConfigError(
                        at + ("teacher_resolution", t), "must be 'native', 'match' or a size in pixels", mode
                    )
            if p.resolutions is not None and (
                not p.resolutions
                or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in p.resolutions)
            ):
                raise ConfigError(at + ("resolutions",), "must be a non-empty list of sizes in pixels", p.resolutions)
            if p.resolutions is not None and ps and any(r % ps for r in p.resolutions):
                raise ConfigError(
                    at + ("resolutions",),
                    f"every size must be a multiple of {ps} (the student's patch size)",
                    p.resolutions,
                )
            for t in p.mosaic:
                if cfg.teacher(t).summary_weight:
                    raise ConfigError(
                        at + ("mosaic",),
                        f"mosaic teacher {t!r} must have summary_weight 0 "
                        "(a canvas of several views has no per-view summary)",
                        p.mosaic,
                    )
    o = cfg.optim
    for k in ("lr", "min_lr", "weight_decay", "grad_clip"):
        _at_least(("optim", k), getattr(o, k), 0)
    _at_least(("optim", "warmup_steps"), o.warmup_steps, 0)
    _at_least(("optim", "accumulation"), o.accumulation, 1)
    if not (len(o.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas)):
        raise ConfigError(("optim", "betas"), "must be two numbers in [0, 1)", list(o.betas))
    if o.eps <= 0:
        raise ConfigError(("optim", "eps"), "must be positive", o.eps)
    _at_least(("phi_s", "update_every"), cfg.phi_s.update_every, 1)
    _at_least(("phi_s", "freeze_after"), cfg.phi_s.freeze_after, 0)
    _in_unit(("ema_decay",), cfg.ema_decay, closed=False)
    _in_unit(("vitdet_aug_prob",), cfg.vitdet_aug_prob, closed=True)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in cfg.vitdet_aug_windows):
        raise ConfigError(("vitdet_aug_windows",), "must be a list of window sizes >= 1", cfg.vitdet_aug_windows)
    for k in ("log_every", "checkpoint_every", "keep_checkpoints"):
        _at_least((k,), getattr(cfg, k), 1)
    _at_least(("max_nonfinite",), cfg.max_nonfinite, 0)
    if cfg.data.kind not in ("auto", "folder", "list", "shards"):
        raise ConfigError(("data", "kind"), "must be one of auto, folder, list, shards", cfg.data.kind)
    _at_least(("data", "num_workers"), cfg.data.num_workers, 0)
    if cfg.data.teacher_cache and cfg.data.augment:
        raise ConfigError(
            ("data", "teacher_cache"),
            "cached teacher targets are per image, so they need "
            "data.augment=false (resize + centre crop, no flip); set data.augment=false or drop "
            "data.teacher_cache to run the teachers live",
            cfg.data.teacher_cache,
        )
    if cfg.mosaic_pad not in ("zero", "teacher_mean"):
        raise ConfigError(("mosaic_pad",), "must be 'zero' or 'teacher_mean'", cfg.mosaic_pad)
    if cfg.phi_s.align not in ("procrustes", "sign", "none"):
        raise ConfigError(("phi_s", "align"), "must be 'procrustes', 'sign' or 'none'", cfg.phi_s.align)
    if not cfg.phi_s.align_tol >= 0:
        raise ConfigError(("phi_s", "align_tol"), "must be >= 0", cfg.phi_s.align_tol)
    if cfg.feature_loss not in ("mse", "hybrid"):
        raise ConfigError(("feature_loss",), "must be 'mse' or 'hybrid'", cfg.feature_loss)
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ConfigError(("parallel",), "must be 'ddp' or 'fsdp'", cfg.parallel)
    if cfg.dist_timeout_s is not None and cfg.dist_timeout_s <= 0:
        raise ConfigError(("dist_timeout_s",), "must be positive (or null for torch's default)", cfg.dist_timeout_s)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
