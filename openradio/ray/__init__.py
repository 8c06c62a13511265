"""Ray Data (extra ``[ray]``): RADIO features as a ``map_batches`` stage, and ``openradio extract
--engine ray``.

``RadioEmbedder`` is a callable class for ``ds.map_batches``::

    plan = plan_resources()  # after ray.init: sized from ray.cluster_resources()
    ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True, **plan.read_args())
    ds = ds.map_batches(RadioEmbedder, fn_constructor_kwargs={"version": "radio_v2.5-b", "adaptors": ["clip"]},
                        batch_size=64, **plan.map_args())

Size the stages from the cluster (:func:`plan_resources`) rather than by hand: an actor pool that
holds every CPU starves the read tasks that feed it, and Ray Data then waits forever (one CPU,
one actor of ``num_cpus=1`` and read tasks of ``num_cpus=1`` never finish).

It takes batches with a ``bytes`` column (encoded images, from ``read_binary_files``) or an
``image`` column (decoded HWC uint8 arrays, from ``read_images``), and a ``path`` column if there
is one, and returns the columns of the extract layout (``key``, ``source``, ``width``, ``height``,
``input_height``, ``input_width``, ``summary``, ``<adaptor>_summary``, ``status``, and ``index``
where the batch has one), through the
same decoder and :class:`~openradio.extract.mapper.Mapper` as the local engine. Unreadable inputs
come back as rows with their reason, as in the local engine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from openradio.extract.engine import ExtractError, Job, Options, write_errors
from openradio.extract.mapper import DTYPES, Mapper
from openradio.extract.sources import Row, Skip, VideoFrames, check_size, decode_bytes, read_row
from openradio.extras import require
from openradio.formats.resolve import radio_model
from openradio.inputs.imageio import image_to_tensor
from openradio.runtime import pick_device

__all__ = ["Plan", "RadioEmbedder", "plan_resources", "run_ray"]


class RadioEmbedder:
    def __init__(
        self,
        version: str,
        adaptors: Sequence[str] = (),
        resolution: int | None = None,
        square: bool = False,
        dtype: str | None = None,
        device: str | None = None,
        vitdet_window: int | None = None,
        min_size: int = 16,
        batch_size: int = 32,
        model=None,
    ):
        dev = pick_device(device)
        if model is None:
            model = radio_model(
                version, adaptor_names=list(adaptors) or None, vitdet_window_size=vitdet_window, progress=False
            )
        model = model.to(dev).eval()
        dtype = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
        self.mapper = Mapper(model, adaptors, "none", torch.float16, DTYPES[dtype], resolution, square, batch_size)
        self.min_size = min_size
        self.videos = VideoFrames()

    def _decode(self, batch: dict, i: int):
        if "row" in batch:  # openradio's own rows (tar members, video frames, files)
            return read_row(Row(**batch["row"][i]), self.min_size, self.videos)
        if "bytes" in batch:
            return decode_bytes(bytes(batch["bytes"][i]), self.min_size)
        return check_size(image_to_tensor(np.asarray(batch["image"][i])), self.min_size)

    def __call__(self, batch: dict) -> dict:
        n = len(next(iter(batch.values())))
        keys = batch.get("key", batch.get("path", [str(i) for i in range(n)]))
        sources = batch.get("source", batch.get("path", keys))
        out = {
            "key": [str(k) for k in keys],
            "source": [str(s) for s in sources],
            "width": [],
            "height": [],
            "input_height": [],
            "input_width": [],
            "status": [],
        }
        images = []
        for i in range(n):
            try:
                img, w, h = self._decode(batch, i)
                x = self.mapper.prepare(img)
                images.append(x)
                out["width"].append(w), out["height"].append(h)
                out["input_height"].append(int(x.shape[-2])), out["input_width"].append(int(x.shape[-1]))
                out["status"].append("ok")
            except Skip as s:
                images.append(None)
                for c in ("width", "height", "input_height", "input_width"):
                    out[c].append(-1)
                out["status"].append(s.status)
        ok = [x for x in images if x is not None]
        cols = self.mapper(ok) if ok else {}
        dims = {c: (cols[c].shape[1] if ok else 0) for c in self.mapper.columns}
        for c in self.mapper.columns:
            full = np.full((n, dims[c]), np.nan, np.float32) if ok else np.zeros((n, 0), np.float32)
            j = 0
            for i, x in enumerate(images):
                if x is not None:
                    full[i] = cols[c][j]
                    j += 1
            out[c] = full
        if "index" in batch:  # the row numbers run_ray writes the parts by, passed through
            out["index"] = batch["index"]
        return {k: np.asarray(v) if not isinstance(v, np.ndarray) else v for k, v in out.items()}


@dataclass(frozen=True)
class Plan:
    """Resources for a read stage feeding a pool of ``actors`` RadioEmbedders (see :func:`plan_resources`)."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    read_cpus: float

    def read_args(self) -> dict:
        """Keyword arguments for ``ray.data.read_binary_files`` / ``read_images`` / ``map``."""
        return {"num_cpus": self.read_cpus}

    def map_args(self) -> dict:
        """Keyword arguments for ``ds.map_batches(RadioEmbedder, ...)``."""
        import ray.data  # optional: the [ray] extra

        args = {"compute": ray.data.ActorPoolStrategy(size=self.actors), "num_cpus": self.actor_cpus}
        if self.actor_gpus:
            args["num_gpus"] = self.actor_gpus
        return args


