"""`openradio zero-shot`: zero-shot classification accuracy at several resolutions."""

from __future__ import annotations

import argparse
from pathlib import Path

from openradio.commands.common import CLIError, add_model_arguments

HELP = "zero-shot classification (clip/siglip adaptor + open_clip text tower) at several resolutions"
EXAMPLES = """\
  openradio zero-shot --version radio_v2.5-l --data /data/imagenet/val --classnames imagenet \\
      --resolutions 224,432,768,1024 --out results/zs
  openradio zero-shot --version radio_v2.5-b --version radio_v2.5-l --data val --classnames imagenet \\
      --resolutions 512,1024 --vitdet-window 16 --out results/zs-vitdet
  openradio zero-shot --version model.pth.tar --data my_images/ --templates simple \\
      --text-weights dfn5b_open_clip.bin --out results/mine
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, multiple_versions=True, adaptor=False, resolution=False)
    p.add_argument(
        "--adaptor",
        default="clip",
        metavar="NAME",
        help="language-aligned adaptor to classify with (clip or siglip; default clip)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="ImageFolder directory (DIR/<class>/<image>) or a file of 'path<TAB>label' lines",
    )
    p.add_argument(
        "--resolutions",
        default="224,432,768,1024",
        metavar="R1,R2,...",
        help="comma-separated square input sizes (default 224,432,768,1024)",
    )
    p.add_argument(
        "--templates",
        default="openai",
        choices=["openai", "simple", "base"],
        help="prompt templates: OpenAI's 80 ImageNet prompts, open_clip's simple set, or one prompt",
    )
    p.add_argument(
        "--classnames",
        default=None,
        metavar="FILE|imagenet",
        help="class names (one per line, in sorted-folder / label order) or 'imagenet' for the "
        "ImageNet-1k names; default: the folder names / list-file labels",
    )
    p.add_argument(
        "--text-weights",
        default=None,
        metavar="FILE",
        help="local open_clip weights of the adaptor's teacher (default: open_clip's download)",
    )
    p.add_argument(
        "--text-model",
        default=None,
        metavar="NAME|JSON",
        help="override the teacher's open_clip architecture (name or model-config JSON)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="classifier cache (default: <torch hub dir>/openradio/classifiers)",
    )
    p.add_argument("--no-cache", action="store_true", help="always recompute the text classifier")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--out", required=True, metavar="DIR", help="where zero_shot.csv and zero_shot.md go")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from openradio import radio_model
    from openradio.eval.data import read_classnames, read_labelled_images
    from openradio.eval.zero_shot import evaluate_zero_shot, get_templates, write_zero_shot_report, zero_shot_classifier
    from openradio.model.text import attach_text_tower, text_tower_problem, text_tower_source
    from openradio.runtime import model_label, parse_int_list, pick_device

    resolutions = parse_int_list(args.resolutions, "--resolutions")
    device = pick_device(args.device)
    data = read_labelled_images(args.data, read_classnames(args.classnames))
    templates = get_templates(args.templates)
    progress = not args.no_progress
    print(f"{len(data)} images, {data.num_classes} classes, {len(templates)} templates, device {device}")

    results = {}
    for version in args.version:
        model = (
            radio_model(version, adaptor_names=[args.adaptor], vitdet_window_size=args.vitdet_window, progress=progress)
            .to(device)
            .eval()
        )
        adaptor = model.adaptors[args.adaptor]
        conf = dict(getattr(adaptor, "teacher_conf", {}) or {})
        if args.text_model:  # replaces the teacher's own tower (and any tower the checkpoint names)
            conf["model"] = args.text_model
            conf.pop("text_model", None)
            conf.pop("text_weights", None)
        if conf.get("type", "open_clip") != "open_clip" and not args.text_model:
            raise ValueError(
                f"adaptor {args.adaptor!r} (teacher type {conf.get('type')!r}) has no open_clip text "
                "tower; use --adaptor clip or siglip"
            )
        # a local checkpoint may name its own text towers, relative to its folder (openradio demo's)
        base_dir = Path(version).parent if Path(version).is_file() else None
        tower_name = text_tower_source(conf, base_dir)[0]
        problem = text_tower_problem(adaptor, tower_name, args.adaptor) if tower_name else None
        if problem:  # before any tower is built or downloaded
            raise CLIError(problem)
        # lazy: when the classifier is cached the text tower is never loaded
        attach_text_tower(adaptor, conf, weights=args.text_weights, lazy=True, base_dir=base_dir)
        classifier = zero_shot_classifier(
            adaptor,
            data.classnames,
            templates,
            adaptor_name=args.adaptor,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            progress=progress,
        )
        name = model_label(version)
        results[name] = evaluate_zero_shot(
            model,
            classifier,
            data,
            resolutions,
            adaptor=args.adaptor,
            batch_size=args.batch_size,
            device=device,
            amp=args.amp,
            num_workers=args.workers,
            vitdet_window=args.vitdet_window,
            progress=progress,
        )
        for r in results[name]:
            print(f"{name}  res {r.row_label:>16}  top-1 {r.top1:7.3f}  top-5 {r.top5:7.3f}  ({r.num_images} images)")
        del model
    csv_path, md_path = write_zero_shot_report(results, Path(args.out))
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {csv_path} and {md_path}")
    return 0
