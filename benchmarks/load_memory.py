"""Peak memory of loading a checkpoint, as a multiple of the loaded model's own size.

Each load runs in a fresh Python process (so nothing cached by an earlier load counts):

1. import torch and openradio, then reset the kernel's peak-RSS counter of the process
   (``echo 5 > /proc/self/clear_refs``; Linux) and read the resident size (``VmRSS``);
2. load the checkpoint (``--path new``: ``openradio.radio_model(file)``, memory-mapped and
   adopted tensor by tensor; ``--path old``: the previous path, ``torch.load`` into memory and
   ``load_state_dict`` copies into a freshly built model), drop the checkpoint dict, touch
   every weight once (a memory-mapped weight is read from the file on first use, so without
   this the "after" size would flatter the new path);
3. read the peak resident size (``VmHWM``) and the resident size again.

peak = VmHWM - RSS before loading; steady = RSS after loading and touching - RSS before;
model = bytes of the model's parameters and buffers. The ratio the issue asks for is
peak / steady (<= 1.1); peak / model is printed too.

    python benchmarks/load_memory.py                       # ViT-B/16, float32 and float16
    python benchmarks/load_memory.py --dtypes float16 --embed-dim 384 --depth 12 --heads 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from openradio.runtime import platform_line


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (this benchmark needs Linux)")


def child(path: str, which: str) -> None:
    import gc

    import torch

    import openradio
    from openradio.formats.build import build_radio
    from openradio.formats.official import load_checkpoint_file, select_state

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status("VmRSS")
    if which == "new":
        model = openradio.radio_model(path)
    else:
        chk = load_checkpoint_file(path)
        state, is_ema = select_state(chk)
        model = build_radio(chk["args"], state, is_ema=is_ema)
        del chk, state
    gc.collect()
    total = 0.0
    nbytes = 0
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            # every 256th element: touches every 4 KiB page without a temporary copy of the tensor
            total += float(t.reshape(-1)[::256].double().sum()) if t.is_floating_point() else 0.0
            nbytes += t.numel() * t.element_size()
    gc.collect()
    print(
        json.dumps(
            dict(
                before=before,
                peak=_status("VmHWM") - before,
                steady=_status("VmRSS") - before,
                model=nbytes,
                check=total,
                dtype=str(model.dtype),
            )
        )
    )


def make_checkpoint(folder: Path, dtype: str, embed_dim: int, depth: int, heads: int) -> Path:
    import torch

    from openradio.verify.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(
        folder / f"vit_{dtype}.pth.tar",
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        head_hidden=256,
        cpe_max_size=2048,
        arch="vit_base_patch16_224",
        dtype=getattr(torch, dtype),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument(
        "--paths", default="old,new", help="old: torch.load + copy (the previous loader); new: mmap + assign"
    )
    ap.add_argument("--embed-dim", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--child", nargs=2, metavar=("FILE", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    print(platform_line())
    print(
        f"random checkpoint: dim {a.embed_dim}, depth {a.depth}, heads {a.heads}, patch 16, CPE 2048 (ViT-B shape "
        "by default); each load in a fresh process; memory from /proc/self/status (VmRSS, VmHWM)"
    )
    print(
        f"{'dtype':8} {'path':4} {'model MiB':>9} {'peak MiB':>9} {'steady MiB':>10} {'peak/steady':>11} "
        f"{'peak/model':>10}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in a.dtypes.split(","):
            ckpt = make_checkpoint(Path(tmp), dtype, a.embed_dim, a.depth, a.heads)
            for which in a.paths.split(","):
                env = dict(os.environ, OMP_NUM_THREADS="1")
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(ckpt), which],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[dtype, which] = r
                mib = 2**20
                print(
                    f"{dtype:8} {which:4} {r['model'] / mib:9.1f} {r['peak'] / mib:9.1f} {r['steady'] / mib:10.1f} "
                    f"{r['peak'] / r['steady']:11.2f} {r['peak'] / r['model']:10.2f}"
                )
            if (
                "old" in a.paths
                and "new" in a.paths
                and results[dtype, "old"]["check"] != results[dtype, "new"]["check"]
            ):
                raise SystemExit(f"{dtype}: the two paths loaded different weights")
    print(
        "old and new paths loaded the same weights (checksum of every 256th element equal)" if "old" in a.paths else ""
    )


if __name__ == "__main__":
    main()
