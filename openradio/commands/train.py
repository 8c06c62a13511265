"""``openradio train``: a thin wrapper over ``python -m openradio.train`` (single process, or
inside torchrun)."""

from __future__ import annotations

import openradio.train
from openradio.train import build_arg_parser

HELP = "distil a RADIO student from teachers with the v2.5 recipe (PHI-S, partitions, mosaic)"
EXAMPLES = """\
  openradio train configs/tiny.yaml data.path=./images --export tiny.pth.tar
  openradio train configs/radio_v2.5-b.yaml data.path=/data/shards/shard-{000000..000999}.tar
  torchrun --nproc-per-node 8 -m openradio.train configs/radio_v2.5-b.yaml data.path=/data/imgs
"""


def add_arguments(p) -> None:
    build_arg_parser(p)


def run(args) -> int:
    openradio.train.apply_flags(args)
    return openradio.train.run(args)
