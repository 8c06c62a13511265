"""``openradio export``: a training run (or any loadable model) -> .pth.tar, HF folder, transformers, ONNX."""

from __future__ import annotations

from pathlib import Path

from openradio.commands.common import CLIError, check_version

HELP = "export a training run's newest checkpoint (or a model) to .pth.tar, a Hugging Face folder, transformers or ONNX"
EXAMPLES = """\
  openradio export runs/tiny --out tiny_radio.pth.tar
  openradio export runs/radio_v2.5-b --out radio_b.pth.tar --no-ema
  openradio export runs/tiny --out tiny_radio_hf --format hf
  openradio export runs/tiny --out tiny_radio_native --format transformers
  openradio export radio_v2.5-b --out radio_b.onnx --format onnx --adaptor clip
  openradio export radio_v2.5-b --out radio_b_vitdet.onnx --format onnx --vitdet-window 16
From a run, export reads only its newest checkpoint: no teacher is built, nothing is downloaded,
nothing is written into the run directory.
"""

FORMATS = ["pth", "hf", "transformers", "onnx"]


def add_arguments(p) -> None:
    p.add_argument(
        "run_dir",
        help="a training run's out_dir (holds checkpoints/); for the hf, "
        "transformers and onnx formats also a released version, checkpoint or HF folder",
    )
    p.add_argument("--out", required=True, help="output file (.pth.tar, .onnx) or folder (hf, transformers)")
    p.add_argument("--no-ema", action="store_true", help="export the raw student weights only")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="pth",
        help="pth: official .pth.tar (default); hf: a Hugging Face folder (config.json + model.safetensors); "
        "transformers: a folder transformers.RadioModel loads natively (adaptors in a side file); "
        "onnx: one .onnx file with dynamic batch/height/width",
    )
    p.add_argument(
        "--adaptor",
        action="append",
        default=None,
        metavar="NAME",
        help="onnx: adaptor heads to include (repeatable; default none); hf/transformers from a "
        "model: adaptors to keep (default: a run's teachers)",
    )
    p.add_argument("--vitdet-window", type=int, default=None, metavar="W", help="onnx: bake in ViTDet mode")
    p.add_argument("--opset", type=int, default=18, help="onnx: opset version (>= 17; default 18)")
    p.add_argument("--feature-fmt", choices=["NCHW", "NLC"], default="NCHW", help="onnx: spatial feature layout")


def run(args) -> int:
    import tempfile

    run_dir = Path(args.run_dir)
    is_run = (run_dir / "checkpoints").is_dir()
    if not is_run:  # before any heavy import: a wrong path fails at once
        if args.format == "pth":
            raise CLIError(f"{run_dir} has no checkpoints/ folder: is it a training run's out_dir?")
        check_version(args.run_dir)
    from openradio.distill.export import export_run
    from openradio.formats.resolve import radio_model

    if args.format == "pth":
        try:
            path, step, _ = export_run(run_dir, args.out, use_ema=not args.no_ema)
        except (FileNotFoundError, ValueError) as e:
            raise CLIError(str(e)) from None
        print(f"exported step {step} to {path}")
        return 0
    onnx_names = list(args.adaptor or [])
    load_names = onnx_names if args.format == "onnx" else args.adaptor
    with tempfile.TemporaryDirectory() as tmp:
        if is_run:
            try:
                pth, step, names = export_run(run_dir, Path(tmp) / "model.pth.tar", use_ema=not args.no_ema)
            except (FileNotFoundError, ValueError) as e:
                raise CLIError(str(e)) from None
            model = radio_model(
                str(pth),
                adaptor_names=load_names if load_names is not None else names,
                text_towers=False,
                vitdet_window_size=args.vitdet_window,
            )
            source = f"step {step}"
        else:
            model = radio_model(
                args.run_dir, adaptor_names=load_names, text_towers=False, vitdet_window_size=args.vitdet_window
            )
            source = args.run_dir
    if args.format == "hf":
        from openradio.formats.hf import save_hf

        path = save_hf(model, args.out, version=str(run_dir))
    elif args.format == "transformers":
        from openradio.formats.hf import save_transformers

        path = save_transformers(model, args.out, version=str(run_dir))
    else:
        from openradio.formats.onnx import export_onnx

        path = export_onnx(model, args.out, adaptor_names=onnx_names, opset=args.opset, feature_fmt=args.feature_fmt)
    print(f"exported {source} to {path}")
    return 0
