"""The ViTDet window as an argument of the call (the model's loaded window is only the default)."""

from __future__ import annotations

import pytest
import torch

import openradio


def test_call_window_equals_loaded_window(tiny_checkpoint):
    plain = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], text_towers=False)
    windowed = openradio.radio_model(
        str(tiny_checkpoint), adaptor_names=["clip"], vitdet_window_size=2, text_towers=False
    )
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        a = plain(x, vitdet_window=2)
        b = windowed(x)
        g = plain(x)
        g2 = windowed(x, vitdet_window=None)
    for k in ("backbone", "clip"):
        assert torch.equal(a[k].features, b[k].features) and torch.equal(a[k].summary, b[k].summary)
        assert torch.equal(g[k].features, g2[k].features)
    assert not torch.equal(a["backbone"].features, g["backbone"].features)
    # the per-call window changed nothing on the model
    assert plain.window_size is None and windowed.window_size == 2
    fa, ia = plain.forward_intermediates(x, indices=[1, -1], output_fmt="NLC", vitdet_window=2)
    fb, ib = windowed.forward_intermediates(x, indices=[1, -1], output_fmt="NLC")
    assert all(torch.equal(p, q) for p, q in zip(ia, ib))
    assert torch.equal(fa["backbone"].features, fb["backbone"].features)


def test_call_window_decides_the_resolution_check(tiny_checkpoint):
    model = openradio.radio_model(str(tiny_checkpoint), text_towers=False)
    x = torch.rand(1, 3, 48, 48)  # a multiple of 16, not of 16 * 2
    model(x)
    with pytest.raises(ValueError, match="min_resolution_step=32"):
        model(x, vitdet_window=2)
    assert model.get_nearest_supported_resolution(48, 48, vitdet_window=2) == (64, 64)
    assert model.get_nearest_supported_resolution(48, 48) == (48, 48)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive number of patches"):
            model(torch.rand(1, 3, 64, 64), vitdet_window=bad)
