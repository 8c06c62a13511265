"""`openradio segment`: open-vocabulary segmentation with the clip/siglip adaptor and its text tower."""

from __future__ import annotations

import argparse
from pathlib import Path

from openradio.commands.common import CLIError, add_model_arguments

HELP = "open-vocabulary segmentation: label each pixel with the best-matching prompt (clip/siglip adaptor)"
EXAMPLES = """\
  openradio segment photo.jpg --version radio_v2.5-b --adaptor siglip --prompts "cat,sofa,floor" --out seg/
  openradio segment photos/ --version radio_v2.5-l --prompts "road,car,person,sky" --resolution 1024 \\
      --window 512 --stride 256 --threshold 0.1 --out seg-hr/
  openradio segment photo.jpg --version model.pth.tar --prompts "cat,dog" --attention plain --out seg-plain/
writes per image STEM_labels.png (palette PNG: 0 = background, k = k-th prompt), STEM_overlay.png
(colour overlay with a legend) and STEM_scores.json (per prompt: pixel share, mean and max cosine).
attention: 'scra' = self-correlating last block (q.q + k.k attention), 'plain' = the model as it is;
both map patch tokens with the adaptor's summary head (see docs/dense.md).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories of images")
    add_model_arguments(p, adaptor=False, resolution=False)
    p.add_argument(
        "--adaptor",
        default="clip",
        choices=["clip", "siglip"],
        help="language-aligned adaptor whose summary head maps the patches (default clip)",
    )
    p.add_argument("--prompts", required=True, metavar="A,B,C", help="comma-separated class prompts")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--attention",
        default="scra",
        choices=["scra", "plain"],
        help="last block's attention: self-correlating (scra, default) or unchanged (plain)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="COS",
        help="pixels whose best cosine is below this are background (label 0)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        metavar="PX",
        help="short side the image is resized to (default: the model's preferred resolution)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="PX",
        help="sliding-window inference with PX x PX crops (for high resolutions)",
    )
    p.add_argument("--stride", type=int, default=None, metavar="PX", help="window stride (default 2/3 of --window)")
    p.add_argument(
        "--templates",
        default="openai",
        choices=["openai", "simple", "base"],
        help="prompt templates averaged per prompt (default: OpenAI's 80 ImageNet templates)",
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


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from openradio import radio_model
    from openradio.dense.segment import prompt_embeddings, segment, write_segmentation
    from openradio.inputs.imageio import expand_image_args, load_image
    from openradio.model.text import attach_text_tower, text_tower_problem, text_tower_source
    from openradio.runtime import pick_device, safe_name

    prompts = [s.strip() for s in args.prompts.split(",") if s.strip()]
    if not prompts:
        raise CLIError("--prompts is empty; pass comma-separated class names, e.g. --prompts 'cat,sofa,floor'")
    if args.window is not None and args.window <= 0:
        raise CLIError(f"--window must be a positive number of pixels, got {args.window}")
    images = expand_image_args(args.images)
    device = pick_device(args.device)
    model = (
        radio_model(
            args.version,
            adaptor_names=[args.adaptor],
            vitdet_window_size=args.vitdet_window,
            text_towers=False,
            progress=not args.no_progress,
        )
        .to(device)
        .eval()
    )
    adaptor = model.adaptors[args.adaptor]
    conf = dict(getattr(adaptor, "teacher_conf", {}) or {})
    if args.text_model:
        conf["model"] = args.text_model
        conf.pop("text_model", None)
        conf.pop("text_weights", None)
    base_dir = Path(args.version).parent if Path(args.version).is_file() else None
    tower = text_tower_source(conf, base_dir)[0]
    problem = text_tower_problem(adaptor, tower, args.adaptor) if tower else None
    if problem:
        raise CLIError(problem)
    attach_text_tower(adaptor, conf, weights=args.text_weights, lazy=True, base_dir=base_dir)
    text = prompt_embeddings(model, prompts, args.adaptor, args.templates, progress=not args.no_progress)
    out = Path(args.out)
    stems, seen = [], {}
    for p in images:
        s = safe_name(p.stem)
        seen[s] = seen.get(s, 0) + 1
        stems.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    for path, stem in tqdm(list(zip(images, stems)), desc="segment", unit="image", disable=args.no_progress):
        img = load_image(path)
        r = segment(
            model,
            img.to(device),
            prompts,
            adaptor=args.adaptor,
            attention=args.attention,
            resolution=args.resolution,
            window=args.window,
            stride=args.stride,
            threshold=args.threshold,
            text_embeddings=text,
            amp=args.amp,
        )
        write_segmentation(r, img, out, stem)
        shares = ", ".join(f"{k} {v['pixel_fraction']:.0%}" for k, v in r.class_scores().items() if v["pixel_fraction"])
        tqdm.write(f"{path.name}: {shares}")
    print(f"wrote {len(images)} label maps, overlays and score files to {out}")
    return 0
