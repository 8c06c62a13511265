"""Image loading and the examples' resize transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from openradio.inputs.imageio import (
    ImageLoadError,
    image_to_tensor,
    load_image,
    nearest_multiple,
    resize_center_crop,
    resize_to_multiple,
    tensor_to_uint8,
)


def _save(arr: np.ndarray, path, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_load_png_roundtrips_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    t = load_image(_save(arr, tmp_path / "a.png"))
    assert t.shape == (3, 13, 17) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    np.testing.assert_array_equal(tensor_to_uint8(t), arr)


def test_load_grey_rgba_and_16bit(tmp_path):
    grey = np.arange(20 * 10, dtype=np.uint8).reshape(20, 10)
    t = load_image(_save(grey, tmp_path / "g.png"))
    assert t.shape == (3, 20, 10)
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    assert t[0, 3, 4].item() == pytest.approx(grey[3, 4] / 255.0)

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    t = load_image(_save(rgba, tmp_path / "rgba.png"))
    assert t.shape == (3, 8, 8) and t[0].max().item() == pytest.approx(200 / 255)

    # a 16-bit PNG must be scaled by 65535, not clipped at 255 (which would make it white)
    deep = np.full((6, 5), 32768, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    t = load_image(tmp_path / "deep.png")
    assert t.mean().item() == pytest.approx(32768 / 65535, abs=1e-3)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 30, 3), dtype=np.uint8)  # landscape on disk
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape == (3, 30, 10)


def test_corrupt_and_missing_files_raise_clear_errors(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        load_image(bad)
    # truncated PNG: the header parses, the pixel data is cut off
    good = _save(np.full((64, 64, 3), 7, dtype=np.uint8), tmp_path / "ok.png")
    data = good.read_bytes()
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        load_image(trunc)
    assert issubclass(ImageLoadError, ValueError)  # the CLI turns ValueErrors into one-line errors
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_image_to_tensor_accepts_arrays():
    arr = np.linspace(0, 1, 2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    t = image_to_tensor(arr)
    assert t.shape == (3, 2, 3)
    assert torch.allclose(t.permute(1, 2, 0), torch.from_numpy(arr))
    with pytest.raises(ValueError, match="shape"):
        image_to_tensor(np.zeros((2, 3, 5), dtype=np.uint8))


def test_nearest_multiple_rounds_to_nearest_and_never_to_zero():
    assert nearest_multiple(500, 16) == 496
    assert nearest_multiple(505, 16) == 512
    assert nearest_multiple(3, 16) == 16
    with pytest.raises(ValueError):
        nearest_multiple(10, 0)


def test_resize_to_multiple_keeps_aspect_and_rounds_sides():
    img = torch.rand(3, 400, 600)
    out = resize_to_multiple(img, 512, 16)
    # shorter side -> 512, longer 600 * 512/400 = 768 (already a multiple)
    assert out.shape == (3, 512, 768)
    out = resize_to_multiple(torch.rand(3, 300, 500), 224, 16)
    # 500 * 224/300 = 373.3 -> nearest multiple of 16 is 368
    assert out.shape == (3, 224, 368)
    batch = resize_to_multiple(torch.rand(2, 3, 100, 50), 64, 32)
    assert batch.shape == (2, 3, 128, 64)
    assert batch.min() >= 0 and batch.max() <= 1  # bicubic overshoot is clamped
    with pytest.raises(ValueError, match="size"):
        resize_to_multiple(img, 0, 16)
    with pytest.raises(TypeError, match="Tensor"):
        resize_to_multiple(np.zeros((3, 4, 4)), 8, 4)


def test_resize_center_crop_covers_then_crops_the_centre():
    # a wide image: red left third, green middle, blue right third. Covering a square keeps the
    # full height, so the crop is the middle: mostly green, with equal slivers of red and blue.
    img = torch.zeros(3, 60, 180)
    img[0, :, :60] = 1
    img[1, :, 60:120] = 1
    img[2, :, 120:] = 1
    out = resize_center_crop(img, 32)
    assert out.shape == (3, 32, 32)
    assert out[1, :, 12:20].min() > 0.95  # centre columns are green
    assert out[0].sum().item() == pytest.approx(out[2].sum().item(), rel=1e-3)  # symmetric crop
    assert out[0].mean() < 0.1
    # non-square target from a tall image: width is covered exactly, height cropped
    tall = torch.rand(3, 300, 100)
    assert resize_center_crop(tall, (64, 48)).shape == (3, 64, 48)
    # with multiple: the resized sides are multiples before the crop, result still exact
    assert resize_center_crop(torch.rand(3, 97, 131), 48, multiple=16).shape == (3, 48, 48)


def test_resize_matches_pil_bicubic_closely():
    """The examples resize PIL images; our tensor path should agree to within rounding."""
    rng = np.random.default_rng(1)
    # a smooth image so the comparison measures the kernel, not aliasing of noise
    y, x = np.mgrid[0:120, 0:160] / 40.0
    arr = np.stack([np.sin(x), np.cos(y), np.sin(x + y)], -1) * 0.45 + 0.5
    arr = (arr * 255).astype(np.uint8) + rng.integers(0, 2, size=(120, 160, 3), dtype=np.uint8)
    ours = tensor_to_uint8(resize_to_multiple(image_to_tensor(arr), 48, 16)).astype(int)
    pil = np.asarray(Image.fromarray(arr).resize((64, 48), Image.Resampling.BICUBIC)).astype(int)
    assert ours.shape == pil.shape == (48, 64, 3)
    assert np.abs(ours - pil).mean() < 1.5
