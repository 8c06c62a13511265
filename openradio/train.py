"""``torchrun --nproc-per-node N -m openradio.train CONFIG [key=value ...]`` (also ``openradio train``).

Under torchrun every process joins the process group from the environment (DDP; nccl on GPUs,
gloo on CPUs). A restarted run (``torchrun --max-restarts``, or the same command again) resumes
from the newest readable checkpoint in ``out_dir/checkpoints``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional


def build_arg_parser(p: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(
        prog="python -m openradio.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", help="YAML recipe, e.g. configs/radio_v2.5-b.yaml or configs/tiny.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="config overrides, e.g. data.path=/data/imgs optim.lr=5e-4 stages.0.steps=1000",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this global step (resumable)")
    p.add_argument(
        "--export",
        default=None,
        metavar="FILE.pth.tar",
        help="at the end, write an official-format checkpoint that openradio.radio_model loads",
    )
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in out_dir")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (the config's progress=false)")
    return p


def apply_flags(args: argparse.Namespace) -> None:
    """Flags that are config values: ``--no-progress`` is ``progress=false``."""
    if getattr(args, "no_progress", False):
        args.overrides = list(args.overrides or []) + ["progress=false"]
        args.no_progress = False


def run(args: argparse.Namespace) -> int:
    from openradio.distill.config import load_config  # lazy: `openradio --help` imports this module

    # the whole config is checked before torch, the teachers or the student are built
    cfg = load_config(args.config, args.overrides)
    if not cfg.data.path:
        raise ValueError("no training data: set data.path=DIR (image folder, file list or shard pattern)")

    import torch.distributed as dist  # lazy: `openradio --help` imports this module (torch costs ~1.6 s)

    from openradio.distill.trainer import Trainer  # lazy: `openradio --help` imports this module

    trainer = Trainer(cfg)
    try:
        last = trainer.train(max_steps=args.max_steps, resume=not args.no_resume)
        if args.export and trainer.step >= cfg.total_steps:
            path = trainer.export(args.export)
            if trainer.env.is_main:
                print(f"exported {path}")
        if trainer.env.is_main and last:
            print(
                f"step {trainer.step}/{cfg.total_steps}  loss {last.get('loss', float('nan')):.4f}  "
                f"metrics: {trainer.logger.path}"
            )
    finally:
        if trainer.env.initialized_here and dist.is_initialized():
            dist.barrier()  # leave together: a rank tearing gloo down early can abort the others
            dist.destroy_process_group()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_arg_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if "=" not in e or e.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = list(args.overrides) + extra  # overrides may also follow options
    apply_flags(args)
    from openradio.distill.config import load_config  # lazy: `openradio --help` imports this module

    try:  # a config mistake is one line, as with `openradio train`; later errors keep their traceback
        load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"python -m openradio.train: error: {e}", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
