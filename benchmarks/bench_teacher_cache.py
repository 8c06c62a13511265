"""Teacher-feature cache: a training step that reads its targets from the cache vs one that runs
the teachers, same recipe, same data (no augmentation), interleaved in one process.

Builds a small shard set from the photographs bundled with scikit-image / scikit-learn, caches
the recipe's teachers (``openradio.distill.cache_build.build_cache``, what ``openradio data
cache-teachers`` runs), then alternates live and cached steps (live, cached, cached, live, ...)
and prints the median per-pair time ratio: ratios, not absolute times. Recipes:

* ``tiny``: ``configs/tiny.yaml`` as shipped (four tiny random teachers, SAM through the mosaic
  in the low-resolution partition; cached mosaic targets are each view alone on its canvas);
* ``b16``: a ViT-B/16 student (the v2.5-b shape) at 224 px, batch 4, with shrunk random teachers
  (CLIP, SigLIP, DINOv2 as 6-layer ViT-S/14-16 at 224 px, SAM as a 6-layer ViT-S/16 at 256 px
  through the mosaic), so a step runs on a CPU in seconds.

Then the equality check (the ``tiny`` recipe without mosaic, which is where equality holds):
three steps with live teachers, three from a float32 cache and three from a float16 cache, run
one after the other with the same seeds; printed: the largest relative loss difference and the
largest weight / PHI-S difference.

    python benchmarks/bench_teacher_cache.py                       # tiny and b16
    python benchmarks/bench_teacher_cache.py --recipes tiny --steps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from openradio.runtime import platform_line

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
COMMON = ["data.augment=false", "progress=false", "tensorboard=false", "checkpoint_every=100000", "log_every=100000"]
B16 = [
    "student.model=vit_base_patch16_224",
    "student.model_kwargs={}",
    "student.cpe_max_size=1024",
    "student.mlp_hidden_size=1520",
    "teachers.0.overrides={width: 384, layers: 6, head_width: 64, image_size: 224}",
    "teachers.1.overrides={embed_dim: 384, depth: 6, num_heads: 6, img_size: 224}",
    "teachers.2.overrides={embed_dim: 384, depth: 6, num_heads: 6, img_size: 224}",
    "teachers.3.overrides={embed_dim: 384, depth: 6, num_heads: 6, img_size: 256, window_size: 4, "
    "global_attn_indexes: [2, 5]}",
    "stages.0.partitions=[{name: low, resolution: 128, batch_size: 4, mosaic: [sam]}, "
    "{name: high, resolution: 224, batch_size: 4}]",
]
EQUAL = ["stages.0.steps=3", "stages.0.partitions.0.mosaic=[]", "phi_s.update_every=1", "phi_s.freeze_after=2"]


def make_data(root: Path) -> Path:
    from openradio.distill.shards import write_shards
    from openradio.inputs.sample_data import write_sample_images

    write_sample_images(root / "img", max_side=320)
    write_shards(root / "img", root / "shards", max_count_per_shard=8, progress=False)
    return root / "shards"


def cfg(data: Path, out: Path, *overrides: str):
    from openradio.distill.config import load_config

    return load_config(TINY, [f"data.path={data}", f"out_dir={out}", *COMMON, *overrides])


def bench(name: str, data: Path, root: Path, overrides: list, steps: int, warmup: int) -> None:
    import torch

    from openradio.distill.cache_build import build_cache
    from openradio.distill.trainer import DistEnv, Trainer, build_teachers

    live_cfg = cfg(data, root / f"{name}-live", *overrides)
    teachers = build_teachers(live_cfg, torch.device("cpu"))  # built once, as a trainer does: not timed
    t0 = time.perf_counter()
    build_cache(live_cfg, root / f"{name}-cache", teachers=teachers, progress=False)
    build_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (root / f"{name}-cache").glob("*.tar"))
    import json

    index = json.loads((root / f"{name}-cache" / "index.json").read_text())
    live = Trainer(live_cfg, env=DistEnv())
    cached = Trainer(
        cfg(data, root / f"{name}-cached", *overrides, f"data.teacher_cache={root / f'{name}-cache'}"), env=DistEnv()
    )
    for _ in range(warmup):
        live.train_step()
        cached.train_step()
    ratios, lt, ct = [], [], []
    for i in range(steps):
        order = (live, cached) if i % 2 == 0 else (cached, live)
        times = {}
        for t in order:
            t0 = time.perf_counter()
            t.train_step()
            times[id(t)] = time.perf_counter() - t0
        lt.append(times[id(live)])
        ct.append(times[id(cached)])
        ratios.append(times[id(live)] / times[id(cached)])
    images = sum(p.batch_size for p in live_cfg.stages[0].partitions)
    print(
        f"{name:5s} student {live_cfg.student.model} {live.student.embed_dim}-d, {images} images/step, "
        f"{len(index['entries'])} cached targets per image, {index['total']} images cached "
        f"({size / index['total'] / 1e3:.0f} kB/image float16)"
    )
    print(
        f"      cached step speed-up over live teachers: x{statistics.median(ratios):.2f} "
        f"(median of {steps} interleaved pairs; per pair {min(ratios):.2f}..{max(ratios):.2f}); "
        f"teachers' share of a live step ~{1 - statistics.median(ct) / statistics.median(lt):.0%}; "
        f"running the teachers over the data for the cache "
        f"took as long as {build_s / statistics.median(lt):.1f} live steps "
        f"(paid back after ~{build_s / (index['total'] / images * (statistics.median(lt) - statistics.median(ct))):.1f}"
        " epochs)"
    )


def equality(data: Path, root: Path) -> None:
    from openradio.distill.cache_build import build_cache
    from openradio.distill.trainer import DistEnv, Trainer

    base = cfg(data, root / "eq-live", *EQUAL)
    for dtype in ("float32", "float16"):
        build_cache(base, root / f"eq-{dtype}", dtype=dtype, progress=False)

    def run(c):  # one after the other: the trainers share the global RNG
        t = Trainer(c, env=DistEnv())
        return t, [t.train_step()["loss"] for _ in range(c.total_steps)]

    live, ll = run(base)
    for dtype in ("float32", "float16"):
        c, cl = run(cfg(data, root / f"eq-run-{dtype}", *EQUAL, f"data.teacher_cache={root / f'eq-{dtype}'}"))
        dl = max(abs(a - b) / abs(a) for a, b in zip(ll, cl))
        dw = max(
            (a - b).abs().max().item()
            for a, b in zip(live.student.state_dict().values(), c.student.state_dict().values())
        )
        dp = max(
            ((a.double() - b.double()).abs().max().item() if a.numel() else 0.0)
            for a, b in zip(live.phi_s.state_dict().values(), c.phi_s.state_dict().values())
        )
        print(
            f"equality ({dtype} cache, {len(ll)} steps, tiny recipe without mosaic): max relative loss "
            f"difference {dl:.1e}, max weight difference {dw:.1e}, max PHI-S state difference {dp:.1e}; "
            f"losses live {[round(x, 5) for x in ll]} cached {[round(x, 5) for x in cl]}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default="tiny,b16", help="comma-separated: tiny, b16")
    ap.add_argument("--steps", type=int, default=6, help="timed step pairs per recipe")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-equality", action="store_true")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    print(platform_line())
    print(f"torch {torch.__version__}, {a.threads} thread(s), {os.cpu_count()} CPUs; ratios of interleaved steps")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root)
        recipes = {"tiny": [], "b16": B16}
        for name in a.recipes.split(","):
            bench(name, data, root, recipes[name], a.steps, a.warmup)
        if not a.no_equality:
            equality(data, root)


if __name__ == "__main__":
    main()
