"""`openradio features`: summaries and spatial features of images of any size, saved with safetensors.

The file's layout, version, writer and reader: :mod:`openradio.formats.features`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import openradio
from openradio.commands.common import CLIError, add_model_arguments, parse_adaptors

HELP = "write summaries and spatial features of a few images (any size) to one safetensors file"
EXAMPLES = """\
  openradio features cat.jpg photos/ --version radio_v2.5-b --out feats.safetensors
  openradio features photos/ --version radio_v2.5-b --adaptor clip --adaptor sam --resolution 512 --out f.safetensors
  openradio features photos/ --version radio_v2.5-l --vitdet-window 16 --resolution 1024 --amp --out f.safetensors

Images keep their aspect ratio: the shorter side becomes --resolution (default: the model's
preferred resolution, 512 for a local checkpoint) and each side is rounded to the model's
resolution step (--square: resize and centre-crop to R x R instead). All outputs are held in
memory until the one file is written: for more than a few hundred images, or to resume a stopped
run, use `openradio extract` (streamed parquet/safetensors parts, same numbers). Read it back:
  from safetensors import safe_open
  with safe_open("feats.safetensors", "pt") as f:
      feats = f.get_tensor("cat/backbone/features")   # (1, C, h, w)
      meta = {k: json.loads(v) for k, v in f.metadata().items()}"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories of images")
    add_model_arguments(p, adaptor=False)
    p.add_argument(
        "--adaptor",
        action="append",
        default=None,
        metavar="NAME",
        help="also store this teacher adaptor's outputs (e.g. clip, siglip, dino_v2, sam); "
        "repeat or comma-separate for several; the backbone's are always stored",
    )
    p.add_argument(
        "--square", action="store_true", help="resize and centre-crop to R x R instead of keeping the aspect ratio"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="N",
        help="images per forward pass (images of the same input size are batched together)",
    )
    p.add_argument(
        "--upsample",
        choices=["bilateral", "bilinear"],
        default=None,
        help="store the feature maps at the model input's pixel resolution: joint-bilateral "
        "(guided by the image) or bilinear",
    )
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="output file")


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique with ``_1``, ``_2``... ('/' cannot occur in a stem, so keys stay
    ``stem/output/kind``)."""
    taken: set[str] = set()
    out = []
    for p in paths:
        stem = p.stem or p.name or "image"
        name, k = stem, 0
        while name in taken:
            k += 1
            name = f"{stem}_{k}"
        taken.add(name)
        out.append(name)
    return out


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise CLIError(f"--out {out} is a directory; give a file name such as {out / 'features.safetensors'}")
    out.parent.mkdir(parents=True, exist_ok=True)


def run(args: argparse.Namespace) -> int:
    # the command's stack is imported when it runs: `openradio --help` and the other commands stay fast
    import torch
    from tqdm.auto import tqdm

    from openradio.extract.mapper import Mapper, summary_column
    from openradio.formats.features import write_features
    from openradio.inputs.imageio import expand_image_args, load_image
    from openradio.runtime import cpu_has_native_bf16, pick_device, warn_if_slow_bf16

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.resolution is not None and args.resolution < 1:
        raise CLIError(f"--resolution must be a positive number of pixels, got {args.resolution}")
    adaptors = parse_adaptors(args.adaptor)
    if "backbone" in adaptors:
        raise CLIError("'backbone' is always stored; --adaptor takes teacher adaptor names (e.g. clip, sam)")
    out = Path(args.out)
    _check_out(out)
    images = expand_image_args(args.images)
    # decode every image before any model work, so a bad file fails fast and names itself
    for path in tqdm(images, desc="checking images", unit="image", disable=len(images) < 16 or args.no_progress):
        load_image(path)
    stems = unique_stems(images)
    device = pick_device(args.device)

    model = openradio.radio_model(
        args.version,
        adaptor_names=adaptors or None,
        vitdet_window_size=args.vitdet_window,
        progress=not args.no_progress,
    )
    model = model.to(device).eval()
    if args.amp and device.type == "cpu" and cpu_has_native_bf16():
        model.set_compute_dtype(torch.bfloat16)  # bf16 weights, fused oneDNN blocks: no per-call casts
    try:
        mapper = Mapper(
            model,
            adaptors,
            "full",
            torch.float32,
            torch.bfloat16 if args.amp else torch.float32,
            args.resolution,
            args.square,
            batch_size=args.batch_size,
            upsample=args.upsample,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.amp:
        warn_if_slow_bf16(device)
    res, output_names = mapper.resolution, mapper.outputs

    features: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    input_sizes: dict[str, list[int]] = {}
    # the Mapper batches the images of a chunk that share an input size (openradio extract's batching)
    chunk = args.batch_size * 4
    bar = tqdm(total=len(images), desc="features", unit="image", disable=args.no_progress)
    try:
        for s in range(0, len(images), chunk):
            xs = [mapper.prepare(load_image(p)) for p in images[s : s + chunk]]
            cols = mapper(xs)
            for j, (stem, x) in enumerate(zip(stems[s : s + chunk], xs)):
                input_sizes[stem] = [int(x.shape[-2]), int(x.shape[-1])]
                features[stem] = {
                    name: {
                        "summary": torch.from_numpy(cols[summary_column(name)][j])[None],
                        "features": cols["features"][j][name][None],
                    }
                    for name in output_names
                }
            bar.update(len(xs))
    finally:
        bar.close()

    metadata = {
        "version": getattr(model, "version", None) or args.version,
        "feature_fmt": "NCHW",
        "adaptors": adaptors,
        "outputs": output_names,
        "resolution": input_sizes,
        "images": {s: str(p) for s, p in zip(stems, images)},
        "requested_resolution": res,
        "square": bool(args.square),
        "vitdet_window": args.vitdet_window,
        "amp": bool(args.amp),
        "upsample": args.upsample,
    }
    write_features(out, features, metadata)  # atomic: never a half-written file under the final name
    channels = {name: int(features[stems[0]][name]["features"].shape[1]) for name in output_names}
    print(
        f"wrote {len(images)} image(s) x {len(output_names)} output(s) to {out} "
        f"(channels: {', '.join(f'{n} {c}' for n, c in channels.items())})"
    )
    return 0
