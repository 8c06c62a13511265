"""`openradio extract`: features of image folders, file lists, webdataset shards and videos,
streamed to parquet parts with a manifest; resumable, bounded memory, torchrun-ready."""

from __future__ import annotations

import argparse
import importlib

from openradio.commands.common import CLIError, add_model_arguments, parse_adaptors
from openradio.extras import require

HELP = "features of many images or videos to parquet parts (+ safetensors), resumable; also under torchrun"
EXAMPLES = """\
  openradio extract photos/ --version radio_v2.5-b --out feats/
  openradio extract 'shards/part-{0000..0099}.tar' --version radio_v2.5-l --adaptor clip --out s3://bucket/feats
  openradio extract list.parquet --version radio_v2.5-b --features pooled:4 --part-size 5000 --out feats/
  openradio extract talk.mp4 --version radio_v2.5-b --fps 2 --out video-feats/
  openradio extract talk.mp4 --version radio_v2.5-b --fps 8 --clip-frames 4 --out video-feats/
  openradio extract masks/ --version radio_v2.5-b --features full --upsample bilateral --out dense/
  torchrun --nproc-per-node 8 -m openradio.extract photos/ --version radio_v2.5-h --out feats/

Rerun the same command to resume: complete parts are kept, the rest is redone. Output layout and
reading it back (pyarrow, pandas, datasets, openradio.extract.read): docs/extract.md."""

# --engine name -> "module:function" taking (args) and returning the manifest dict
ENGINES = {"local": "openradio.extract:extract", "ray": "openradio.ray:run_ray"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="image folders, file lists (.txt/.csv/.parquet with a path column), webdataset tar "
        "shards (brace patterns allowed) or videos; local paths or fsspec URLs",
    )
    add_model_arguments(p, adaptor=False)
    p.add_argument(
        "--adaptor",
        action="append",
        default=None,
        metavar="NAME",
        help="also store this adaptor's summary (<name>_summary column); repeat or comma-separate",
    )
    p.add_argument(
        "--square", action="store_true", help="resize and centre-crop to R x R instead of keeping the aspect"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (local or fsspec URL)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="compute dtype (default: bfloat16 on CUDA, float32 on CPUs; --amp means bfloat16)",
    )
    p.add_argument("--workers", type=int, default=2, metavar="N", help="DataLoader workers decoding and resizing")
    p.add_argument(
        "--part-size",
        type=int,
        default=None,
        metavar="ROWS",
        help="rows per part file (default 10000; 256 with --features full)",
    )
    p.add_argument(
        "--features",
        default="none",
        metavar="none|pooled:G|full",
        help="also store spatial features: none, average-pooled to G x G, or full (default none)",
    )
    p.add_argument("--features-dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second taken from videos (default 1)")
    p.add_argument(
        "--clip-frames",
        type=int,
        default=1,
        metavar="T",
        help="video frames run in clips of T: one CPE viewport per clip, or the model's temporal "
        "patch projection when T is its temporal patch size (default 1: frame by frame)",
    )
    p.add_argument(
        "--upsample",
        choices=["bilateral", "bilinear"],
        default=None,
        help="with --features full: store the feature maps at the model input's pixel resolution, "
        "joint-bilateral (guided by the image) or bilinear (default part size then 16 rows)",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=16,
        metavar="PX",
        help="inputs with a side below this are skipped as too_small (default 16)",
    )
    p.add_argument(
        "--layout",
        choices=["openradio", "clip-retrieval"],
        default="openradio",
        help="clip-retrieval: img_emb/img_emb_N.npy + metadata/metadata_N.parquet",
    )
    p.add_argument("--engine", choices=sorted(ENGINES), default="local")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output made differently")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")


def run(args: argparse.Namespace) -> int:
    for module in ("pyarrow", "fsspec", "braceexpand"):  # before the package that imports them
        require(module, "openradio extract")
    from openradio.extract import ExtractError
    from openradio.extract.sources import SourceError

    if args.workers < 0:
        raise CLIError(f"--workers must be 0 or more, got {args.workers}")
    adaptors = parse_adaptors(args.adaptor)
    if "backbone" in adaptors:
        raise CLIError("the backbone's summary is always stored; --adaptor takes teacher adaptor names")
    dtype = args.dtype or ("bfloat16" if args.amp else None)
    module, func = ENGINES[args.engine].split(":")
    engine = getattr(importlib.import_module(module), func)
    try:
        doc = engine(
            args.sources,
            args.version,
            args.out,
            adaptors=adaptors,
            resolution=args.resolution,
            square=args.square,
            vitdet_window=args.vitdet_window,
            batch_size=args.batch_size,
            device=args.device,
            dtype=dtype,
            workers=args.workers,
            part_size=args.part_size,
            features=args.features,
            features_dtype=args.features_dtype,
            fps=args.fps,
            clip_frames=args.clip_frames,
            upsample=args.upsample,
            layout=args.layout,
            min_size=args.min_size,
            overwrite=args.overwrite,
            compile=args.compile,
            progress=not args.no_progress,
        )
    except (ExtractError, SourceError) as e:
        raise CLIError(str(e)) from None
    if doc:
        print(doc["last_run"]["end_line"])
        print(f"wrote {doc['totals']['rows']} row(s) in {len(doc['parts'])} part(s) to {args.out}")
    return 0
