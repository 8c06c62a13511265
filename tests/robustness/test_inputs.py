"""Property-based tests of what a RADIO model does with any input: the right output or a clear
error, never a silent wrong answer (hypothesis; a small official-format checkpoint, small images)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import openradio

from .conftest import FIXTURES

CKPT = FIXTURES / "tiny_radio_v25_norm.pth.tar"  # patch 16, width 48, 8 blocks
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_models: dict = {}


def model(window=None):
    if window not in _models:
        _models[window] = openradio.radio_model(str(CKPT), vitdet_window_size=window, progress=False)
    return _models[window]


def images(b, h, w, seed, c=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g)


sides = st.integers(1, 6).map(lambda k: 16 * k)


@SETTINGS
@given(
    b=st.integers(0, 2),
    h=sides,
    w=sides,
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    channels_last=st.booleans(),
)
def test_float_inputs_give_the_float32_answer(b, h, w, seed, dtype, channels_last):
    m = model()
    x = images(b, h, w, seed)
    with torch.no_grad():
        ref = m(x)
        xi = x.to(dtype)
        if channels_last:
            xi = xi.contiguous(memory_format=torch.channels_last)
        out = m(xi)
    assert out.features.shape == (b, (h // 16) * (w // 16), m.embed_dim) and out.summary.shape[0] == b
    assert out.features.dtype == torch.float32 and bool(torch.isfinite(out.features).all())
    # the same answer as for the float32 input, up to the input's own rounding
    tol = {torch.float32: 1e-5, torch.float64: 1e-5, torch.float16: 5e-2, torch.bfloat16: 2e-1}[dtype]
    torch.testing.assert_close(out.features, ref.features, atol=tol, rtol=tol)
    torch.testing.assert_close(out.summary, ref.summary, atol=tol, rtol=tol)


@SETTINGS
@given(h=sides, w=sides, seed=st.integers(0, 2**16))
def test_grey_images_are_grey_rgb(h, w, seed):
    m = model()
    x = images(1, h, w, seed, c=1)
    with torch.no_grad():
        torch.testing.assert_close(m(x).features, m(x.expand(-1, 3, -1, -1)).features)


@SETTINGS
@given(c=st.sampled_from([2, 4, 5]), h=sides, w=sides)
def test_other_channel_counts_are_refused(c, h, w):
    with pytest.raises(ValueError, match=f"3 channels .*got {c} channels"):
        model()(images(1, h, w, 0, c=c))


@SETTINGS
@given(dtype=st.sampled_from([torch.uint8, torch.int32, torch.int64, torch.bool]), h=sides, w=sides)
def test_integer_images_are_refused(dtype, h, w):
    x = (images(1, h, w, 0) * 255).to(dtype)
    with pytest.raises(ValueError, match="expected float images"):
        model()(x)


@SETTINGS
@given(h=sides, w=sides, bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]), data=st.data())
def test_nan_and_inf_are_refused(h, w, bad, data):
    x = images(2, h, w, 1)
    i = data.draw(st.integers(0, x.numel() - 1))
    x.view(-1)[i] = bad
    for call in (lambda: model()(x), lambda: model().forward_intermediates(x, indices=[1])):
        with pytest.raises(ValueError, match="NaN or Inf"):
            call()


@SETTINGS
@given(h=sides, w=sides, scale=st.sampled_from([255.0, 65535.0]))
def test_0_255_floats_are_refused(h, w, scale):
    with pytest.raises(ValueError, match="divide 0..255 images by 255"):
        model()(images(1, h, w, 2) * scale)


@SETTINGS
@given(h=st.integers(1, 100), w=st.integers(1, 100))
def test_unsupported_sizes_name_the_nearest(h, w):
    m = model()
    if h % 16 == 0 and w % 16 == 0:
        assert m(images(1, h, w, 3)).features.shape[1] == (h // 16) * (w // 16)
    else:
        with pytest.raises(ValueError, match="Nearest"):
            m(images(1, h, w, 3))


@settings(max_examples=10, deadline=None)
@given(k=st.integers(17, 24))
def test_beyond_max_resolution_the_position_grid_is_resampled(k):
    """Past cpe_max_size (256 px here) the model still answers (position grid interpolated)."""
    m = model()
    with torch.no_grad():
        out = m(images(1, 16, 16 * k, 4))
    assert out.features.shape == (1, k, m.embed_dim) and bool(torch.isfinite(out.features).all())


@settings(max_examples=15, deadline=None)
@given(window=st.integers(1, 4), gh=st.integers(1, 3), gw=st.integers(1, 3), off=st.booleans())
def test_window_sizes(window, gh, gw, off):
    """ViTDet: sides that are multiples of window x patch work; others are refused with the step."""
    m = model(window)
    step = 16 * window
    h, w = gh * step, gw * step + (16 if off and window > 1 else 0)
    if w % step:
        with pytest.raises(ValueError, match=f"min_resolution_step={step}"):
            m(images(1, h, w, 5))
    else:
        with torch.no_grad():
            out = m(images(1, h, w, 5))
        assert out.features.shape == (1, (h // 16) * (w // 16), m.embed_dim)


def test_empty_batch_gives_empty_outputs():
    out = model()(images(0, 32, 48, 0))
    assert out.features.shape == (0, 6, model().embed_dim) and out.summary.shape[0] == 0
