"""How far PHI-S targets jump at each recompute, with and without aligning the eigenbasis.

    python benchmarks/phi_s_stability.py                      # 'none' (before) and 'procrustes' (after)
    python benchmarks/phi_s_stability.py --align none sign procrustes --steps 60

Runs the tiny recipe (configs/tiny.yaml: 4 teachers, 2 partitions, PHI-S recomputed every 10
steps, frozen after 40) once per alignment mode, same seed and data, on the bundled photographs,
CPU. For every recompute after a normaliser's first it prints

* the relative movement of the normalised targets of that normaliser's latest batch,
  ``||T_new(x) - T_old(x)|| / ||T_old(x)||``: how much the student's regression target moved
  although the statistics changed by one recompute's worth of data;
* the feature loss of that teacher in the step before and the step after the recompute (the
  recompute happens at the end of a step, so the next step's loss is the first against the new
  targets) and their ratio;
* for reference, the movement that the new mean and isotropic scale alone cause (old rotation
  kept): what any choice of basis has to move at least by the mean/scale change.

'none' is the transform as ``torch.linalg.eigh`` returns it (the published method, and this
project before the fix); 'sign' aligns each eigenvector's sign to its predecessor; 'procrustes'
(the default in training) also rotates groups of near-equal eigenvalues onto the previous basis.
A summary line per mode gives the median and largest movement and loss ratio. About 30 s per mode
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from openradio.runtime import platform_line


def run(align: str, steps: int, data: Path, out: Path, verbose: bool) -> dict:
    from openradio.distill.config import load_config
    from openradio.distill.phi_s import PhiSNormalizer, apply_transform
    from openradio.distill.trainer import DistEnv, Trainer

    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"data.path={data}",
            f"out_dir={out}",
            "progress=false",
            "tensorboard=false",
            f"phi_s.align={align}",
            f"stages.0.steps={steps}",
            "checkpoint_every=100000",
        ],
    )
    trainer = Trainer(cfg, env=DistEnv())
    names = {id(n): k for k, n in trainer.phi_s.items()}
    last_batch: dict[str, torch.Tensor] = {}
    moves: list[tuple[int, str, float, float]] = []
    orig_update, orig_recompute = PhiSNormalizer.update, PhiSNormalizer.recompute

    def update(self, x, fmt="NLC"):
        last_batch[names[id(self)]] = (x.permute(0, 2, 3, 1) if fmt == "NCHW" else x).reshape(-1, self.dim).double()
        return orig_update(self, x, fmt)

    def recompute(self):
        key = names[id(self)]
        had = bool(self.initialized)
        old = (self.mean.clone(), self.tx.clone())
        orig_recompute(self)
        if had and key in last_batch:
            x = last_batch[key]
            before = apply_transform(x, *old)
            after = apply_transform(x, self.mean, self.tx)
            # reference: the new mean and scale with the old rotation, i.e. the movement that the
            # change of the first two moments forces whatever basis is chosen for the rotation
            scale = self.tx[0].norm() / old[1][0].norm()
            kept = apply_transform(x, self.mean, old[1] * scale)
            moves.append(
                (
                    trainer.step,
                    key,
                    float((after - before).norm() / before.norm()),
                    float((kept - before).norm() / before.norm()),
                )
            )

    PhiSNormalizer.update, PhiSNormalizer.recompute = update, recompute
    losses: dict[int, dict] = {}
    try:
        while trainer.step < cfg.total_steps:
            m = trainer.train_step()
            losses[trainer.step - 1] = m
    finally:
        PhiSNormalizer.update, PhiSNormalizer.recompute = orig_update, orig_recompute
    jumps = []
    for step, key, move, ref in moves:
        teacher = key.split("@")[0]
        ratios = []
        for col, before in losses[step].items():
            if col.endswith(f"/{teacher}/features") and step + 1 in losses and col in losses[step + 1]:
                after = losses[step + 1][col]
                ratios.append((col, before, after, after / before))
        worst = max(ratios, key=lambda r: r[3]) if ratios else None
        if worst:
            jumps.append(worst[3])
        if verbose:
            loss_txt = f"   {worst[0]}: {worst[1]:.3f} -> {worst[2]:.3f} (x{worst[3]:.2f})" if worst else ""
            print(
                f"  [{align}] step {step:3d} {key:12s} target move {100 * move:6.1f} % "
                f"(mean/scale only {100 * ref:5.1f} %){loss_txt}"
            )
    final = {k: v for k, v in losses[max(losses)].items() if k.endswith("/features")}
    return {
        "moves": [m[2] for m in moves],
        "refs": [m[3] for m in moves],
        "jumps": jumps,
        "final": statistics.mean(final.values()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--align",
        nargs="+",
        default=["none", "procrustes"],
        choices=["none", "sign", "procrustes"],
        help="modes to compare ('none' = before the fix)",
    )
    p.add_argument("--steps", type=int, default=60, help="training steps (the tiny recipe has 60)")
    p.add_argument("--data", type=Path, default=None, help="image folder (default: the bundled photographs)")
    p.add_argument("--quiet", action="store_true", help="summary lines only")
    args = p.parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    print(platform_line())
    tmp = Path(tempfile.mkdtemp(prefix="phi_s_stability_"))
    data = args.data
    if data is None:
        from openradio.inputs.sample_data import write_sample_images

        data = tmp / "images"
        write_sample_images(data, max_side=256)
    results = {}
    for mode in args.align:
        results[mode] = run(mode, args.steps, data, tmp / f"run_{mode}", not args.quiet)
    print(
        f"{'align':>10s}  {'recomputes':>10s}  {'target move median / max':>26s}  "
        f"{'loss ratio after/before median / max':>38s}  {'final feature loss':>18s}"
    )
    for mode, r in results.items():
        mv, jp = r["moves"], r["jumps"]
        print(
            f"{mode:>10s}  {len(mv):10d}  {100 * statistics.median(mv):11.1f} % / {100 * max(mv):6.1f} %  "
            f"{statistics.median(jp):27.2f} / {max(jp):6.2f}  {r['final']:18.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
