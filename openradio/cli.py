"""The ``openradio`` command line. Thin: parses arguments, calls the library, prints.

Each subcommand lives in ``openradio/commands/<name>.py`` and defines ``HELP`` (one line),
``EXAMPLES`` (text shown under ``--help``), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported lazily so ``openradio --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; the order is the order shown in --help
COMMANDS = {
    "demo": "openradio.commands.demo",
    "features": "openradio.commands.features",
    "viz": "openradio.commands.viz",
    "viz-video": "openradio.commands.viz_video",
    "zero-shot": "openradio.commands.zero_shot",
    "knn": "openradio.commands.knn",
    "probe": "openradio.commands.probe",
    "mode-switch": "openradio.commands.mode_switch",
    "train": "openradio.commands.train",
    "export": "openradio.commands.export",
    "data": "openradio.commands.data",
    "bench": "openradio.commands.bench",
    "versions": "openradio.commands.versions",
    "parity": "openradio.commands.parity",
}


class CLIError(Exception):
    """An error whose message is shown to the user as a one-line reason (exit code 2)."""


def add_model_arguments(p: argparse.ArgumentParser, *, multiple_versions: bool = False,
                        adaptor: bool = True, resolution: bool = True) -> None:
    """The flags every model-using subcommand shares, spelled the same everywhere."""
    if multiple_versions:
        p.add_argument("--version", action="append", required=True, metavar="NAME_OR_PATH",
                       help="released version (see `openradio versions`) or a local checkpoint; repeat to compare models")
    else:
        p.add_argument("--version", required=True, metavar="NAME_OR_PATH",
                       help="released version (see `openradio versions`) or a local checkpoint file")
    if adaptor:
        p.add_argument("--adaptor", default=None, metavar="NAME",
                       help="teacher adaptor whose outputs to use (e.g. clip, siglip, dino_v2, sam); default: backbone")
    if resolution:
        p.add_argument("--resolution", type=int, default=None, metavar="PX",
                       help="input side length in pixels (rounded to the model's resolution step)")
    p.add_argument("--vitdet-window", type=int, default=None, metavar="W",
                   help="run in ViTDet mode with W x W-patch windows")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")


def pick_device(name: str | None):
    import torch
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openradio",
        description="openradio: RADIOv2.5 inference, training, evaluation and visualisation.",
        epilog="Run `openradio COMMAND --help` for a command's flags and examples.",
    )
    parser.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            continue  # command not built in this checkout
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP,
                           epilog="examples:\n" + mod.EXAMPLES if getattr(mod, "EXAMPLES", "") else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `key=value` overrides may follow options (openradio train CFG --export f a.b=1)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        rc = args._run(args)
        return int(rc or 0)
    except KeyboardInterrupt:
        print("openradio: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, KeyError, RuntimeError, OSError) as e:
        if args.verbose:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"openradio {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
