"""``openradio.radio_model``: what it is given -> the route that reads it -> RADIOModel in eval mode.

The routes: a released name (downloaded once into torch.hub's cache) or a local official
``.pth.tar`` (:mod:`openradio.formats.official`); a Hugging Face repository or folder in the
official remote-code layout (:mod:`openradio.formats.hf`); a transformers-native folder
(:mod:`openradio.formats.native`). Each ends in :mod:`openradio.formats.build`.
"""

from __future__ import annotations

import os
import urllib.error
import warnings
from pathlib import Path
from typing import Literal, Optional, Sequence, overload

import torch

from openradio.formats.build import build_radio
from openradio.formats.hf import HF_PREFIX, hf_folder, is_hf_reference, load_hf
from openradio.formats.native import is_native_folder, load_native
from openradio.formats.official import load_checkpoint_file, select_state
from openradio.model.radio import RADIOModel, Resolution
from openradio.model.text import attach_text_towers
from openradio.versions import DEFAULT_VERSION, VERSIONS, Version, get_version


def checkpoint_cache_dir() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), shared with torch.hub users."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_checkpoint_path(version: str | Version) -> Path:
    v = get_version(version) if isinstance(version, str) else version
    return checkpoint_cache_dir() / v.filename


def download_checkpoint(version: str | Version, progress: bool = True, force: bool = False) -> Path:
    """The checkpoint of a released version, downloaded once into torch.hub's cache."""
    v = get_version(version) if isinstance(version, str) else version
    dst = cached_checkpoint_path(v)
    if dst.is_file() and not force:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    try:
        torch.hub.download_url_to_file(v.url, str(tmp), progress=progress)
    except (urllib.error.URLError, OSError, ConnectionError) as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download {v.name} from {v.url.split('?')[0]} ({e}). If this machine is offline, "
            f"download the file elsewhere and place it at {dst} (or pass the file's path as the version)."
        ) from None
    os.replace(tmp, dst)
    return dst


def _file_preferred(args, path: Path) -> Optional[Resolution]:
    """A local file's preferred resolution: ``args.preferred_resolution`` (openradio's exports
    record it), else the released version whose file this is (same file name), else timm's
    ``args.input_size`` (C, H, W); None when the file says nothing (as the official loader)."""
    rec = getattr(args, "preferred_resolution", None)
    if rec:
        return Resolution(*([rec, rec] if isinstance(rec, int) else rec[-2:]))
    same = next((v for v in VERSIONS.values() if v.filename == path.name), None)
    if same is not None:
        return Resolution(*same.preferred_resolution)
    size = getattr(args, "input_size", None)
    if isinstance(size, int) and size > 0:
        return Resolution(size, size)
    if isinstance(size, (tuple, list)) and len(size) >= 2 and all(isinstance(s, int) and s > 0 for s in size[-2:]):
        return Resolution(*size[-2:])
    return None


def resolve_checkpoint(version: str, progress: bool = True) -> tuple[Path, Optional[Version]]:
    """The checkpoint file of a local path or a released name (downloaded once into torch.hub's
    cache), with the release's settings (None for a local file). Errors name what to do."""
    if os.path.isfile(version):
        return Path(version), None
    if version in VERSIONS:
        info = VERSIONS[version]
        return download_checkpoint(info, progress=progress), info
    if any(sep in version for sep in ("/", os.sep)) or version.endswith((".pth", ".tar", ".pt")):
        raise FileNotFoundError(f"checkpoint file not found: {version}")
    get_version(version)  # raises with the list of known versions
    raise AssertionError("unreachable")


@overload
def radio_model(
    version: str = "",
    progress: bool = True,
    adaptor_names: Optional[Sequence[str] | str] = None,
    vitdet_window_size: Optional[int] = None,
    return_checkpoint: Literal[False] = False,
    text_towers: bool | str = "lazy",
    dtype: Optional[torch.dtype] = None,
) -> RADIOModel: ...


@overload
def radio_model(
    version: str = "",
    progress: bool = True,
    adaptor_names: Optional[Sequence[str] | str] = None,
    vitdet_window_size: Optional[int] = None,
    *,
    return_checkpoint: Literal[True],
    text_towers: bool | str = "lazy",
    dtype: Optional[torch.dtype] = None,
) -> tuple[RADIOModel, Optional[dict]]: ...


# keywords the official loader takes (or its examples pass) and ignores; accepted here for the
# same calls to run, without a warning
OFFICIAL_IGNORED_KWARGS = frozenset({"neck_name", "return_spatial_features", "force_reload", "support_packing"})


