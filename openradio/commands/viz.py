"""`openradio viz`: PCA pictures of spatial features — side by side, resolution strips, model grids."""

from __future__ import annotations

import argparse
from pathlib import Path

import openradio
from openradio.commands.common import CLIError, add_model_arguments

HELP = "colour images' spatial features by robust PCA (side-by-side PNGs, resolution strips, model grids)"
EXAMPLES = """\
  openradio viz cat.jpg --version radio_v2.5-b --out viz/
  openradio viz photos/ --version radio_v2.5-b --resolutions 256,512,1024 --out viz/   # + a strip per image
  openradio viz cat.jpg --version radio_v2.5-b --version radio_v2.5-l --resolutions 512,1024 --out viz/  # + grid
  openradio viz cat.jpg --version radio_v2.5-b --adaptor dino_v2 --square --out viz/

writes OUT/sbs/<image>.png (input | features, at the first resolution), OUT/strip/<image>.png
(one panel per resolution, when there are several) and OUT/grid/<image>.png (rows = models,
when there are several); with several models sbs/ and strip/ names end in __<model>.
Colours are RGB (first principal component = red); the official scripts' PNGs are BGR."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories of images")
    add_model_arguments(p, multiple_versions=True, resolution=False)
    p.add_argument(
        "--resolutions",
        "--resolution",
        dest="resolutions",
        default=None,
        metavar="R1,R2,...",
        help="comma-separated input sizes in pixels (shorter side; rounded to the model's step); "
        "default: the model's preferred resolution (512 for a local checkpoint)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--square", action="store_true", help="centre-crop to R x R instead of keeping the aspect ratio")
    p.add_argument(
        "--interpolation",
        default="bilinear",
        choices=["bilinear", "nearest", "bicubic"],
        help="upsampling of the colours to the image (nearest shows the token grid)",
    )
    p.add_argument(
        "--pca",
        default="per-panel",
        choices=["per-panel", "shared"],
        help="strip colours: a PCA per resolution (as the official script) or one shared "
        "by all resolutions of an image (colours comparable across panels)",
    )
    p.add_argument(
        "--skip-components",
        type=int,
        default=0,
        metavar="K",
        help="drop the first K principal components (show components K+1..K+3)",
    )
    p.add_argument(
        "--panel-height",
        type=int,
        default=384,
        metavar="PX",
        help="height of each panel in strips (grids use 2/3 of it)",
    )


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}_{k}")
    return out


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from openradio.inputs.imageio import expand_image_args, load_image, resize_center_crop, tensor_to_uint8
    from openradio.runtime import default_resolution, model_label, parse_int_list, pick_device, safe_name
    from openradio.viz.features import colour_maps, resolution_features
    from openradio.viz.pca import pca_rgb
    from openradio.viz.render import model_grid, resolution_strip, side_by_side

    requested = parse_int_list(args.resolutions, "--resolutions") if args.resolutions is not None else None
    if args.skip_components < 0:
        raise CLIError("--skip-components must be >= 0")
    if args.panel_height < 16:
        raise CLIError("--panel-height must be at least 16 pixels")
    images = expand_image_args(args.images)
    for path in images:  # fail before loading any model if an image is unreadable
        load_image(path)
    stems = _unique([safe_name(p.stem) for p in images])
    labels = _unique([model_label(v) for v in args.version])
    out = Path(args.out)
    device = pick_device(args.device)
    several_models = len(args.version) > 1

    # grid rows per image: [(model label, [(res, rgb), ...])], held until every model has run, so
    # stored as uint8 at display size
    grid_rows: dict[str, list] = {s: [] for s in stems}
    grid_inputs: dict[str, np.ndarray] = {}
    written: list[Path] = []
    bar = tqdm(total=len(images) * len(args.version), unit="image", desc="viz", disable=args.no_progress)
    try:
        for version, label in zip(args.version, labels):
            model = openradio.radio_model(
                version,
                adaptor_names=[args.adaptor] if args.adaptor else None,
                vitdet_window_size=args.vitdet_window,
                progress=not args.no_progress,
            )
            model = model.to(device).eval()
            resolutions = requested or [default_resolution(model)]
            suffix = f"__{label}" if several_models else ""
            for path, stem in zip(images, stems):
                bar.set_postfix_str(f"{label}: {path.name}")
                maps = resolution_features(
                    model, load_image(path), resolutions, args.adaptor, square=args.square, amp=args.amp
                )
                # side by side at the first resolution, colours fitted on this picture alone
                r0, x0, f0 = maps[0]
                rgb0 = pca_rgb(f0, x0.shape[-2:], interpolation=args.interpolation, skip=args.skip_components)
                written.append(side_by_side(x0, rgb0).save(out / "sbs" / f"{stem}{suffix}.png"))
                # strips and grids show every resolution at one display size; colour at that size
                h, w = x0.shape[-2:]
                disp = (args.panel_height, max(1, round(w * args.panel_height / h)))
                rgbs = colour_maps(
                    [f for _, _, f in maps],
                    disp,
                    interpolation=args.interpolation,
                    shared=args.pca == "shared",
                    skip=args.skip_components,
                )
                largest = max(maps, key=lambda t: t[1].shape[-1] * t[1].shape[-2])[1]
                if len(maps) > 1:
                    strip = resolution_strip(
                        largest, [(r, c) for (r, _, _), c in zip(maps, rgbs)], panel_height=args.panel_height
                    )
                    written.append(strip.save(out / "strip" / f"{stem}{suffix}.png"))
                if several_models:
                    grid_inputs.setdefault(stem, tensor_to_uint8(resize_center_crop(largest, disp)))
                    grid_rows[stem].append((label, [(r, tensor_to_uint8(c)) for (r, _, _), c in zip(maps, rgbs)]))
                bar.update(1)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        bar.close()
    if several_models:
        for stem in stems:
            grid = model_grid(grid_inputs[stem], grid_rows[stem], panel_height=max(16, args.panel_height * 2 // 3))
            written.append(grid.save(out / "grid" / f"{stem}.png"))
    print(
        f"wrote {len(written)} PNGs to {out}/ ("
        + ", ".join(
            f"{d}/: {sum(1 for p in written if p.parent.name == d)}"
            for d in ("sbs", "strip", "grid")
            if any(p.parent.name == d for p in written)
        )
        + ")"
    )
    return 0
