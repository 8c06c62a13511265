"""Shared fixtures. Parity fixtures: $OPENRADIO_FIXTURES, else the small set vendored in
tests/fixtures/official-mini (made with the official code; see its README)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENDORED = REPO / "tests" / "fixtures" / "official-mini"
HOW_TO = (
    "official parity fixtures not found: tests/fixtures/official-mini is missing from this checkout, "
    "or set OPENRADIO_FIXTURES to a folder holding tiny_radio_v25_half.pth.tar, "
    "tiny_radio_v25_norm.pth.tar and expected.pt"
)


def fixtures_dir() -> Path | None:
    candidates = [os.environ.get("OPENRADIO_FIXTURES"), VENDORED]
    for c in candidates:
        if c and (Path(c) / "expected.pt").is_file():
            return Path(c)
    return None


def families_dir() -> Path | None:
    """Official outputs for every released family: vendored in tests/fixtures (a fresh clone has
    them), else the shared copy."""
    for c in (
        REPO / "tests" / "fixtures" / "official-families",
        REPO.parent / "shared" / "fixtures" / "official-families",
    ):
        if (c / "expected.pt").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    d = fixtures_dir()
    if d is None:
        pytest.skip(HOW_TO)
    return d


@pytest.fixture(scope="session")
def expected(official_fixtures):
    import torch

    return torch.load(official_fixtures / "expected.pt", weights_only=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small random checkpoint in the official format (teachers clip, siglip, dino_v2, sam)."""
    from openradio.verify.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_radio.pth.tar")


@pytest.fixture(scope="session")
def sample_images():
    """Real photographs bundled with scikit-image, as float [0,1] CHW tensors."""
    import torch
    from skimage import data

    out = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        arr = getattr(data, name)()
        out[name] = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    return out


def write_test_video(path, frames: int = 12, fps: int = 6, size: int = 64) -> Path:
    """An H.264 video whose frames all differ: frame i has a red stripe (i + 1) / frames wide."""
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.zeros((size, size, 3), np.uint8)
            img[:, : (i + 1) * size // frames] = (255, 40 * (i % 6), 0)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Path(path)


def pytest_terminal_summary(terminalreporter):
    """One line on how close the official-output cases came, and on which CPU kernels."""
    mod = sys.modules.get("test_parity")
    results = getattr(mod, "RESULTS", None)
    if not results:
        return
    import torch

    from openradio.verify.parity import cpu_model, summarize

    s = summarize(results)
    mode = getattr(mod, "MODE", {})
    how = ("compared bit for bit" if mode.get("strict") else "compared within float32 noise") + (
        f": {mode['why']}" if mode.get("why") else ""
    )
    terminalreporter.write_line(
        f"parity with the official outputs: {s['exact']}/{s['tensors']} tensors bit-exact, "
        f"{s['within_noise']}/{s['tensors']} within float32 noise, largest difference {s['max_abs_diff']:.3g} "
        f"({cpu_model()}, ATen {torch.backends.cpu.get_cpu_capability()}; {how})"
    )


@pytest.fixture(scope="session")
def train_image_dir(tmp_path_factory) -> Path:
    """A folder of the bundled photographs (at most 256 px a side) for short training runs."""
    from openradio.inputs.sample_data import write_sample_images

    d = tmp_path_factory.mktemp("train_images")
    write_sample_images(d, max_side=256)
    return d
