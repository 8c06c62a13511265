"""The ``openradio`` command line. Thin: parses arguments, calls the library, prints.

Each subcommand lives in ``openradio/commands/<name>.py`` and defines ``HELP`` (one line),
``EXAMPLES`` (text shown under ``--help``), ``add_arguments(parser)`` and ``run(args) -> int``.
Command modules are named here as strings and imported by ``build_parser``; each keeps its heavy
imports inside ``run()`` (see ``openradio/commands/__init__.py``) so ``openradio --help`` stays fast.
What the commands share (``CLIError``, the model flags, the early checks) is in
``openradio/commands/common.py``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# re-exported (callers catch `openradio.cli.CLIError`); the command modules import them from common
from openradio.commands.common import CLIError, add_model_arguments, check_inputs, check_version, parse_adaptors

__all__ = [
    "COMMANDS",
    "CLIError",
    "add_model_arguments",
    "build_parser",
    "check_inputs",
    "check_version",
    "main",
    "parse_adaptors",
]

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
    # `python -m openradio.cli`: run the imported module, not this second copy (__main__), so there
    # is one COMMANDS and one set of module state
    from openradio.cli import main as _main

    sys.exit(_main())
