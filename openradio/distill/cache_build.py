"""Building a teacher-feature cache (``openradio data cache-teachers``): run a recipe's teachers once
per image at every entry of :func:`~openradio.distill.teacher_cache.recipe_entries` and write the
shards, their sidecars and the index that :class:`~openradio.distill.teacher_cache.TeacherCache`
reads (the layout is described there). A killed build resumes after its last finished shard.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import torch
import webdataset as wds
from safetensors.torch import save
from torch import Tensor
from tqdm.auto import tqdm

from openradio.atomicio import atomic_path, write_text
from openradio.distill.config import TrainConfig, student_patch_size
from openradio.distill.data import build_dataset
from openradio.distill.mosaic import mosaic_pad_value, pack_mosaic, unpack_features
from openradio.distill.shards import ShardDataset
from openradio.distill.teacher_cache import (
    FORMAT,
    INDEX_NAME,
    META_NAME,
    SHARD_PATTERN,
    CacheEntry,
    TeacherSpec,
    data_signature,
    jsonable,
    recipe_entries,
    teacher_identity,
    weights_fingerprint,
)
from openradio.distill.teachers import build_teachers
from openradio.distill.transforms import ResizeCenterCrop, resize_square

__all__ = ["build_cache"]

PathLike = Union[str, Path]


def _specs_of(teachers: Mapping[str, Any]) -> dict[str, TeacherSpec]:
    return {
        n: TeacherSpec(
            n,
            int(t.patch_size),
            int(t.input_size),
            None if t.summary_dim is None else int(t.summary_dim),
            int(t.feature_dim),
        )
        for n, t in teachers.items()
    }


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
        side = {
            "name": self.name,
            "count": len(self.keys),
            "keys": self.keys,
            "consumed": consumed,
            "left_out": left_out,
            "members": {
                str(c): [offsets[f"{self._member(j)}.c{c}.safetensors"] for j in range(len(self.keys))]
                for c in self.crops
            },
        }
        _write_json(self.out / self.name.replace(".tar", ".json"), side)
        return side

    def abort(self) -> None:
        self._tar.close()
        self.tmp.unlink(missing_ok=True)


@torch.no_grad()
def _targets(
    batch: list[Tensor],
    entries: list[CacheEntry],
    teachers: Mapping[str, Any],
    cfg: TrainConfig,
    device: torch.device,
    dtype: torch.dtype,
) -> list[dict[int, bytes]]:
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
                    packed = [
                        pack_mosaic(xs[i : i + 1], e.teacher_res, teacher.patch_size, pad_value=pad)
                        for i in range(len(batch))
                    ]
                    canv = teacher(torch.cat([c for c, _ in packed])).features
                    summary = None
                    feats = torch.cat([unpack_features(canv[i : i + 1], lay) for i, (_, lay) in enumerate(packed)])
                else:
                    summary, feats = teacher(xs, resolution=e.teacher_res)
            for i in range(len(batch)):
                d = tensors[i].setdefault(crop, {})
                d[f"{e.name}/features"] = feats[i].to("cpu", dtype).clone()
                if summary is not None:
                    d[f"{e.name}/summary"] = summary[i].to("cpu", dtype).clone()
    return [{c: save(t) for c, t in per.items()} for per in tensors]


def build_cache(
    cfg: TrainConfig,
    out_dir: PathLike,
    *,
    data_path: Optional[PathLike] = None,
    teachers: Optional[Mapping[str, Any]] = None,
    dtype: str = "float16",
    batch_size: int = 16,
    max_count: int = 1000,
    overwrite: bool = False,
    device: Optional[str] = None,
    progress: bool = True,
) -> Path:
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
    meta = {
        "format": FORMAT,
        "identity": teacher_identity(cfg),
        "fingerprint": weights_fingerprint(teachers),
        "specs": {n: s._asdict() for n, s in specs.items()},
        "entries": [
            {
                "teacher": e.teacher,
                "crop": e.crop,
                "student": e.student,
                "teacher_res": e.teacher_res,
                "mosaic": e.mosaic,
            }
            for e in entries
        ],
        "crops": crops,
        "dtype": dtype,
        "student_patch": sp,
        "data": {
            "path": str(Path(path).resolve()) if "://" not in path else path,
            "kind": cfg.data.kind,
            "signature": data_signature(path, cfg.data.kind),
        },
    }
    meta = jsonable(meta)

    # what is there already: resume, done, or refuse
    out.mkdir(parents=True, exist_ok=True)
    old = (
        sorted(out.glob("cache-*.tar"))
        + sorted(out.glob("cache-*.json"))
        + [p for p in (out / META_NAME, out / INDEX_NAME) if p.exists()]
    )
    if old and overwrite:
        for p in old:
            p.unlink()
    elif old:
        have = json.loads((out / META_NAME).read_text()) if (out / META_NAME).exists() else None
        if have != meta:
            raise FileExistsError(
                f"{out} holds a teacher cache made for other teachers, data or settings (or not a "
                "teacher cache); choose an empty folder or pass --overwrite (overwrite=True)"
            )
        if (out / INDEX_NAME).exists():
            print(f"{out} is complete already (pass --overwrite to rebuild it)")
            return out / INDEX_NAME
    _write_json(out / META_NAME, meta)

    done: list[dict] = []  # finished shards, in order; later ones (after a gap) are rebuilt
    while (out / (SHARD_PATTERN % len(done))).exists() and (
        out / (SHARD_PATTERN % len(done)).replace(".tar", ".json")
    ).exists():
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
                raise ValueError(
                    f"sample key {key!r} occurs twice in {path}: the cache is looked up by key; write "
                    "the data with `openradio data make-shards`, which numbers samples uniquely"
                )
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
    index = dict(
        meta,
        total=sum(d["count"] for d in done),
        left_out=[k for d in done for k in d["left_out"]] + left_out,
        shards=[{k: d[k] for k in ("name", "count", "keys", "members")} for d in done],
    )
    _write_json(out / INDEX_NAME, index)
    return out / INDEX_NAME
