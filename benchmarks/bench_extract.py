"""`openradio extract` at scale: bounded memory, decoding hidden behind inference, and its speed
against `openradio features`.

Two measurements, both on generated JPEGs of mixed sizes (a share of them corrupt):

1. **Memory** (``--images``, default 20 000, small random model at 64 px): the extraction runs in
   a child process (`python -m openradio.extract`, its DataLoader workers under it) while this
   process samples the PSS of that process tree (``/proc/PID/smaps_rollup``: shared pages counted
   once) every 50 ms. Printed: the peak once ``--early`` (default 2 000) rows are committed and
   the peak over the whole run, and their ratio (bounded memory: close to 1). From the manifest
   it also prints where the pipeline is bound: the seconds the loop waited for decoded batches
   (``read``) against the seconds in the model (``inference``).
2. **Throughput** (``--speed-images``, default 256, a ViT-B/16-sized random model at 224 px
   square, float32): `openradio extract` with ``--workers`` decoding workers, against the same
   model alone on the same images decoded and resized beforehand (the images/s a perfect
   pipeline would reach), and against `openradio features` on the same inputs, all in this
   process. Repeated at every ``--threads`` count (default 2 and 1).

Prints the platform first (CPU model, cores, vector flags, torch and its default thread count).
No timing is asserted anywhere.

    python benchmarks/bench_extract.py
    python benchmarks/bench_extract.py --images 2000 --early 500 --speed-images 64   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from openradio.runtime import platform_line

REPO = Path(__file__).resolve().parents[1]


def make_jpegs(folder: Path, n: int, corrupt: float, seed: int = 0, sizes=(48, 320)) -> int:
    """``n`` JPEGs of random sizes in ``sizes`` (smooth colour fields with noise, so they compress
    like photographs); ``round(n * corrupt)`` of them truncated or replaced by text. Returns the
    number of corrupt files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    bad = set(rng.choice(n, size=int(round(n * corrupt)), replace=False).tolist()) if corrupt > 0 else set()
    for i in range(n):
        w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([np.sin(xx / rng.uniform(5, 40) + c) + np.cos(yy / rng.uniform(5, 40)) for c in range(3)], -1)
        img = ((base + 2) * 60 + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
        path = folder / f"{i // 1000:03d}" / f"{i:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(path, quality=85)
        if i in bad:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3] if i % 2 else b"not a picture")
    return len(bad)


