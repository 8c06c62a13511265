"""Teacher-feature cache: run a recipe's teachers once per image, train from the stored targets.

``openradio data cache-teachers --config RECIPE --data DATA --out CACHE`` (:func:`build_cache`)
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

import contextlib
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Union

import torch
import webdataset as wds
from safetensors.torch import load, save
from torch import Tensor
from tqdm.auto import tqdm

from openradio.atomicio import atomic_path, write_text
from openradio.distill import partitions as P
from openradio.distill.config import TrainConfig, student_patch_size
from openradio.distill.data import ImageListDataset, build_dataset
from openradio.distill.mosaic import mosaic_pad_value, pack_mosaic, unpack_features
from openradio.distill.shards import ShardDataset
from openradio.distill.teachers import build_teachers
from openradio.distill.transforms import ResizeCenterCrop, resize_square

__all__ = ["FORMAT", "TeacherSpec", "CacheEntry", "recipe_entries", "teacher_identity", "data_signature",
           "weights_fingerprint", "build_cache", "TeacherCache"]

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
        return (f"{self.teacher} at {self.teacher_res} px on {self.crop} px crops"
                + (f" resized to {self.student} px" if self.student != self.crop else "")
                + (" (mosaic view)" if self.mosaic else ""))


def _json(x: Any) -> Any:
    """Plain JSON data (tuples as lists), so recorded and recomputed values compare equal."""
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def recipe_entries(cfg: TrainConfig, specs: Mapping[str, Any], student_patch: int) -> list[CacheEntry]:
    """Every (teacher, crop, student side, teacher side, mosaic) the recipe trains with."""
    out = set()
    for st in cfg.stages:
        for part in st.partitions:
            for side in (part.resolutions or [part.resolution]):
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
    teachers = {t.name: {"build": _json(t.build_kwargs()), "random_weights": _random_weights(t)} for t in cfg.teachers}
    for t in cfg.teachers:
        if t.weights and Path(t.weights).is_file():
            teachers[t.name]["weights_sha256"] = _file_sha256(t.weights)
    return {"teachers": teachers, "seed": cfg.seed if any(v["random_weights"] for v in teachers.values()) else None,
            "mosaic_pad": cfg.mosaic_pad, "amp": bool(cfg.amp), "transform": TRANSFORM}


def data_signature(path: PathLike, kind: str = "auto") -> dict:
    """What identifies the training data: shard names and counts, or the image keys' hash."""
    ds = build_dataset(str(path), kind=kind, transform=None, repeat=False, shuffle=False)
    if isinstance(ds, ShardDataset):
        return {"kind": "shards", "shards": [[Path(u).name, c] for u, c in
                                             zip(ds.urls, ds.counts or [None] * len(ds.urls))]}
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


def _specs_of(teachers: Mapping[str, Any]) -> dict[str, TeacherSpec]:
    return {n: TeacherSpec(n, int(t.patch_size), int(t.input_size),
                           None if t.summary_dim is None else int(t.summary_dim), int(t.feature_dim))
            for n, t in teachers.items()}


def _source(path: str, kind: str) -> tuple[Iterator[tuple[Optional[str], Optional[Tensor]]], Optional[int]]:
    """``(key, image)`` of every sample of the data in a fixed order (``(key or None, None)`` when
    unreadable), and how many there are (None when unknown)."""
    ds = build_dataset(path, kind=kind, transform=None, repeat=False, shuffle=False)
    if isinstance(ds, ShardDataset):
        return ((it.get("key"), it["image"]) for it in ds), ds.num_samples

    def images():
        for i in range(len(ds)):
            item = ds[i]
            yield ds.sample_key(i), (item["image"] if item is not None else None)
    return images(), len(ds)


def _write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1))


def _member_offsets(tar_path: Path) -> dict[str, list[int]]:
    with tarfile.open(tar_path) as tf:
        return {m.name: [int(m.offset_data), int(m.size)] for m in tf.getmembers() if m.isfile()}


class _ShardWriter:
    """One cache shard being written: samples go straight into a temporary tar (memory holds one
    batch of targets, not a shard), renamed into place and described by its sidecar (keys, member
    offsets, data position) when the shard is complete."""

    def __init__(self, out: Path, number: int, crops: list[int]):
        self.out, self.number, self.crops = out, number, crops
        self.name = SHARD_PATTERN % number
        self._stack = contextlib.ExitStack()
        self.tmp = self._stack.enter_context(atomic_path(out / self.name))
        self._tar = self._stack.enter_context(wds.TarWriter(str(self.tmp)))
        self.keys: list[str] = []

    def _member(self, j: int) -> str:
        return f"{self.number:06d}{j:06d}"

    def write(self, key: str, blobs: dict[int, bytes]) -> None:
        rec: dict[str, Any] = {"__key__": self._member(len(self.keys)), "key.txt": key}
        rec.update({f"c{c}.safetensors": blobs[c] for c in self.crops})
        self._tar.write(rec)
        self.keys.append(key)

    def finish(self, consumed: int, left_out: list) -> dict:
        self._stack.close()  # closes the tar, then renames it into place
        offsets = _member_offsets(self.out / self.name)
        side = {"name": self.name, "count": len(self.keys), "keys": self.keys, "consumed": consumed,
                "left_out": left_out,
                "members": {str(c): [offsets[f"{self._member(j)}.c{c}.safetensors"] for j in range(len(self.keys))]
                            for c in self.crops}}
        _write_json(self.out / self.name.replace(".tar", ".json"), side)
        return side

    def abort(self) -> None:
        self._tar.close()
        self.tmp.unlink(missing_ok=True)


