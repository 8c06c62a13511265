"""Data plumbing shared by the evaluations: labelled image sets, the resize+centre-crop transform,
same-shape batching and CSV output (running a model: :mod:`openradio.runtime`).

Datasets come in two forms:

* an **ImageFolder**: ``DIR/<class name>/<image>``; classes are the sub-folder names in sorted order
  (for ImageNet's ``n0…`` folders that is the standard class-index order);
* a **list file**: one ``path<TAB>label`` per line, paths relative to the file's folder; labels are
  either integer class indices or class names.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from openradio.atomicio import atomic_path
from openradio.inputs.imageio import IMAGE_EXTENSIONS, ImageLoadError, is_image_name, load_image, resize_center_crop

__all__ = [
    "IMAGE_EXTENSIONS",
    "load_image",
    "resize_center_crop",
    "LabelledImages",
    "read_image_folder",
    "read_image_list",
    "read_labelled_images",
    "read_classnames",
    "ImageSetDataset",
    "collate_same_shape",
    "iterate_batches",
    "write_csv",
]

# ----------------------------------------------------------------------------------------------------------
# labelled image sets


@dataclass
class LabelledImages:
    """A list of (image path, class index) plus the class names."""

    paths: list[Path]
    labels: list[int]
    classnames: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def read_image_folder(root: str | os.PathLike) -> LabelledImages:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{str(root)!r} has no class sub-folders; expected DIR/<class>/<image> (ImageFolder "
            "layout) or a list file with 'path<TAB>label' lines"
        )
    paths, labels = [], []
    for idx, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if is_image_name(p.name) and p.is_file())
        paths += files
        labels += [idx] * len(files)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}")
    return LabelledImages(paths, labels, classes, source=str(root))


def read_image_list(list_file: str | os.PathLike, classnames: Sequence[str] | None = None) -> LabelledImages:
    """Read ``path<TAB>label`` lines. Integer labels index ``classnames``; other labels are class names."""
    list_file = Path(list_file)
    base = list_file.parent
    rows: list[tuple[Path, str]] = []
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"{list_file}:{lineno}: expected 'path<TAB>label', got {line!r}")
            p = Path(parts[0].strip())
            rows.append((p if p.is_absolute() else base / p, parts[1].strip()))
    if not rows:
        raise ValueError(f"list file {str(list_file)!r} has no 'path<TAB>label' lines")
    missing = [str(p) for p, _ in rows if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {list_file} do not exist, e.g. {missing[0]!r}")
    if all(lbl.lstrip("-").isdigit() for _, lbl in rows):
        labels = [int(lbl) for _, lbl in rows]
        n = max(labels) + 1
        if classnames is None:
            raise ValueError(
                f"{list_file} has integer labels; pass the class names too (--classnames FILE or 'imagenet')"
            )
        if min(labels) < 0 or n > len(classnames):
            raise ValueError(
                f"{list_file}: labels must lie in [0, {len(classnames)}) for the "
                f"{len(classnames)} class names given; found {min(labels)}..{n - 1}"
            )
        names = list(classnames)
    else:
        names = list(classnames) if classnames is not None else sorted({lbl for _, lbl in rows})
        index = {c: i for i, c in enumerate(names)}
        unknown = sorted({lbl for _, lbl in rows if lbl not in index})
        if unknown:
            raise ValueError(f"{list_file}: labels not among the class names: {unknown[:5]}")
        labels = [index[lbl] for _, lbl in rows]
    return LabelledImages([p for p, _ in rows], labels, names, source=str(list_file))


def read_labelled_images(path: str | os.PathLike, classnames: Sequence[str] | None = None) -> LabelledImages:
    """An ImageFolder directory or a ``path<TAB>label`` list file.

    ``classnames`` (optional) replaces the ImageFolder's folder names (same count, same order) — e.g. the
    ImageNet-1k names for ``n0…`` folders — or names the integer labels of a list file.
    """
    path = Path(path)
    if path.is_dir():
        data = read_image_folder(path)
        if classnames is not None:
            if len(classnames) != data.num_classes:
                raise ValueError(
                    f"{len(classnames)} class names given but {str(path)!r} has {data.num_classes} "
                    "class folders; give one name per folder, in sorted folder order"
                )
            data.classnames = list(classnames)
        return data
    if path.is_file():
        return read_image_list(path, classnames)
    raise FileNotFoundError(
        f"data {str(path)!r} not found; pass an ImageFolder directory or a 'path<TAB>label' list file"
    )


def read_classnames(spec: str | None) -> list[str] | None:
    """``None`` (use the data's own names), ``'imagenet'`` (open_clip's ImageNet-1k names) or a file with
    one class name per line."""
    if spec is None:
        return None
    if spec.lower() in ("imagenet", "imagenet1k", "imagenet-1k"):
        # lazy: open_clip costs 1 s to import; only the 'imagenet' names need it
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"class-name file {spec!r} not found; pass a file with one name per line or 'imagenet'")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not names:
        raise ValueError(f"class-name file {spec!r} is empty")
    return names


class ImageSetDataset(Dataset):
    """Loads each image and resizes/centre-crops it to ``resolution`` x ``resolution``."""

    def __init__(self, data: LabelledImages | Sequence[str | os.PathLike], resolution: int):
        if isinstance(data, LabelledImages):
            self.paths, self.labels = list(data.paths), list(data.labels)
        else:
            self.paths, self.labels = [Path(p) for p in data], [-1] * len(data)
        self.resolution = int(resolution)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Optional[torch.Tensor], int, int]:
        img = load_or_none(self.paths[i])
        if img is None:
            return None, self.labels[i], i  # unreadable: dropped (and counted) by collate_same_shape
        return resize_center_crop(img, self.resolution), self.labels[i], i


def load_or_none(path: str | os.PathLike) -> Optional[torch.Tensor]:
    """The image, or None for a corrupt, truncated, non-image or missing file (skipped and counted by
    the evaluation loops, as training does)."""
    try:
        return load_image(path)
    except (ImageLoadError, OSError, ValueError):
        return None


class SubBatches(list):
    """The sub-batches of one loader batch, plus the dataset indices of the unreadable images."""

    skipped: list


def collate_same_shape(items: list[tuple[Optional[torch.Tensor], int, int]]) -> SubBatches:
    """Group a batch into sub-batches of one image shape (a model batch must have one shape);
    unreadable images (``None``) are left out and listed in ``.skipped``."""
    groups: dict[tuple[int, ...], list] = {}
    out = SubBatches()
    out.skipped = [idx for img, _, idx in items if img is None]
    for img, lbl, idx in items:
        if img is not None:
            groups.setdefault(tuple(img.shape), []).append((img, lbl, idx))
    out.extend(
        (torch.stack([g[0] for g in grp]), torch.tensor([g[1] for g in grp]), torch.tensor([g[2] for g in grp]))
        for grp in groups.values()
    )
    return out


def warn_skipped(paths: Sequence[Path]) -> None:
    """One warning per unreadable image, and the count."""
    for p in paths:
        warnings.warn(f"skipping unreadable image {p} (corrupt, truncated or not an image)", stacklevel=3)


def iterate_batches(
    data: LabelledImages | Sequence[str | os.PathLike],
    resolution: int,
    batch_size: int = 32,
    num_workers: int = 0,
    skipped: Optional[list] = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (images (B,3,R,R) in [0,1], labels (B,), dataset indices (B,)), each batch one shape.

    Unreadable images are skipped with a warning each; their dataset indices are appended to
    ``skipped`` when a list is given (the count of what was left out)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    dataset = ImageSetDataset(data, resolution)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_same_shape
    )
    for sub_batches in loader:
        if sub_batches.skipped:
            warn_skipped([dataset.paths[i] for i in sub_batches.skipped])
            if skipped is not None:
                skipped.extend(sub_batches.skipped)
        yield from sub_batches


# ----------------------------------------------------------------------------------------------------------
# model running helpers


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(list(header))
        for r in rows:
            w.writerow(list(r))
    return path
