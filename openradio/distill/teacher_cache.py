"""Teacher-feature cache: run a recipe's teachers once per image, train from the stored targets.

``openradio data cache-teachers --config RECIPE --data DATA --out CACHE``
(:func:`openradio.distill.cache_build.build_cache`)
runs every teacher the recipe uses at every (student crop, student side, teacher side) the recipe
asks for: every partition of every stage, every side of a partition that samples
``resolutions``. Training with ``data.teacher_cache=CACHE`` (and ``data.augment=false``) then reads
each batch's targets by sample key (:class:`TeacherCache`) and neither builds nor runs a teacher;
PHI-S statistics come from the cached features exactly as from live ones.

Layout::

    CACHE/cache-000000.tar   000000000.key.txt  000000000.c64.safetensors  000000000.c128.safetensors ...
    CACHE/cache-000000.json  that shard's sample keys, member offsets, and how far into the data it reaches
    CACHE/meta.json          what the cache is for (written first; a rerun resumes only if it matches)
    CACHE/index.json         meta + every shard's keys and offsets (written last: the cache is complete)

One member per (sample, student crop) holds that crop's tensors (``TEACHER/STUDENT_SIDE/TEACHER_SIDE
[/mosaic]/summary|features``, float16 by default, float32 on request); the index gives each
member's byte offset, so training reads exactly the members it needs. The tars are ordinary
webdataset shards (``webdataset.WebDataset`` reads them too).

What the cache can stand in for: the teachers see a function of the image alone only without
augmentation, so the cache requires ``data.augment=false`` (resize + centre crop, no flip). The
student side is unchanged: CPE random crop, position dropout and ViTDet augmentation still apply.

Mosaic teachers (a partition's ``mosaic``): live training tiles several views of a batch onto one
teacher canvas, so a view's features depend on its neighbours in that batch (SAM's global
attention sees the whole canvas). A per-image cache cannot store that; it stores each view
*alone* on its canvas (top-left, the same padding, the same canvas size). Those targets are what
the mosaic approximates, but they are not equal to a live mosaic's: a cached run equals a live run
only for partitions without mosaic teachers.

Resume: shards are written one at a time, atomically, each with a sidecar of its keys; a killed
run, rerun with the same recipe and data, keeps the finished shards and continues after them.
``overwrite=True`` starts again. A folder holding a cache for other teachers or data is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Union

import torch
from safetensors.torch import load
from torch import Tensor

from openradio.distill import partitions as P
from openradio.distill.config import TrainConfig
from openradio.distill.data import ImageListDataset, build_dataset
from openradio.distill.shards import ShardDataset

__all__ = [
    "FORMAT",
    "TeacherSpec",
    "CacheEntry",
    "recipe_entries",
    "teacher_identity",
    "data_signature",
    "weights_fingerprint",
    "jsonable",
    "TeacherCache",
]

FORMAT = "openradio-teacher-cache/1"
INDEX_NAME = "index.json"
META_NAME = "meta.json"
SHARD_PATTERN = "cache-%06d.tar"
TRANSFORM = "resize-shorter-side+centre-crop/bilinear-antialias;student-resize/bilinear-antialias"
HOW_TO_BUILD = "openradio data cache-teachers --config RECIPE [key=value ...] --out DIR"
PathLike = Union[str, os.PathLike]


class TeacherSpec(NamedTuple):
    """What training needs of a teacher it does not run: its name and shapes."""

    name: str
    patch_size: int
    input_size: int
    summary_dim: Optional[int]
    feature_dim: int


@dataclass(frozen=True, order=True)
class CacheEntry:
    """One target the recipe needs: ``teacher`` at ``teacher_res`` px on a student batch cropped at
    ``crop`` px and resized to ``student`` px (alone on a mosaic canvas when ``mosaic``)."""

    teacher: str
    crop: int
    student: int
    teacher_res: int
    mosaic: bool

    @property
    def name(self) -> str:  # inside the crop's member
        return f"{self.teacher}/{self.student}/{self.teacher_res}" + ("/mosaic" if self.mosaic else "")

    def describe(self) -> str:
        return (
            f"{self.teacher} at {self.teacher_res} px on {self.crop} px crops"
            + (f" resized to {self.student} px" if self.student != self.crop else "")
            + (" (mosaic view)" if self.mosaic else "")
        )


def jsonable(x: Any) -> Any:
    """Plain JSON data (tuples as lists), so recorded and recomputed values compare equal."""
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def recipe_entries(cfg: TrainConfig, specs: Mapping[str, Any], student_patch: int) -> list[CacheEntry]:
    """Every (teacher, crop, student side, teacher side, mosaic) the recipe trains with."""
    out = set()
    for st in cfg.stages:
        for part in st.partitions:
            for side in part.resolutions or [part.resolution]:
                for name in P.partition_teachers(cfg, part):
                    t = specs[name]
                    res = P.teacher_resolution(cfg, part, name, t.input_size, t.patch_size, student_patch, int(side))
                    out.add(CacheEntry(name, int(part.resolution), int(side), int(res), name in part.mosaic))
    return sorted(out)


def _random_weights(t) -> bool:
    """Whether a teacher config gives randomly initialised weights (then the recipe's seed picks them)."""
    return t.weights is None and (t.tiny or bool(t.overrides) or t.pretrained in (False, "", "none"))


def _file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def teacher_identity(cfg: TrainConfig) -> dict:
    """What decides the teachers' outputs, from the config alone (training checks it without
    building a teacher): each teacher's build arguments (and the sha256 of a local ``weights``
    file), the seed when weights are random, and the settings of the path from image to teacher."""
    teachers = {
        t.name: {"build": jsonable(t.build_kwargs()), "random_weights": _random_weights(t)} for t in cfg.teachers
    }
    for t in cfg.teachers:
        if t.weights and Path(t.weights).is_file():
            teachers[t.name]["weights_sha256"] = _file_sha256(t.weights)
    return {
        "teachers": teachers,
        "seed": cfg.seed if any(v["random_weights"] for v in teachers.values()) else None,
        "mosaic_pad": cfg.mosaic_pad,
        "amp": bool(cfg.amp),
        "transform": TRANSFORM,
    }


def data_signature(path: PathLike, kind: str = "auto") -> dict:
    """What identifies the training data: shard names and counts, or the image keys' hash."""
    ds = build_dataset(str(path), kind=kind, transform=None, repeat=False, shuffle=False)
    if isinstance(ds, ShardDataset):
        return {
            "kind": "shards",
            "shards": [[Path(u).name, c] for u, c in zip(ds.urls, ds.counts or [None] * len(ds.urls))],
        }
    assert isinstance(ds, ImageListDataset)
    keys = "\n".join(ds.sample_key(i) for i in range(len(ds)))
    return {"kind": "images", "count": len(ds), "keys_sha256": hashlib.sha256(keys.encode()).hexdigest()}


def weights_fingerprint(teachers: Mapping[str, torch.nn.Module]) -> dict[str, str]:
    """sha256 of each teacher's weights (names, dtypes, shapes and bytes of its state dict)."""
    out = {}
    for name, module in sorted(teachers.items()):
        h = hashlib.sha256()
        for k, v in sorted(module.state_dict().items()):
            v = v.detach().cpu().contiguous()
            h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
            h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


class TeacherCache:
    """Read targets from a cache written by :func:`openradio.distill.cache_build.build_cache`.

    ``check(cfg, student_patch)`` refuses a cache made for other teachers, data or resolutions
    (one line that says what to do); ``lookup(keys, ...)`` returns the batch's ``(summary or None,
    features NCHW)`` as float32."""

    def __init__(self, path: PathLike):
        self.dir = Path(path)
        if self.dir.suffix == ".json":
            self.dir = self.dir.parent
        index = self.dir / INDEX_NAME
        if not index.is_file():
            partial = (self.dir / META_NAME).is_file()
            unfinished = " (it is unfinished: rerun the same command to complete it)" if partial else ""
            raise FileNotFoundError(f"{self.dir} is not a teacher cache{unfinished}; build one with `{HOW_TO_BUILD}`")
        self.index = json.loads(index.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{index} is not a teacher cache index ({FORMAT}); build one with `{HOW_TO_BUILD}`")
        self.where: dict[str, tuple[int, int]] = {}
        for si, s in enumerate(self.index["shards"]):
            for j, k in enumerate(s["keys"]):
                self.where[k] = (si, j)
        self._files: dict[int, Any] = {}
        # the members of the batch looked up last: a partition's teachers read one member per
        # sample once; memory stays at one batch of members
        self._memo: dict[tuple[str, int], dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.where)

    def _rebuild(self, why: str) -> ValueError:
        return ValueError(
            f"teacher cache {self.dir} {why}; rebuild it for this recipe and data with "
            f"`{HOW_TO_BUILD} --overwrite`, or drop data.teacher_cache to run the teachers live"
        )

    def teacher_specs(self, cfg: TrainConfig) -> dict[str, TeacherSpec]:
        """The recipe's teachers' shapes, after checking the cache was made with the same teachers."""
        ident = teacher_identity(cfg)
        have = self.index["identity"]
        for t in cfg.teachers:
            mine, theirs = ident["teachers"][t.name], have["teachers"].get(t.name)
            if theirs is None:
                raise self._rebuild(f"has no teacher {t.name!r} (it holds {sorted(have['teachers'])})")
            if mine["build"] != theirs["build"]:
                raise self._rebuild(
                    f"was made with another {t.name!r} teacher ({theirs['build']} there, {mine['build']} here)"
                )
            if mine != theirs:
                raise self._rebuild(f"was made with other {t.name!r} weights (the weights file {t.weights} changed)")
            if mine["random_weights"] and ident["seed"] != have["seed"]:
                raise self._rebuild(
                    f"holds the randomly initialised {t.name!r} of seed {have['seed']}, "
                    f"this run's seed is {ident['seed']}"
                )
        for k in ("mosaic_pad", "amp", "transform"):
            if ident[k] != have[k]:
                raise self._rebuild(f"was made with {k}={have[k]!r}, this recipe has {ident[k]!r}")
        return {t.name: TeacherSpec(**self.index["specs"][t.name]) for t in cfg.teachers}

    def check(self, cfg: TrainConfig, student_patch: int) -> None:
        """The cache holds every target of ``cfg`` for the data of ``cfg.data.path``."""
        specs = self.teacher_specs(cfg)
        have = {CacheEntry(**e) for e in self.index["entries"]}
        for e in recipe_entries(cfg, specs, student_patch):
            if e not in have:
                raise self._rebuild(f"lacks {e.describe()}")
        sig = data_signature(cfg.data.path, cfg.data.kind)
        if sig != self.index["data"]["signature"]:
            raise self._rebuild(f"was made from other data ({self.index['data']['path']}), not {cfg.data.path}")

    def _read(self, key: str, crop: int) -> dict[str, Tensor]:
        memo_key = (key, crop)
        if memo_key in self._memo:
            return self._memo[memo_key]
        if key not in self.where:
            raise KeyError(
                f"sample {key!r} is not in teacher cache {self.dir}: the data changed since the cache was "
                f"built; rebuild it with `{HOW_TO_BUILD} --overwrite`"
            )
        si, j = self.where[key]
        shard = self.index["shards"][si]
        members = shard["members"].get(str(crop))
        if members is None:
            raise self._rebuild(f"has no {crop} px crops")
        offset, size = members[j]
        f = self._files.get(si)
        if f is None:
            f = self._files[si] = open(self.dir / shard["name"], "rb")
        f.seek(offset)
        tensors = load(f.read(size))
        self._memo[memo_key] = tensors
        return tensors

    def lookup(
        self,
        keys: list[str],
        teacher: str,
        crop: int,
        student: int,
        teacher_res: int,
        mosaic: bool,
        device: Optional[torch.device] = None,
    ) -> tuple[Optional[Tensor], Tensor]:
        """The batch's targets for one entry: ``(summary (B, D) or None, features (B, C, h, w))``."""
        if keys is None:
            raise ValueError("a cached run needs each batch's sample keys")
        name = CacheEntry(teacher, crop, student, teacher_res, mosaic).name
        wanted = {(k, crop) for k in keys}
        if not wanted <= self._memo.keys():  # a new batch: forget the previous one
            self._memo = {k: v for k, v in self._memo.items() if k in wanted}
        blobs = [self._read(k, crop) for k in keys]
        if f"{name}/features" not in blobs[0]:
            raise self._rebuild(f"lacks {CacheEntry(teacher, crop, student, teacher_res, mosaic).describe()}")
        feats = torch.stack([b[f"{name}/features"] for b in blobs]).to(device=device, dtype=torch.float32)
        summary = None
        if f"{name}/summary" in blobs[0]:
            summary = torch.stack([b[f"{name}/summary"] for b in blobs]).to(device=device, dtype=torch.float32)
        return summary, feats

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
