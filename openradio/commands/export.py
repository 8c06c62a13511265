"""``openradio export``: training checkpoint -> official ``.pth.tar`` that radio_model loads."""
from __future__ import annotations

HELP = "export a training run's newest checkpoint to the official .pth.tar format"
EXAMPLES = """\
  openradio export runs/tiny --out tiny_radio.pth.tar
  openradio export runs/radio_v2.5-b --out radio_b.pth.tar --no-ema
  openradio export runs/tiny --out tiny_radio_hf --format hf
Reads only the run's newest checkpoint: no teacher is built, nothing downloaded or written there.
"""


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a training run's out_dir (holds checkpoints/)")
    p.add_argument("--out", required=True, help="output .pth.tar")
    p.add_argument("--no-ema", action="store_true", help="export the raw student weights only")
    p.add_argument("--format", choices=["pth", "hf"], default="pth",
                   help="pth: official .pth.tar (default); hf: a Hugging Face folder (config.json + model.safetensors)")


def run(args) -> int:
    """Reads the newest checkpoint only: no teacher is built, nothing is downloaded, nothing is
    written into the run directory."""
    import tempfile
    from pathlib import Path

    from openradio.cli import CLIError
    from openradio.distill.export import export_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise CLIError(f"{run_dir} has no checkpoints/ folder: is it a training run's out_dir?")
    try:
        if args.format == "hf":
            from openradio.hf import save_hf
            from openradio.loader import radio_model
            with tempfile.TemporaryDirectory() as tmp:
                pth, step, names = export_run(run_dir, Path(tmp) / "model.pth.tar", use_ema=not args.no_ema)
                model = radio_model(str(pth), adaptor_names=names, text_towers=False)
                path = save_hf(model, args.out, version=str(run_dir))
        else:
            path, step, _ = export_run(run_dir, args.out, use_ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    print(f"exported step {step} to {path}")
    return 0