def tree_pss(pid: int) -> int:
    """PSS in bytes of ``pid`` and all its descendants (0 for a process that has gone)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def committed_rows(out: Path) -> int:
    rows = 0
    for p in (out / "manifest.d").glob("part-*.json") if (out / "manifest.d").exists() else []:
        try:
            rows += json.loads(p.read_text())["rows"]
        except (OSError, ValueError, KeyError):
            pass  # being renamed into place
    return rows


def memory_run(src: Path, ckpt: Path, out: Path, early: int, part_size: int, workers: int, threads: int) -> dict:
    """Run the extraction in a child and sample its tree's PSS: peak before ``early`` rows are
    committed, peak overall, and the manifest's read/inference/write seconds."""
    cmd = [sys.executable, "-m", "openradio.extract", str(src), "--version", str(ckpt), "--out", str(out)]
    cmd += ["--resolution", "64", "--part-size", str(part_size), "--workers", str(workers), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_early = peak = 0
    samples = 0
    while proc.poll() is None:
        pss = tree_pss(proc.pid)
        peak = max(peak, pss)
        if committed_rows(out) < early:
            peak_early = peak
        samples += 1
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"extract failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    man = json.loads((out / "manifest.json").read_text())
    secs = {"read": 0.0, "inference": 0.0, "write": 0.0}
    for entry in man["parts"].values():
        for k in secs:
            secs[k] += entry["seconds"][k]
    return {
        "peak_early": peak_early,
        "peak": peak,
        "samples": samples,
        "seconds": secs,
        "wall": time.perf_counter() - t0,
        "totals": man["totals"],
        "end_line": stdout.strip().splitlines()[0] if stdout.strip() else "",
    }


def speed_run(src: Path, ckpt: Path, tmp: Path, workers: int, batch: int, res: int, repeats: int) -> dict:
    """images/s (best of ``repeats``, interleaved) of: the model alone on pre-decoded tensors;
    the extract pipeline (the manifest's ``last_run``: from the job's start, after the model is
    loaded, to its last part); the `openradio extract` and `openradio features` commands end to
    end (both load the model)."""
    import openradio
    from openradio.cli import main
    from openradio.extract.mapper import Mapper
    from openradio.inputs.imageio import load_image

    files = sorted(p for p in src.rglob("*.jpg"))
    ok_files = []
    for p in files:
        try:
            load_image(p)
            ok_files.append(p)
        except Exception:  # noqa: BLE001 - the corrupt ones are skipped by every contender
            pass
    model = openradio.radio_model(str(ckpt)).eval()
    mapper = Mapper(model, (), "none", torch.float16, torch.float32, res, True, batch_size=batch)
    xs = [mapper.prepare(load_image(p)) for p in ok_files]
    args = ["--version", str(ckpt), "--resolution", str(res), "--square", "--batch-size", str(batch), "--no-progress"]
    best = {"model alone": float("inf"), "pipeline": float("inf"), "extract": float("inf"), "features": float("inf")}
    tag = f"{torch.get_num_threads()}t"
    for r in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, len(xs), batch):
            with torch.inference_mode():
                model(torch.stack(xs[s : s + batch]), feature_fmt="NCHW")
        best["model alone"] = min(best["model alone"], time.perf_counter() - t0)
        out = tmp / f"speed-extract-{tag}-{r}"  # a fresh folder: an existing one would resume
        t0 = time.perf_counter()
        rc = main(["extract", str(src), "--out", str(out), "--workers", str(workers), *args])
        best["extract"] = min(best["extract"], time.perf_counter() - t0)
        assert rc == 0
        last = json.loads((out / "manifest.json").read_text())["last_run"]
        assert last["rows"] == len(files)
        best["pipeline"] = min(best["pipeline"], last["seconds"])
        t0 = time.perf_counter()
        rc = main(["features", *map(str, ok_files), "--out", str(tmp / f"speed-{tag}-{r}.safetensors"), *args])
        best["features"] = min(best["features"], time.perf_counter() - t0)
        assert rc == 0
    rates = {k: len(ok_files) / v for k, v in best.items()}
    rates["pipeline"] = len(files) / best["pipeline"]  # its rows include the corrupt ones it skipped
    return rates | {"images": len(ok_files)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20000, help="inputs of the memory run (default 20000)")
    p.add_argument("--early", type=int, default=2000, help="rows after which the first peak is taken")
    p.add_argument("--part-size", type=int, default=1000)
    p.add_argument("--corrupt", type=float, default=0.01, help="share of corrupt files (default 0.01)")
    p.add_argument("--speed-images", type=int, default=256, help="inputs of the throughput run (0: skip)")
    p.add_argument("--speed-dim", type=int, default=768, help="width of the throughput model (ViT-B: 768)")
    p.add_argument("--speed-depth", type=int, default=12)
    p.add_argument("--speed-heads", type=int, default=12)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", default="2,1", help="torch thread counts to run the throughput at")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", default=None, help="keep the generated files here (default: a temporary folder)")
    args = p.parse_args(argv)

    from openradio.verify.testing import make_tiny_checkpoint

    print(platform_line())  # cpu, cores, flags, torch and its default thread count
    result: dict = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(args.workdir or t)
        tmp.mkdir(parents=True, exist_ok=True)
        if args.images:
            t0 = time.perf_counter()
            bad = make_jpegs(tmp / "mem", args.images, args.corrupt, seed=0)
            print(f"generated {args.images} JPEGs (48-320 px, {bad} corrupt) in {time.perf_counter() - t0:.0f} s")
            small = make_tiny_checkpoint(tmp / "small.pth.tar")
            m = memory_run(tmp / "mem", small, tmp / "mem-out", args.early, args.part_size, args.workers, 2)
            mb = 1 / 2**20
            print(
                f"memory: peak PSS {m['peak_early'] * mb:.0f} MiB after {args.early} rows, "
                f"{m['peak'] * mb:.0f} MiB after {args.images} rows: ratio {m['peak'] / max(m['peak_early'], 1):.3f} "
                f"({m['samples']} samples, extract + {args.workers} workers)"
            )
            s = m["seconds"]
            bound = "decode" if s["read"] > s["inference"] else "model"
            print(
                f"small model at 64 px: {m['end_line']}; loop waited {s['read']:.1f} s for decoded batches, "
                f"{s['inference']:.1f} s in the model, {s['write']:.1f} s writing: {bound}-bound"
            )
            result["memory"] = m | {"bound": bound, "corrupt": bad}
        if args.speed_images:
            bad = make_jpegs(tmp / "speed", args.speed_images, args.corrupt, seed=1, sizes=(300, 700))
            big = make_tiny_checkpoint(
                tmp / "vitb.pth.tar",
                embed_dim=args.speed_dim,
                depth=args.speed_depth,
                num_heads=args.speed_heads,
                head_hidden=args.speed_dim,
            )
            default_threads = torch.get_num_threads()
            result["speed"] = {}
            for th in [int(v) for v in args.threads.split(",") if v.strip()]:
                torch.set_num_threads(th)
                r = speed_run(tmp / "speed", big, tmp, args.workers, args.batch_size, args.resolution, args.repeats)
                result["speed"][th] = r
                print(
                    f"throughput, {th} thread(s), {r['images']} images ({bad} corrupt skipped), "
                    f"dim {args.speed_dim} depth {args.speed_depth} at {args.resolution} px, batch {args.batch_size}, "
                    f"{args.workers} workers: model alone on decoded tensors {r['model alone']:.2f} images/s, "
                    f"extract pipeline {r['pipeline']:.2f} ({r['pipeline'] / r['model alone']:.3f} of it); "
                    f"commands end to end: extract {r['extract']:.2f}, features {r['features']:.2f} "
                    f"(extract / features {r['extract'] / r['features']:.2f})"
                )
            torch.set_num_threads(default_threads)
    return result


if __name__ == "__main__":
    main()
