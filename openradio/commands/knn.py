"""`openradio knn`: k-nearest-neighbour classification on summary embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

from openradio.commands.common import add_model_arguments

HELP = "kNN classification (k=20, exp(sim/0.07) votes) on backbone or adaptor summaries"
EXAMPLES = """\
  openradio knn --version radio_v2.5-b --train /data/imagenet/train --val /data/imagenet/val --resolution 512
  openradio knn --version model.pth.tar --adaptor dino_v2 --train train/ --val val/ --k 10 --out results/knn
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, multiple_versions=True, adaptor=True, resolution=True)
    p.add_argument("--train", required=True, metavar="PATH", help="training set: ImageFolder or 'path<TAB>label' file")
    p.add_argument("--val", required=True, metavar="PATH", help="query set: ImageFolder or 'path<TAB>label' file")
    p.add_argument("--k", type=int, default=20, help="neighbours per query (default 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(sim / T) (default 0.07)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--out", default=None, metavar="DIR", help="write knn.csv here")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    # the command's stack is imported when it runs: `openradio --help` and the other commands stay fast
    from openradio import radio_model
    from openradio.eval.data import read_labelled_images, write_csv
    from openradio.eval.knn import evaluate_knn
    from openradio.runtime import model_label, model_resolution, pick_device

    device = pick_device(args.device)
    train = read_labelled_images(args.train)
    val = read_labelled_images(args.val)
    progress = not args.no_progress
    adaptor = None if args.adaptor in (None, "backbone") else args.adaptor
    rows = []
    for version in args.version:
        model = (
            radio_model(
                version,
                adaptor_names=[adaptor] if adaptor else None,
                vitdet_window_size=args.vitdet_window,
                progress=progress,
            )
            .to(device)
            .eval()
        )
        res = model_resolution(model, args.resolution)
        r = evaluate_knn(
            model,
            train,
            val,
            res,
            k=args.k,
            temperature=args.temperature,
            adaptor=adaptor,
            batch_size=args.batch_size,
            device=device,
            amp=args.amp,
            num_workers=args.workers,
            progress=progress,
        )
        name = model_label(version)
        print(
            f"{name}  {adaptor or 'backbone'} summary  res {r.resolution}  k={r.k}  top-1 {r.top1:.3f}  "
            f"top-5 {r.top5:.3f}  ({r.num_train} train / {r.num_val} val)"
        )
        rows.append(
            (name, adaptor or "backbone", r.resolution, r.k, f"{r.top1:.3f}", f"{r.top5:.3f}", r.num_train, r.num_val)
        )
        del model
    if args.out:
        path = write_csv(
            Path(args.out) / "knn.csv",
            ["Model", "Embedding", "Resolution", "K", "Top1", "Top5", "NumTrain", "NumVal"],
            rows,
        )
        print(f"wrote {path}")
    return 0
