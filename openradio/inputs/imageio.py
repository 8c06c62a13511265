"""Image loading and the resize transforms the examples use, on float [0, 1] CHW tensors.

Everything here works on RGB images stored as ``float32`` tensors in ``[0, 1]`` — the input
range ``RADIOModel`` expects (it normalises internally with its conditioner). Two resizes cover
the official examples:

* :func:`resize_center_crop` — the evaluation transform ``ResizeTransform([res, res]) +
  CenterCrop(res)``: scale so the image *covers* ``res x res`` keeping its aspect, then crop
  the centre;
* :func:`resize_to_multiple` — ``ResizeTransform(size, resize_multiple)``: shorter side to
  ``size``, aspect kept, each side rounded to the nearest multiple of the model's resolution
  step (so the result is always a resolution the model accepts).

Both use bicubic interpolation with antialiasing, which is how torchvision resizes the PIL
images in the examples; results are clamped to ``[0, 1]`` because bicubic overshoots and a
PIL ``uint8`` image cannot hold values outside that range either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "ImageLoadError",
    "load_image",
    "image_to_tensor",
    "tensor_to_uint8",
    "resize_center_crop",
    "resize_to_multiple",
    "nearest_multiple",
    "IMAGE_EXTENSIONS",
]

PathLike = Union[str, Path]
Size = Union[int, Sequence[int]]

# Suffixes a directory scan treats as images (what PIL reads in a default install).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageLoadError(ValueError):
    """An image file exists but cannot be decoded (corrupt, truncated or not an image)."""


def is_image_name(name: str) -> bool:
    """An image file by its extension (hidden files excluded)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_images(source: Union[PathLike, Sequence[PathLike]], check_exists: bool = False) -> list[Path]:
    """The image files named by ``source`` (the one listing used by training and evaluation).

    * a directory: every image file below it (recursive, sorted by relative path, so the order,
      and hence a sampler's permutation, is the same on every machine);
    * a text file: one path per line (a ``path<TAB>label`` line counts by its first column),
      relative paths taken from the list file's folder; blank lines and ``#`` lines ignored.
      ``check_exists``: every listed file must exist (evaluation); training skips and counts a
      missing one when it is loaded instead (a list may name millions);
    * a sequence of paths: used as given.
    """
    if not isinstance(source, (str, os.PathLike)):
        paths = [Path(p) for p in source]
        if not paths:
            raise ValueError("the image list is empty; pass at least one image path")
        return paths
    src = Path(source)
    if src.is_dir():
        found: list[Path] = []
        for root, dirs, files in os.walk(src, followlinks=True):
            dirs.sort()
            found += [Path(root) / f for f in sorted(files) if is_image_name(f)]
        if not found:
            raise ValueError(f"no images found under {src} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
        return found
    if src.is_file():
        if is_image_name(src.name):
            raise ValueError(
                f"{src} is an image, not a folder or a file list; pass the folder that holds it "
                "or a text file listing image paths one per line"
            )
        paths = []
        with open(src, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                p = Path(line.split("\t")[0].strip()).expanduser()
                paths.append(p if p.is_absolute() else src.parent / p)
        if not paths:
            raise ValueError(f"file list {src} names no images (one path per line, relative to {src.parent})")
        if check_exists:
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{len(missing)} image(s) listed in {src} do not exist, e.g. {missing[0]!r}")
        return paths
    raise FileNotFoundError(f"data not found: {src} (expected an image folder or a file list)")


def expand_image_args(items: Sequence[str]) -> list[Path]:
    """Image arguments of a command: files as given, directories expanded to the image files
    directly inside them (sorted)."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if is_image_name(q.name) and q.is_file())
            if not found:
                raise ValueError(f"directory {p} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif p.exists():
            paths.append(p)
        else:
            raise FileNotFoundError(f"image not found: {p}")
    return paths


def image_to_tensor(image) -> Tensor:
    """Convert a PIL image or an ``(H, W[, C])`` uint8/float array to a float ``(3, H, W)`` tensor in [0, 1].

    Greyscale is repeated to three channels and an alpha channel is dropped (as PIL's
    ``convert('RGB')`` does in the official examples). 16-bit images are scaled by 65535 rather
    than saturated at 255.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # convert('RGB') clips 16-bit values at 255, which turns most 16-bit PNGs white.
            arr = np.asarray(image, dtype=np.float32) / 65535.0
        elif image.mode == "F":
            arr = np.asarray(image, dtype=np.float32)
        else:
            if image.mode != "RGB":
                image = image.convert("RGB")
            arr = np.asarray(image)
        image = arr
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1|3|4) image array, got shape {tuple(arr.shape)}")
    if arr.shape[2] in (2, 4):  # grey+alpha / RGBA: drop alpha
        arr = arr[:, :, :-1]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:
        t = torch.tensor(arr).permute(2, 0, 1).float().div_(255.0)  # copy: PIL arrays are read-only
    elif arr.dtype == np.uint16:
        t = torch.from_numpy(arr.astype(np.float32) / 65535.0).permute(2, 0, 1)
    elif np.issubdtype(arr.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).clamp(0.0, 1.0)
    else:
        raise ValueError(f"unsupported image dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    return t.contiguous()


def load_image(path: PathLike) -> Tensor:
    """Read an image file as a float ``(3, H, W)`` RGB tensor in [0, 1].

    EXIF orientation is applied (phone photos are otherwise sideways). Raises
    ``FileNotFoundError`` for a missing path and :class:`ImageLoadError` (a ``ValueError``) naming
    the file when it cannot be decoded.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageLoadError(f"{path} is a directory, not an image file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now so a truncated file fails here, naming the file
            im = ImageOps.exif_transpose(im)
            return image_to_tensor(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(f"cannot read image {path}: {reason} (is it a complete JPEG/PNG/WebP/... file?)") from e


def tensor_to_uint8(image: Tensor | np.ndarray) -> np.ndarray:
    """A float [0, 1] image, ``(3, H, W)`` tensor or ``(H, W, 3)`` tensor/array, as an ``(H, W, 3)`` uint8 array."""
    if isinstance(image, Tensor):
        t = image.detach().float().cpu()
        # Image tensors are CHW; PCA colour maps are HWC. A 3x3 image is ambiguous: read as CHW.
        if t.ndim == 3 and t.shape[0] == 3:
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a (3, H, W) tensor or an (H, W, 3) array, got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def nearest_multiple(value: float, multiple: int) -> int:
    """``value`` rounded to the nearest multiple of ``multiple`` (at least one multiple)."""
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple}")
    return max(int(round(value / multiple)) * multiple, multiple)


def _check_image(img: Tensor) -> None:
    if not isinstance(img, Tensor):
        raise TypeError(
            f"expected a torch.Tensor image (C, H, W) or (B, C, H, W), got {type(img).__name__}; "
            "use openradio.inputs.imageio.load_image or image_to_tensor first"
        )
    if img.ndim not in (3, 4):
        raise ValueError(f"expected a (C, H, W) or (B, C, H, W) image tensor, got shape {tuple(img.shape)}")


def resize_image(img: Tensor, height: int, width: int) -> Tensor:
    """``img`` at exactly ``height`` x ``width`` (bicubic, antialiased; float images clamped to [0, 1])."""
    # torchvision is not imported at the top: the data readers (eval.data, distill.data, extract.sources)
    # import this module without resizing anything
    from torchvision.transforms.v2 import InterpolationMode  # lazy: torchvision costs ~0.9 s to import
    from torchvision.transforms.v2 import functional as TF  # lazy: torchvision costs ~0.9 s to import

    if tuple(img.shape[-2:]) == (height, width):
        return img
    out = TF.resize(img, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    if out.is_floating_point():
        out = out.clamp_(0.0, 1.0)
    return out


def _pair(size: Size, name: str) -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        size = tuple(size)
        if len(size) != 2:
            raise ValueError(f"{name} must be an int or (height, width), got {size}")
        h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {size}")
    return h, w


def resize_center_crop(img: Tensor, res: Size, multiple: int = 1) -> Tensor:
    """Scale ``img`` (keeping its aspect) until it covers ``res`` and crop the centre to exactly ``res``.

    ``res`` is an int (square) or ``(height, width)``. ``multiple`` rounds the intermediate
    resized sides to the nearest multiple before the crop, as the examples' ``ResizeTransform``
    does with ``resize_multiple``. Accepts ``(C, H, W)`` or ``(B, C, H, W)``.
    """
    from torchvision.transforms.v2 import functional as TF  # lazy: torchvision costs ~0.9 s to import

    _check_image(img)
    th, tw = _pair(res, "res")
    h, w = img.shape[-2:]
    scale = max(th / h, tw / w)
    # Never below the target, or the crop would have to pad.
    nh = max(th, nearest_multiple(h * scale, multiple))
    nw = max(tw, nearest_multiple(w * scale, multiple))
    out = resize_image(img, nh, nw)
    return TF.center_crop(out, [th, tw])


def resize_to_multiple(img: Tensor, size: int, multiple: int) -> Tensor:
    """Resize so the shorter side is ``size`` (aspect kept), each side rounded to the nearest ``multiple``.

    With ``multiple = model.min_resolution_step`` the result is always an input size the model
    accepts. Accepts ``(C, H, W)`` or ``(B, C, H, W)``.
    """
    _check_image(img)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = img.shape[-2:]
    scale = size / min(h, w)
    return resize_image(img, nearest_multiple(h * scale, multiple), nearest_multiple(w * scale, multiple))
