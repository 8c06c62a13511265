"""``openradio export``: training checkpoint -> official ``.pth.tar`` that radio_model loads."""
from __future__ import annotations

HELP = "export a training run's newest checkpoint to the official .pth.tar format"
EXAMPLES = """\
  openradio export runs/tiny --out tiny_radio.pth.tar
  openradio export runs/radio_v2.5-b --out radio_b.pth.tar --no-ema
  openradio export runs/tiny --out tiny_radio_hf --format hf
"""


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a training run's out_dir (holds config.yaml and checkpoints/)")
    p.add_argument("--out", required=True, help="output .pth.tar")
    p.add_argument("--no-ema", action="store_true", help="export the raw student weights only")
    p.add_argument("--format", choices=["pth", "hf"], default="pth",
                   help="pth: official .pth.tar (default); hf: a Hugging Face folder (config.json + model.safetensors)")


def run(args) -> int:
    from pathlib import Path

    from openradio.cli import CLIError

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CLIError(f"{run_dir} has no config.yaml: is it a training run's out_dir?")
    from openradio.distill.config import load_config
    from openradio.distill.trainer import DistEnv, Trainer

    cfg = load_config(run_dir / "config.yaml", [f"out_dir={run_dir}", "tensorboard=false", "progress=false"])
    trainer = Trainer(cfg, env=DistEnv())
    if not trainer.resume(quiet=True):
        raise CLIError(f"no readable checkpoint in {run_dir / 'checkpoints'}")
    if args.format == "hf":
        import tempfile

        from openradio.hf import save_hf
        from openradio.loader import radio_model
        with tempfile.TemporaryDirectory() as tmp:
            pth = trainer.export(Path(tmp) / "model.pth.tar", use_ema=not args.no_ema)
            model = radio_model(str(pth), adaptor_names=[t.name for t in cfg.teachers], text_towers=False)
            path = save_hf(model, args.out, version=str(run_dir))
    else:
        path = trainer.export(args.out, use_ema=not args.no_ema)
    print(f"exported step {trainer.step} to {path}")
    return 0
