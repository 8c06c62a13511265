"""`openradio viz-video`: a video of a model's spatial features, coloured by one stable PCA."""

from __future__ import annotations

import argparse
from pathlib import Path

import openradio
from openradio.commands.common import CLIError, add_model_arguments
from openradio.extras import require

HELP = "colour a video's spatial features by robust PCA (stable colours across frames) and write an H.264 mp4"
EXAMPLES = """\
  openradio viz-video clip.mp4 --version radio_v2.5-b --resolution 512 --out clip_pca.mp4
  openradio viz-video clip.mp4 --version radio_v2.5-b --side-by-side --batch-size 8 --out sbs.mp4
  openradio viz-video clip.mp4 --version radio_v2.5-l --adaptor dino_v2 --max-frames 300 --out dino.mp4
  openradio viz-video clip.mp4 --version ./nemotron-omni-radio --clip-frames 2 --out packed.mp4

The PCA is fitted once on evenly spaced key frames (--key-frames) and colours every frame, so
colours do not flicker. Frames keep their aspect: the shorter side becomes --resolution.
--clip-frames T groups consecutive frames into clips of T that share one CPE viewport (the
official cpe_video_mode); on a model with a temporal patch projection of T frames each clip runs
temporally packed and its features colour all of its frames (see docs/video.md)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN.mp4", help="input video (anything FFmpeg/PyAV decodes)")
    add_model_arguments(p)
    p.add_argument("--out", required=True, metavar="OUT.mp4", help="output video file (H.264)")
    p.add_argument("--side-by-side", action="store_true", help="put the (resized) input left of the features")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="frames per forward pass")
    p.add_argument("--key-frames", type=int, default=30, metavar="K", help="evenly spaced frames the PCA is fitted on")
    p.add_argument(
        "--interpolation",
        default="nearest",
        choices=["nearest", "bilinear", "bicubic"],
        help="upsampling of the colours (nearest shows the token grid, as the official script)",
    )
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="only the first N frames")
    p.add_argument("--crf", type=int, default=23, help="H.264 quality, 0..51, lower is better")
    p.add_argument("--skip-components", type=int, default=0, metavar="K", help="drop the first K principal components")
    p.add_argument(
        "--clip-frames",
        type=int,
        default=1,
        metavar="T",
        help="frames per clip: a clip shares one CPE viewport, and runs temporally packed on a model "
        "whose temporal patch size is T (default 1: frame by frame)",
    )


def run(args: argparse.Namespace) -> int:
    from openradio.runtime import pick_device

    require("av", "openradio viz-video")  # before any model is loaded

    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--key-frames", args.key_frames, 1),
        ("--skip-components", args.skip_components, 0),
        ("--clip-frames", args.clip_frames, 1),
    ):
        if value < low:
            raise CLIError(f"{flag} must be >= {low}, got {value}")
    if args.max_frames is not None and args.max_frames < 1:
        raise CLIError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.resolution is not None and args.resolution < 1:
        raise CLIError(f"--resolution must be a positive number of pixels, got {args.resolution}")
    if not 0 <= args.crf <= 51:
        raise CLIError(f"--crf must be in 0..51, got {args.crf}")
    src, dst = Path(args.input), Path(args.out)
    if not src.is_file():
        raise CLIError(f"input video not found: {src}")
    if src.resolve() == dst.resolve():
        raise CLIError("--out must differ from the input video")
    from openradio.viz.video import probe_video

    probe_video(src)  # a clear error for an unreadable file before the model is loaded

    from openradio.viz.video import visualize_video

    model = openradio.radio_model(
        args.version,
        adaptor_names=[args.adaptor] if args.adaptor else None,
        vitdet_window_size=args.vitdet_window,
        progress=not args.no_progress,
    )
    model = model.to(pick_device(args.device)).eval()
    if args.clip_frames > 1:
        from openradio.model.video import uses_temporal_packing  # lazy: the CLI starts fast

        how = (
            "temporally packed by the model's video projection"
            if uses_temporal_packing(model, args.clip_frames)
            else "one CPE viewport per clip"
        )
        print(f"clips of {args.clip_frames} frames: {how}")
    summary = visualize_video(
        model,
        src,
        dst,
        resolution=args.resolution,
        adaptor=args.adaptor,
        side_by_side=args.side_by_side,
        batch_size=args.batch_size,
        num_key_frames=args.key_frames,
        interpolation=args.interpolation,
        crf=args.crf,
        amp=args.amp,
        max_frames=args.max_frames,
        skip=args.skip_components,
        progress=not args.no_progress,
        clip_frames=args.clip_frames,
    )
    print(
        f"wrote {summary.path}: {summary.num_frames} frames, {summary.width}x{summary.height} "
        f"at {float(summary.fps):.3g} fps"
    )
    return 0