def radio_model(
    version: str = "",
    progress: bool = True,
    adaptor_names: Optional[Sequence[str] | str] = None,
    vitdet_window_size: Optional[int] = None,
    return_checkpoint: bool = False,
    text_towers: bool | str = "lazy",
    dtype: Optional[torch.dtype] = None,
    **kwargs,
) -> RADIOModel | tuple[RADIOModel, Optional[dict]]:
    """Load a RADIO model (eval mode).

    Args:
        version: a released name (``openradio.versions.VERSIONS``: 'radio_v2.5-b', 'radio_v2.5-l',
            ...), the path of a local official-format checkpoint, a Hugging Face repository
            ('hf-hub:nvidia/RADIO-B') or a local folder in that layout (config.json +
            model.safetensors) or in transformers' native layout. Empty: the default version.
        adaptor_names: teacher adaptors to attach (e.g. ['clip', 'sam']); their outputs come back
            in a dict next to 'backbone'.
        vitdet_window_size: run in ViTDet mode with this window side (in patches).
        text_towers: give open_clip-type adaptors ('clip', 'siglip') ``adaptor.tokenizer`` and
            ``adaptor.encode_text`` (the teacher's text tower through open_clip). 'lazy' (default):
            nothing is downloaded until the first call; True: load now; False: none.
        return_checkpoint: also return the raw checkpoint dict (None for the folder routes):
            ``(model, checkpoint)``.
        dtype: hold the backbone in this dtype (e.g. ``torch.bfloat16`` on GPUs and CPUs with
            AVX512-BF16/AMX: no per-call casts, unlike autocast); None: the checkpoint's own.

    Other keywords are ignored, as the official loader ignores them (``OFFICIAL_IGNORED_KWARGS``
    quietly, any other with a warning that names it: a misspelt option does not pass unseen).
    """
    unknown = sorted(set(kwargs) - OFFICIAL_IGNORED_KWARGS)
    if unknown:
        warnings.warn(
            f"radio_model: ignoring unknown keyword argument(s) {', '.join(unknown)} "
            "(see help(openradio.radio_model) for the ones it takes)",
            stacklevel=2,
        )
    version = version or DEFAULT_VERSION
    if isinstance(adaptor_names, str):
        adaptor_names = [adaptor_names]
    chk = None
    if is_hf_reference(version):
        model = _load_folder(version, adaptor_names, vitdet_window_size)
    else:
        model, chk = _load_file(version, adaptor_names, vitdet_window_size, progress, keep_checkpoint=return_checkpoint)
    if dtype is not None:
        model.set_compute_dtype(dtype)
    if text_towers and adaptor_names:
        attach_text_towers(model, lazy=text_towers == "lazy")
    return (model, chk) if return_checkpoint else model


def _load_folder(
    reference: str, adaptor_names: Optional[Sequence[str]], vitdet_window_size: Optional[int]
) -> RADIOModel:
    """A Hugging Face reference or local folder: transformers-native, else the official remote-code layout."""
    folder = hf_folder(reference)
    if not is_native_folder(folder):
        return load_hf(
            str(folder), adaptor_names=adaptor_names, vitdet_window_size=vitdet_window_size, version=reference
        )
    return load_native(
        folder,
        adaptor_names=adaptor_names,
        vitdet_window_size=vitdet_window_size,
        version=reference if reference.startswith(HF_PREFIX) else None,
    )


def _load_file(
    version: str,
    adaptor_names: Optional[Sequence[str]],
    vitdet_window_size: Optional[int],
    progress: bool,
    keep_checkpoint: bool,
) -> tuple[RADIOModel, Optional[dict]]:
    """A released name or a local official ``.pth.tar``."""
    if version in VERSIONS and vitdet_window_size is not None and not VERSIONS[version].supports_vitdet:
        raise ValueError(
            f"vitdet_window_size is not supported for {version}. Please set it to None or use a different version."
        )
    path, info = resolve_checkpoint(version, progress=progress)
    # the file is memory-mapped and its tensors become the model's weights (no second copy);
    # a caller who asks for the checkpoint too gets a model with its own copy
    chk = load_checkpoint_file(path, mmap=True)
    state, is_ema = select_state(chk)
    model = build_radio(
        chk["args"],
        state,
        adaptor_names=adaptor_names,
        vitdet_window_size=vitdet_window_size,
        is_ema=is_ema,
        assign=not keep_checkpoint,
        version=info.name if info else str(path),
        patch_size=info.patch_size if info else None,
        max_resolution=info.max_resolution if info else None,
        preferred_resolution=Resolution(*info.preferred_resolution) if info else _file_preferred(chk["args"], path),
        vitdet_num_windowed=info.vitdet_num_windowed if info else None,
        vitdet_num_global=info.vitdet_num_global if info else None,
    )
    return model, (chk if keep_checkpoint else None)
