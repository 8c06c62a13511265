"""What every subcommand shares: the error shown as one line, the model flags, the early checks.

It sits below both ``openradio.cli`` and the command modules, so a command imports it at the top
of its module and nothing imports back up into ``cli`` (``openradio.cli.CLIError`` is re-exported).
"""

from __future__ import annotations

import argparse
import os


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
CHECKPOINT_SUFFIXES = (".pth", ".tar", ".pt", ".bin", ".safetensors", ".ckpt")


def check_version(value: str | None) -> None:
    """A --version value names a released version, an existing file or folder, or ``hf-hub:...``."""
    if not value or value.startswith("hf-hub:") or os.path.exists(value):
        return
    # lazy: only a --version that is no file reads the table; `openradio --help` skips dataclasses
    from openradio.versions import get_version

    if any(sep in value for sep in ("/", os.sep)) or value.endswith(CHECKPOINT_SUFFIXES):
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