def plan_resources(device: str | None = None, actors: int | None = None, cluster: Mapping | None = None) -> Plan:
    """Size a RadioEmbedder pool and its read tasks from what the Ray cluster has (``cluster``,
    default ``ray.cluster_resources()``), so that both stages fit at once: the read tasks keep up to
    one CPU (half of a one-CPU cluster), the actors share the rest (at most one CPU each beside a
    GPU). One actor per GPU when ``device`` is CUDA or unset on a cluster with GPUs, else one actor.
    A request the cluster cannot meet raises :class:`ExtractError` instead of waiting forever."""
    if cluster is None:
        import ray  # optional: the [ray] extra

        cluster = ray.cluster_resources()
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    dev = (device or "").split(":")[0]
    gpu = dev == "cuda" or (not device and gpus >= 1)
    if cpus <= 0:
        raise ExtractError(f"the Ray cluster has no CPUs ({dict(cluster)}); start it with num_cpus of 1 or more")
    if gpu and gpus < 1:
        raise ExtractError(f"device {device!r} needs a GPU per actor but the Ray cluster has {gpus:g} GPUs")
    most = math.floor(gpus) if gpu else max(1, math.floor(cpus - min(1.0, cpus / 2)))
    actors = actors or (most if gpu else 1)
    if actors < 1 or actors > most:
        what = f"{gpus:g} GPUs" if gpu else f"{cpus:g} CPUs (one kept for reading)"
        raise ExtractError(f"{actors} RadioEmbedder actors do not fit a Ray cluster of {what}; use at most {most}")
    read = min(1.0, cpus / (actors + 1)) if gpu else min(1.0, cpus / 2)
    per = (cpus - read) / actors
    return Plan(actors, min(1.0, per) if gpu else per, 1.0 if gpu else 0.0, read)


class _RowIndex:
    """Gives each ``read_binary_files`` record its row index (Ray reports paths without the protocol)."""

    def __init__(self, index: dict[str, int]):
        self.index = {**index, **{u.split("://", 1)[-1]: i for u, i in index.items()}}

    def __call__(self, record: dict) -> dict:
        i = self.index[record["path"]]
        return {**record, "index": i}


def run_ray(sources: Sequence[str], version: str, out: str, **options) -> dict:
    """``openradio extract --engine ray``: the rows go through Ray Data (``map_batches`` over
    :class:`RadioEmbedder`, Ray retrying failed tasks); the driver writes the same parts and
    manifest as the local engine. Plain image files are read with ``ray.data.read_binary_files``;
    tar members and video frames as openradio rows."""
    ray = require("ray", "openradio extract --engine ray")
    opts = Options(**options)
    opts.extra = {**opts.extra, "engine": "ray"}
    if opts.features != "none":
        raise ExtractError("--engine ray stores summaries only; use the local engine (or torchrun) for --features")
    if opts.clip_frames != 1:
        raise ExtractError("--engine ray runs frames one by one; use the local engine (or torchrun) for --clip-frames")
    model = (
        radio_model(
            version,
            adaptor_names=list(opts.adaptors) or None,
            vitdet_window_size=opts.vitdet_window,
            progress=opts.progress,
        )
        .to(pick_device(opts.device))
        .eval()
    )
    job = Job(sources, model, out, opts, version)
    idx = [i for k in job.todo for i in job.part_rows(k)]
    if not idx:
        return job.close()
    if not ray.is_initialized():  # a local Ray of this machine's cores (an address in RAY_ADDRESS is joined)
        ray.init(include_dashboard=False, log_to_driver=False)
    plan = plan_resources(opts.device)
    ctx = ray.data.DataContext.get_current()
    if ctx.wait_for_min_actors_s <= 0:  # actors that cannot be placed (a busy cluster) fail instead of waiting
        ctx.wait_for_min_actors_s = 600
    ctx.execution_options.preserve_order = True  # parts are written in row order
    ctx.enable_progress_bars = opts.progress
    rows = job.rows
    if all(rows[i].kind == "file" for i in idx):
        ds = ray.data.read_binary_files([rows[i].url for i in idx], include_paths=True, **plan.read_args())
        ds = ds.map(_RowIndex({rows[i].url: i for i in idx}), **plan.read_args())
    else:
        ds = ray.data.from_items([{"index": i, "row": rows[i].__dict__} for i in idx])
    ds = ds.map_batches(
        RadioEmbedder,
        batch_size=opts.batch_size,
        batch_format="numpy",
        **plan.map_args(),
        fn_constructor_kwargs=dict(
            version=version,
            adaptors=list(opts.adaptors),
            resolution=job.mapper.resolution,
            square=opts.square,
            dtype=job.header["options"]["dtype"],
            device=opts.device,
            vitdet_window=opts.vitdet_window,
            min_size=opts.min_size,
            batch_size=opts.batch_size,
        ),
    )
    pending = {k: len(job.part_rows(k)) for k in job.todo}
    wait0 = time.perf_counter()
    with write_errors(out):
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                job.secs["inference"] += time.perf_counter() - wait0
                got = []
                for n, i in enumerate(batch["index"]):
                    i = int(i)
                    status = str(batch["status"][n])
                    cols = {c: batch[c] for c in job.dims}
                    got.append(
                        job.row(
                            i,
                            status,
                            int(batch["width"][n]) if status == "ok" else None,
                            int(batch["height"][n]) if status == "ok" else None,
                            (int(batch["input_height"][n]), int(batch["input_width"][n])),
                            cols,
                            n,
                        )
                    )
                job.add(got)
                for r in got:
                    k = r["index"] // job.part_size
                    pending[k] -= 1
                    if pending[k] == 0:
                        job.finish_part(k)
                wait0 = time.perf_counter()
        except ray.exceptions.GetTimeoutError:
            raise ExtractError(
                f"Ray did not place {plan.actors} RadioEmbedder actor(s) of {plan.actor_cpus:g} CPU and "
                f"{plan.actor_gpus:g} GPU in {ctx.wait_for_min_actors_s} s: other work holds the cluster's resources"
            ) from None
    return job.close()
