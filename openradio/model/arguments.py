"""Argument checks the model's forward methods share: the ViTDet window, the feature layout and
timm's block-index convention."""

from __future__ import annotations

from typing import Iterable, Optional, Union

FEATURE_FORMATS = ("NLC", "NCHW")


def check_window(window_size: Optional[int]) -> Optional[int]:
    if window_size is not None and (
        isinstance(window_size, bool) or int(window_size) != window_size or window_size < 1
    ):
        raise ValueError(f"vitdet window size must be a positive number of patches (or None), got {window_size!r}")
    return None if window_size is None else int(window_size)


def check_feature_fmt(fmt: str) -> None:
    if fmt not in FEATURE_FORMATS:
        raise ValueError(f'Unsupported feature_fmt: {fmt}. Must be one of ["NLC", "NCHW"]')


def take_indices(depth: int, indices: Optional[Union[int, Iterable[int]]]) -> list[int]:
    """timm's convention: None -> every block, int n -> the last n, list -> those (negatives wrap)."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices={indices} must be between 1 and the number of blocks ({depth})")
        return list(range(depth - indices, depth))
    out = []
    for i in indices:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise ValueError(f"block index {i} is out of range for a model with {depth} blocks")
        out.append(j)
    if not out:
        raise ValueError("indices must name at least one block")
    return sorted(set(out))
