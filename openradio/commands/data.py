"""`openradio data`: prepare training data (make-shards: image folder -> webdataset tar shards)."""
from __future__ import annotations

import argparse
import re

HELP = "prepare training data: pack an image folder or file list into webdataset tar shards"
EXAMPLES = """\
  openradio data make-shards images/ shards/                      # 1000 images per shard
  openradio data make-shards images/ shards/ --max-count 5000 --max-size 2G
  openradio data make-shards list.txt shards/ --verify            # leave out undecodable images

writes OUT/shard-000000.tar, OUT/shard-000001.tar, ... and OUT/index.json (shard names and counts).
Train on them with data.path=OUT (or a brace pattern / URLs of the .tar files)."""

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> float:
    """``'500M'``, ``'2G'``, ``'1.5GB'`` or plain bytes -> bytes (powers of 1000)."""
    from openradio.cli import CLIError

    m = _SIZE.match(str(text))
    if not m:
        raise CLIError(f"--max-size must be a size like 500M, 2G or a number of bytes, got {text!r}")
    value = float(m.group(1)) * 1000 ** " kmgt".index(m.group(2).lower() or " ")
    if value <= 0:
        raise CLIError(f"--max-size must be positive, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    ms = sub.add_parser("make-shards", help="write webdataset tar shards from an image folder or file list",
                        description="Pack images (original bytes) into shard-NNNNNN.tar files plus index.json.",
                        epilog="examples:\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ms.add_argument("src", metavar="SRC", help="image folder (searched recursively) or text file of image paths")
    ms.add_argument("out", metavar="OUT_DIR", help="output folder for the shards")
    ms.add_argument("--max-count", type=int, default=1000, metavar="N", help="images per shard (default 1000)")
    ms.add_argument("--max-size", default="1G", metavar="SIZE",
                    help="bytes per shard before starting the next, e.g. 500M, 2G (default 1G)")
    ms.add_argument("--no-shuffle", action="store_true",
                    help="keep the source order (default: a seeded random order, so each shard is a random sample)")
    ms.add_argument("--seed", type=int, default=0, help="seed of the random order (default 0)")
    ms.add_argument("--verify", action="store_true", help="decode every image and leave out unreadable ones")
    ms.add_argument("--overwrite", action="store_true", help="replace shards already in OUT_DIR")
    ms.add_argument("--no-progress", "--quiet", dest="quiet", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from openradio.cli import CLIError

    if getattr(args, "data_command", None) != "make-shards":
        raise CLIError("choose a data subcommand: make-shards (see `openradio data --help`)")
    from openradio.distill.shards import INDEX_NAME, write_shards

    src = Path(args.src)
    if not src.exists():
        raise CLIError(f"source not found: {src} (give an image folder or a text file of image paths)")
    if args.max_count < 1:
        raise CLIError(f"--max-count must be at least 1, got {args.max_count}")
    try:
        shards = write_shards(src, args.out, max_count_per_shard=args.max_count, max_size=parse_size(args.max_size),
                              shuffle=not args.no_shuffle, seed=args.seed, verify=args.verify,
                              overwrite=args.overwrite, progress=not args.quiet)
    except FileExistsError as e:
        raise CLIError(str(e)) from None
    import json
    index = json.loads((Path(args.out) / INDEX_NAME).read_text())
    left = len(index.get("left_out") or [])
    print(f"wrote {index['total']} images into {len(shards)} shards in {args.out}"
          + (f" ({left} unreadable left out)" if left else "") + f"; index: {Path(args.out) / INDEX_NAME}")
    return 0