@torch.no_grad()
def _targets(batch: list[Tensor], entries: list[CacheEntry], teachers: Mapping[str, Any], cfg: TrainConfig,
             device: torch.device, dtype: torch.dtype) -> list[dict[int, bytes]]:
    """Each image's members: ``{crop: safetensors bytes}``, computed on the path training takes."""
    tensors: list[dict[int, dict[str, Tensor]]] = [dict() for _ in batch]
    for crop in sorted({e.crop for e in entries}):
        tf = ResizeCenterCrop(crop)
        x = torch.stack([tf(img) for img in batch]).to(device)  # what the data stream yields
        for e in (e for e in entries if e.crop == crop):
            xs = resize_square(x, e.student)
            teacher = teachers[e.teacher]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                if e.mosaic:  # each view alone on its canvas (see the module doc)
                    pad = mosaic_pad_value(teacher, cfg.mosaic_pad)
                    packed = [pack_mosaic(xs[i:i + 1], e.teacher_res, teacher.patch_size, pad_value=pad)
                              for i in range(len(batch))]
                    canv = teacher(torch.cat([c for c, _ in packed])).features
                    summary = None
                    feats = torch.cat([unpack_features(canv[i:i + 1], lay) for i, (_, lay) in enumerate(packed)])
                else:
                    summary, feats = teacher(xs, resolution=e.teacher_res)
            for i in range(len(batch)):
                d = tensors[i].setdefault(crop, {})
                d[f"{e.name}/features"] = feats[i].to("cpu", dtype).clone()
                if summary is not None:
                    d[f"{e.name}/summary"] = summary[i].to("cpu", dtype).clone()
    return [{c: save(t) for c, t in per.items()} for per in tensors]


