"""`openradio data`: prepare training data (make-shards: image folder -> webdataset tar shards;
cache-teachers: a recipe's teacher targets, computed once, for training without teachers)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from openradio.commands.common import CLIError

HELP = "prepare training data: pack images into webdataset tar shards, or cache a recipe's teacher targets"
EXAMPLES = """\
  openradio data make-shards images/ shards/                      # 1000 images per shard
  openradio data make-shards images/ shards/ --max-count 5000 --max-size 2G
  openradio data make-shards list.txt shards/ --verify            # leave out undecodable images

writes OUT/shard-000000.tar, OUT/shard-000001.tar, ... and OUT/index.json (shard names and counts).
Train on them with data.path=OUT (or a brace pattern / URLs of the .tar files)."""
CACHE_EXAMPLES = """\
  openradio data cache-teachers --config tiny --data shards/ --out cache/
  openradio data cache-teachers --config configs/radio_v2.5-b.yaml --data shards/ --out cache/ --dtype float32
  openradio train configs/tiny.yaml data.path=shards/ data.augment=false data.teacher_cache=cache/

runs every teacher of the recipe once per image at every resolution the recipe trains at and
writes OUT/cache-NNNNNN.tar + OUT/index.json. A killed run resumes when rerun with the same
arguments (--overwrite starts again). Training from the cache needs data.augment=false."""

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> float:
    """``'500M'``, ``'2G'``, ``'1.5GB'`` or plain bytes -> bytes (powers of 1000)."""
    m = _SIZE.match(str(text))
    if not m:
        raise CLIError(f"--max-size must be a size like 500M, 2G or a number of bytes, got {text!r}")
    value = float(m.group(1)) * 1000 ** " kmgt".index(m.group(2).lower() or " ")
    if value <= 0:
        raise CLIError(f"--max-size must be positive, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    ms = sub.add_parser(
        "make-shards",
        help="write webdataset tar shards from an image folder or file list",
        description="Pack images (original bytes) into shard-NNNNNN.tar files plus index.json.",
        epilog="examples:\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ms.add_argument("src", metavar="SRC", help="image folder (searched recursively) or text file of image paths")
    ms.add_argument("out", metavar="OUT_DIR", help="output folder for the shards")
    ms.add_argument("--max-count", type=int, default=1000, metavar="N", help="images per shard (default 1000)")
    ms.add_argument(
        "--max-size",
        default="1G",
        metavar="SIZE",
        help="bytes per shard before starting the next, e.g. 500M, 2G (default 1G)",
    )
    ms.add_argument(
        "--no-shuffle",
        action="store_true",
        help="keep the source order (default: a seeded random order, so each shard is a random sample)",
    )
    ms.add_argument("--seed", type=int, default=0, help="seed of the random order (default 0)")
    ms.add_argument("--verify", action="store_true", help="decode every image and leave out unreadable ones")
    ms.add_argument("--overwrite", action="store_true", help="replace shards already in OUT_DIR")
    ms.add_argument("--no-progress", "--quiet", dest="quiet", action="store_true", help="hide the progress bar")
    ct = sub.add_parser(
        "cache-teachers",
        help="run a recipe's teachers once per image and store their targets",
        description="Compute the teacher targets of a recipe once per image (every teacher, every "
        "resolution) and write them to tar shards that training reads with "
        "data.teacher_cache=OUT_DIR instead of running the teachers.",
        epilog="examples:\n" + CACHE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ct.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="recipe overrides as `openradio train` takes them, e.g. teachers.0.input_size=224",
    )
    ct.add_argument(
        "--config",
        required=True,
        metavar="RECIPE",
        help="training recipe: a YAML file or a shipped name (tiny, radio_v2.5-b, radio_v2.5-l)",
    )
    ct.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="images to cache: shard folder/pattern, image folder or file list (default: data.path)",
    )
    ct.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder for the cache")
    ct.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default="float16",
        help="storage type of the targets (default float16: half the disk, ~1e-3 relative error)",
    )
    ct.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per teacher batch (default 16)")
    ct.add_argument("--max-count", type=int, default=1000, metavar="N", help="images per cache shard (default 1000)")
    ct.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: the recipe's, else cuda if available)"
    )
    ct.add_argument("--overwrite", action="store_true", help="rebuild a cache already in OUT_DIR (default: resume it)")
    ct.add_argument("--no-progress", "--quiet", dest="quiet", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) == "cache-teachers":
        return run_cache_teachers(args)
    if getattr(args, "data_command", None) != "make-shards":
        raise CLIError("choose a data subcommand: make-shards or cache-teachers (see `openradio data --help`)")
    from openradio.distill.shards import INDEX_NAME, write_shards

    src = Path(args.src)
    if not src.exists():
        raise CLIError(f"source not found: {src} (give an image folder or a text file of image paths)")
    if args.max_count < 1:
        raise CLIError(f"--max-count must be at least 1, got {args.max_count}")
    try:
        shards = write_shards(
            src,
            args.out,
            max_count_per_shard=args.max_count,
            max_size=parse_size(args.max_size),
            shuffle=not args.no_shuffle,
            seed=args.seed,
            verify=args.verify,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except FileExistsError as e:
        raise CLIError(str(e)) from None

    index = json.loads((Path(args.out) / INDEX_NAME).read_text())
    left = len(index.get("left_out") or [])
    print(
        f"wrote {index['total']} images into {len(shards)} shards in {args.out}"
        + (f" ({left} unreadable left out)" if left else "")
        + f"; index: {Path(args.out) / INDEX_NAME}"
    )
    return 0


def run_cache_teachers(args: argparse.Namespace) -> int:
    from openradio.distill.config import load_config, shipped_recipe

    config = Path(args.config)
    if not config.is_file():
        try:
            config = shipped_recipe(args.config)
        except FileNotFoundError as e:
            raise CLIError(f"recipe not found: {args.config} is no file and {e}") from None
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise CLIError(f"overrides look like key.path=value, got {bad[0]!r}")
    if args.batch_size < 1 or args.max_count < 1:
        raise CLIError("--batch-size and --max-count must be at least 1")
    cfg = load_config(config, list(args.overrides))
    if not (args.data or cfg.data.path):
        raise CLIError("no data to cache: pass --data PATH (shards, image folder or file list)")
    from openradio.distill.cache_build import build_cache

    try:
        index = build_cache(
            cfg,
            args.out,
            data_path=args.data,
            dtype=args.dtype,
            batch_size=args.batch_size,
            max_count=args.max_count,
            overwrite=args.overwrite,
            device=args.device,
            progress=not args.quiet,
        )
    except FileExistsError as e:
        raise CLIError(str(e)) from None

    meta = json.loads(Path(index).read_text())
    size = sum(p.stat().st_size for p in Path(args.out).glob("cache-*.tar"))
    data = args.data or cfg.data.path
    print(
        f"cached {len(meta['entries'])} teacher targets for {meta['total']} images ({_human(size)}, "
        f"{meta['dtype']}) in {args.out}; train with data.path={data} data.augment=false "
        f"data.teacher_cache={args.out}"
    )
    return 0


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
