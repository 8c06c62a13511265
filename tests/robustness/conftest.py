"""Shared helpers for the robustness suite: small official-format checkpoints and hostile files."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official-mini"


@pytest.fixture(scope="session")
def good_checkpoint() -> Path:
    """An official-format checkpoint (float32, 1.3 MB) vendored with the parity fixtures."""
    return FIXTURES / "tiny_radio_v25_norm.pth.tar"
