"""The ``openradio`` command line. Thin: parses arguments, calls the library, prints.

Each subcommand lives in ``openradio/commands/<name>.py`` and defines ``HELP`` (one line),
``EXAMPLES`` (text shown under ``--help``), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported lazily so ``openradio --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# name -> module; the order is the order shown in --help
COMMANDS = {
    "demo": "openradio.commands.demo",
    "features": "openradio.commands.features",
    "extract": "openradio.commands.extract",
    "search": "openradio.commands.search",
    "viz": "openradio.commands.viz",
    "viz-video": "openradio.commands.viz_video",
    "zero-shot": "openradio.commands.zero_shot",
    "knn": "openradio.commands.knn",
    "probe": "openradio.commands.probe",
    "mode-switch": "openradio.commands.mode_switch",
    "segment": "openradio.commands.segment",
    "finetune": "openradio.commands.finetune",
    "train": "openradio.commands.train",
    "export": "openradio.commands.export",
    "data": "openradio.commands.data",
    "bench": "openradio.commands.bench",
    "versions": "openradio.commands.versions",
    "parity": "openradio.commands.parity",
}


class CLIError(Exception):
    """An error whose message is shown to the user as a one-line reason (exit code 2)."""


def add_model_arguments(
    p: argparse.ArgumentParser, *, multiple_versions: bool = False, adaptor: bool = True, resolution: bool = True
) -> None:
    """The flags every model-using subcommand shares, spelled the same everywhere."""
    if multiple_versions:
        p.add_argument(
            "--version",
            action="append",
            required=True,
            metavar="NAME_OR_PATH",
            help="released version (see `openradio versions`) or a local checkpoint; repeat to compare models",
        )
    else:
        p.add_argument(
            "--version",
            required=True,
            metavar="NAME_OR_PATH",
            help="released version (see `openradio versions`) or a local checkpoint file",
        )
    if adaptor:
        p.add_argument(
            "--adaptor",
            default=None,
            metavar="NAME",
            help="teacher adaptor whose outputs to use (e.g. clip, siglip, dino_v2, sam); default: backbone",
        )
    if resolution:
        p.add_argument(
            "--resolution",
            type=int,
            default=None,
            metavar="PX",
            help="input side length in pixels (rounded to the model's resolution step)",
        )
    p.add_argument(
        "--vitdet-window", type=int, default=None, metavar="W", help="run in ViTDet mode with W x W-patch windows"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")


# Input arguments every command checks before importing torch or the model stack, so that a typo
# fails at once: attribute -> (what it is, what to do).
INPUT_PATHS = {
    "images": ("image", ""),
    "input": ("input video", ""),
    "data": ("data", "pass an ImageFolder directory (DIR/<class>/<image>) or a list file"),
    "train": ("data", "pass an ImageFolder directory (DIR/<class>/<image>) or a list file"),
    "val": ("data", "pass an ImageFolder directory (DIR/<class>/<image>) or a list file"),
    "text_weights": ("text weights file", ""),
    "teacher_weights": ("teacher weights file", ""),
}
_CHECKPOINT_SUFFIXES = (".pth", ".tar", ".pt", ".bin", ".safetensors", ".ckpt")


def check_version(value: str | None) -> None:
    """A --version value names a released version, an existing file or folder, or ``hf-hub:...``."""
    if not value or value.startswith("hf-hub:") or os.path.exists(value):
        return
    from openradio.versions import get_version  # plain data: no torch

    if any(sep in value for sep in ("/", os.sep)) or value.endswith(_CHECKPOINT_SUFFIXES):
        raise CLIError(f"checkpoint file not found: {value}")
    try:
        get_version(value)
    except (KeyError, ValueError) as e:
        raise CLIError(str(e).strip().splitlines()[0]) from None


def check_inputs(args: argparse.Namespace) -> None:
    """Cheap checks of every input path and version, before any heavy import."""
    for attr, (what, hint) in INPUT_PATHS.items():
        value = getattr(args, attr, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item and "://" not in item and not os.path.exists(item):
                raise CLIError(f"{what} not found: {item}" + (f"; {hint}" if hint else ""))
    versions = getattr(args, "version", None)
    for v in versions if isinstance(versions, list) else [versions]:
        check_version(v)


def parse_adaptors(values: "list[str] | None") -> list[str]:
    """``--adaptor a --adaptor b,c`` -> ['a', 'b', 'c'] (order kept, duplicates dropped)."""
    out: list[str] = []
    for v in values or []:
        for name in v.split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openradio",
        description="openradio: RADIOv2.5 inference, training, evaluation and visualisation.",
        epilog="Run `openradio COMMAND --help` for a command's flags and examples.",
    )
    parser.add_argument(
        "--debug",
        "--verbose",
        dest="verbose",
        action="store_true",
        help="show full tracebacks on errors (with the underlying library's message)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=mod.HELP,
            epilog="examples:\n" + mod.EXAMPLES if getattr(mod, "EXAMPLES", "") else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        if "--no-progress" not in p._option_string_actions:  # the same flag in every command
            p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        p.set_defaults(_run=mod.run)
    return parser


def _one_line_warning(command: str):
    """Warnings while a command runs: one line, ``openradio CMD: warning: ...`` (no source line)."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()
        print(f"openradio {command}: warning: {text[0] if text else category.__name__}", file=file or sys.stderr)

    return show


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
        check_inputs(args)
        with warnings.catch_warnings():  # restores the default display when the command ends
            warnings.showwarning = _one_line_warning(args.command)
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
    # `python -m openradio.cli`: run the imported module, so the commands' `openradio.cli.CLIError`
    # is the class main() catches (this file runs as __main__, a second copy)
    from openradio.cli import main as _main

    sys.exit(_main())
