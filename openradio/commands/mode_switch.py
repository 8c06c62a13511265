"""`openradio mode-switch`: student-vs-teacher feature error across resolutions (the tech report's curve)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from openradio.commands.common import add_model_arguments

HELP = "mode-switching curve: MSE between a teacher adaptor's features and the teacher across resolutions"
EXAMPLES = """\
  openradio mode-switch --version radio_v2.1 --version radio_v2.5-l --teacher dino_v2 \\
      --data /data/imagenet/val --out results/mode-switch
  openradio mode-switch --version model.pth.tar --teacher dino_v2 --data images/ \\
      --resolutions 192:768:64 --teacher-weights dinov2_vitg14_reg4_pretrain.pth --out ms
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, multiple_versions=True, adaptor=False, resolution=False)
    p.add_argument(
        "--teacher",
        default="dino_v2",
        metavar="NAME",
        help="teacher (adaptor) name from the checkpoint's args.teachers (default dino_v2)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="images: a folder (searched recursively) or a 'path[<TAB>label]' list file",
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=100,
        help="random subset of this many images (seed --seed; default 100, 0 = all)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--resolutions",
        default=None,
        metavar="START:STOP[:STEP]",
        help="resolution sweep (default 192:1536 in steps of the patch size) or a list 224,448",
    )
    p.add_argument(
        "--teacher-model",
        default=None,
        metavar="NAME",
        help="override the teacher's model name from the checkpoint args",
    )
    p.add_argument("--teacher-weights", default=None, metavar="FILE", help="local teacher weights file")
    p.add_argument(
        "--tiny-teacher",
        action="store_true",
        help="use a small random teacher of the same kind (for tests and dry runs)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--out", required=True, metavar="DIR", help="where the CSVs and mode_switch.png go")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


# Teacher-config keys taken from the checkpoint's args.teachers entry; the rest of that entry (head
# versions, token slots, ...) describes the student's adaptor, not the teacher network.
def teacher_config(conf: dict, args: argparse.Namespace, adaptor=None) -> dict:
    """The teacher config: the checkpoint's entry with the CLI overrides applied."""
    from openradio.eval.mode_switch import teacher_entry_config

    width = getattr(getattr(adaptor, "feat_mlp", None), "output_dim", None)
    conf = teacher_entry_config(conf, args.teacher, tiny=args.tiny_teacher, width=width)
    if args.teacher_model:
        conf["model"] = args.teacher_model
    if args.teacher_weights:
        conf["weights"] = args.teacher_weights
    return conf


def run(args: argparse.Namespace) -> int:
    # the command's stack is imported when it runs: `openradio --help` and the other commands stay fast
    from openradio import radio_model
    from openradio.eval.mode_switch import (
        parse_resolution_range,
        plot_mode_switch,
        run_mode_switch,
        write_mode_switch_csv,
    )
    from openradio.inputs.imageio import list_images
    from openradio.runtime import model_label, pick_device

    device = pick_device(args.device)
    progress = not args.no_progress
    paths = list_images(args.data, check_exists=True)
    if args.num_images and len(paths) > args.num_images:
        paths = sorted(random.Random(args.seed).sample(paths, args.num_images))
    out_dir = Path(args.out)

    teacher = None
    teacher_conf_seen = None
    results = {}
    for version in args.version:
        model = (
            radio_model(version, adaptor_names=[args.teacher], vitdet_window_size=args.vitdet_window, progress=progress)
            .to(device)
            .eval()
        )
        adaptor = model.adaptors[args.teacher]
        conf = teacher_config(getattr(adaptor, "teacher_conf", {}) or {}, args, adaptor)
        if teacher is None or conf != teacher_conf_seen:
            # one teacher for all models when they share it (the usual case: every RADIO uses DINOv2-g)
            from openradio.teachers import build_teacher

            teacher = build_teacher(conf).to(device).eval()
            teacher_conf_seen = conf
        step = model.min_resolution_step
        resolutions = parse_resolution_range(args.resolutions or f"192:1536:{step}", step)
        name = model_label(version)
        rows = run_mode_switch(
            model,
            teacher,
            args.teacher,
            paths,
            resolutions,
            batch_size=args.batch_size,
            device=device,
            amp=args.amp,
            num_workers=args.workers,
            progress=progress,
        )
        results[name] = rows
        csv_path = write_mode_switch_csv(rows, out_dir / f"mode_switch_{args.teacher}_{name}.csv")
        print(f"{name}: {len(rows)} resolutions over {len(paths)} images -> {csv_path}")
        for r in rows:
            print(f"  {r.resolution:5d}  MSE {r.mse:.5g}  1-cos {r.cos_error:.4f}  fidelity {r.fidelity:.4g}")
        del model
    png = plot_mode_switch(results, out_dir / "mode_switch.png", teacher=args.teacher)
    print(f"wrote {png}")
    return 0
