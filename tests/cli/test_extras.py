"""An inference-only install: the base dependencies run a model; an extra's absence is one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
OPTIONAL = ["av", "matplotlib", "tensorboard", "skimage", "sklearn", "transformers", "onnx", "onnxruntime"]
OPTIONAL += ["pyarrow", "fsspec", "braceexpand", "faiss", "ray"]

# Makes the optional packages unimportable, as in a `pip install .` without extras (a None entry in
# sys.modules makes `import x` fail and importlib.util.find_spec(x) report it absent).
BLOCK = textwrap.dedent(f"""
    import sys
    for _m in {OPTIONAL!r} + ["torch.utils.tensorboard"]:
        sys.modules[_m] = None
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_base_dependencies_leave_out_video_plots_tensorboard_and_sample_images():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(meta["dependencies"]).lower()
    for pkg in ("av", "matplotlib", "tensorboard", "scikit-image", "scikit-learn", "transformers"):
        assert f"{pkg}>" not in base and f'"{pkg}"' not in base, pkg
    extras = meta["optional-dependencies"]
    assert {"viz", "train", "demo", "all"} <= set(extras)
    assert isinstance(meta["license"], str)  # SPDX expression, not the deprecated table


def test_inference_runs_without_any_extra(tmp_path):
    r = _run(f"""
        import torch, openradio
        from openradio.verify.testing import make_tiny_checkpoint
        p = make_tiny_checkpoint({str(tmp_path / "t.pth.tar")!r})
        out = openradio.radio_model(str(p), adaptor_names=["clip"])(torch.rand(1, 3, 64, 64))
        assert out["clip"].features.shape[1] == 16
        print("ok", sorted(m for m in {OPTIONAL!r} if sys.modules.get(m) is not None))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "[]"]


def test_viz_video_without_the_extra_names_it(tmp_path):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"\\0" * 16)
    r = _run(f"""
        from openradio.cli import main
        sys.exit(main(["viz-video", {str(video)!r}, "--version", "radio_v2.5-b", "--out", {str(tmp_path / "o.mp4")!r}]))
    """)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'openradio[viz]'" in lines[0], r.stderr


def test_features_runs_without_the_extract_extra(tmp_path):
    """`openradio features` batches with openradio.extract's Mapper; that must not pull in pyarrow."""
    r = _run(f"""
        import torch
        from PIL import Image
        from openradio.cli import main
        from openradio.verify.testing import make_tiny_checkpoint
        p = make_tiny_checkpoint({str(tmp_path / "t.pth.tar")!r})
        Image.new("RGB", (80, 64), (200, 30, 30)).save({str(tmp_path / "a.png")!r})
        rc = main(["features", {str(tmp_path / "a.png")!r}, "--version", str(p), "--resolution", "64",
                   "--no-progress", "--out", {str(tmp_path / "f.safetensors")!r}])
        print("rc", rc, sorted(m for m in {OPTIONAL!r} if sys.modules.get(m) is not None))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-3:] == ["rc", "0", "[]"], r.stdout
    assert (tmp_path / "f.safetensors").stat().st_size > 0


def test_extract_without_the_extra_names_it(tmp_path):
    r = _run(f"""
        from openradio.cli import main
        sys.exit(main(["extract", {str(tmp_path)!r}, "--version", "radio_v2.5-b", "--out", {str(tmp_path / "o")!r}]))
    """)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "openradio[extract]" in lines[0], r.stderr
