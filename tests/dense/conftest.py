"""Fixtures of the dense-task tests: one tiny model per session, one torch thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def tiny_model(tiny_checkpoint):
    import openradio

    return openradio.radio_model(str(tiny_checkpoint), text_towers=False)