def build_cache(cfg: TrainConfig, out_dir: PathLike, *, data_path: Optional[PathLike] = None,
                teachers: Optional[Mapping[str, Any]] = None, dtype: str = "float16", batch_size: int = 16,
                max_count: int = 1000, overwrite: bool = False, device: Optional[str] = None,
                progress: bool = True) -> Path:
    """Run ``cfg``'s teachers once per image of ``data_path`` (default ``cfg.data.path``) at every
    entry of :func:`recipe_entries` and write the cache to ``out_dir``; returns its index path.

    ``teachers``: already built teachers (default: built from ``cfg`` as the trainer does).
    A partial cache of the same recipe and data in ``out_dir`` is resumed; a complete one is left
    as is (``overwrite=True`` rebuilds either); one made for anything else is refused."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"cache dtype must be float16 or float32, got {dtype!r}")
    if batch_size < 1 or max_count < 1:
        raise ValueError(f"batch_size and max_count must be at least 1, got {batch_size} and {max_count}")
    path = str(data_path or cfg.data.path)
    if not path:
        raise ValueError("no data to cache: pass --data PATH (or set data.path in the recipe)")
    dev = torch.device(device or cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    teachers = dict(teachers) if teachers is not None else build_teachers(cfg, dev)
    for t in teachers.values():
        t.to(dev)
    specs = _specs_of(teachers)
    sp = student_patch_size(cfg)
    if sp is None:
        raise ValueError("the recipe's student patch size is unknown: set student.model_kwargs.patch_size")
    entries = recipe_entries(cfg, specs, sp)
    crops = sorted({e.crop for e in entries})
    meta = {"format": FORMAT, "identity": teacher_identity(cfg), "fingerprint": weights_fingerprint(teachers),
            "specs": {n: s._asdict() for n, s in specs.items()},
            "entries": [{"teacher": e.teacher, "crop": e.crop, "student": e.student, "teacher_res": e.teacher_res,
                         "mosaic": e.mosaic} for e in entries],
            "crops": crops, "dtype": dtype, "student_patch": sp,
            "data": {"path": str(Path(path).resolve()) if "://" not in path else path, "kind": cfg.data.kind,
                     "signature": data_signature(path, cfg.data.kind)}}
    meta = _json(meta)

    # what is there already: resume, done, or refuse
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("cache-*.tar")) + sorted(out.glob("cache-*.json")) + \
        [p for p in (out / META_NAME, out / INDEX_NAME) if p.exists()]
    if old and overwrite:
        for p in old:
            p.unlink()
    elif old:
        have = json.loads((out / META_NAME).read_text()) if (out / META_NAME).exists() else None
        if have != meta:
            raise FileExistsError(f"{out} holds a teacher cache made for other teachers, data or settings (or not a "
                                  "teacher cache); choose an empty folder or pass --overwrite (overwrite=True)")
        if (out / INDEX_NAME).exists():
            print(f"{out} is complete already (pass --overwrite to rebuild it)")
            return out / INDEX_NAME
    _write_json(out / META_NAME, meta)

    done: list[dict] = []  # finished shards, in order; later ones (after a gap) are rebuilt
    while (out / (SHARD_PATTERN % len(done))).exists() and \
            (out / (SHARD_PATTERN % len(done)).replace(".tar", ".json")).exists():
        done.append(json.loads((out / (SHARD_PATTERN % len(done)).replace(".tar", ".json")).read_text()))
    for p in list(out.glob("cache-*.tar")) + list(out.glob("cache-*.json")):
        if int(p.stem.split("-")[1]) >= len(done):
            p.unlink()
    skip = done[-1]["consumed"] if done else 0
    seen = {k for d in done for k in d["keys"]}
    if skip:
        print(f"resuming: {len(done)} finished shards ({len(seen)} images) kept")

    samples, total = _source(path, cfg.data.kind)
    torch_dtype = getattr(torch, dtype)
    bar = tqdm(total=total, initial=skip, desc="cache-teachers", unit="img", disable=not progress, dynamic_ncols=True)
    writer: Optional[_ShardWriter] = None
    pending: list = []
    left_out: list = []
    consumed = 0

    def flush() -> None:
        nonlocal writer
        if pending:
            blobs = _targets([img for _, img in pending], entries, teachers, cfg, dev, torch_dtype)
            if writer is None:
                writer = _ShardWriter(out, len(done), crops)
            for (k, _), b in zip(pending, blobs):
                writer.write(k, b)
            bar.update(len(pending))
            pending.clear()

    def close_shard() -> None:
        nonlocal left_out, writer
        if writer is not None:
            done.append(writer.finish(consumed, left_out))
            writer, left_out = None, []

    try:
        for key, img in samples:
            consumed += 1
            if consumed <= skip:
                continue
            if img is None:
                left_out.append(key if key is not None else f"#{consumed - 1}")
                bar.update(1)
                continue
            if key in seen:
                raise ValueError(f"sample key {key!r} occurs twice in {path}: the cache is looked up by key; write "
                                 "the data with `openradio data make-shards`, which numbers samples uniquely")
            seen.add(key)
            pending.append((key, img))
            written = len(writer.keys) if writer is not None else 0
            if len(pending) >= batch_size or written + len(pending) >= max_count:
                flush()
                if writer is not None and len(writer.keys) >= max_count:
                    close_shard()
        flush()
        close_shard()
    except BaseException:
        if writer is not None:  # the unfinished shard goes; finished ones stay for a rerun
            writer.abort()
        raise
    finally:
        bar.close()
    if not done:
        raise ValueError(f"no readable images in {path}; nothing was cached")
    index = dict(meta, total=sum(d["count"] for d in done),
                 left_out=[k for d in done for k in d["left_out"]] + left_out,
                 shards=[{k: d[k] for k in ("name", "count", "keys", "members")} for d in done])
    _write_json(out / INDEX_NAME, index)
    return out / INDEX_NAME


class TeacherCache:
    """Read targets from a cache written by :func:`build_cache`.

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
            raise FileNotFoundError(
                f"{self.dir} is not a teacher cache{' (it is unfinished: rerun the same command to complete it)' if partial else ''}; "
                f"build one with `{HOW_TO_BUILD}`")
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
        return ValueError(f"teacher cache {self.dir} {why}; rebuild it for this recipe and data with "
                          f"`{HOW_TO_BUILD} --overwrite`, or drop data.teacher_cache to run the teachers live")

    def teacher_specs(self, cfg: TrainConfig) -> dict[str, TeacherSpec]:
        """The recipe's teachers' shapes, after checking the cache was made with the same teachers."""
        ident = teacher_identity(cfg)
        have = self.index["identity"]
        for t in cfg.teachers:
            mine, theirs = ident["teachers"][t.name], have["teachers"].get(t.name)
            if theirs is None:
                raise self._rebuild(f"has no teacher {t.name!r} (it holds {sorted(have['teachers'])})")
            if mine["build"] != theirs["build"]:
                raise self._rebuild(f"was made with another {t.name!r} teacher ({theirs['build']} there, "
                                    f"{mine['build']} here)")
            if mine != theirs:
                raise self._rebuild(f"was made with other {t.name!r} weights (the weights file {t.weights} changed)")
            if mine["random_weights"] and ident["seed"] != have["seed"]:
                raise self._rebuild(f"holds the randomly initialised {t.name!r} of seed {have['seed']}, "
                                    f"this run's seed is {ident['seed']}")
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
            raise KeyError(f"sample {key!r} is not in teacher cache {self.dir}: the data changed since the cache was "
                           f"built; rebuild it with `{HOW_TO_BUILD} --overwrite`")
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

    def lookup(self, keys: list[str], teacher: str, crop: int, student: int, teacher_res: int, mosaic: bool,
               device: Optional[torch.device] = None) -> tuple[Optional[Tensor], Tensor]:
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
