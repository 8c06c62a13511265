"""RADIO checkpoints in the Hugging Face layout (``config.json`` + ``model.safetensors``).

The official Hugging Face repositories (``nvidia/RADIO-B``, ``nvidia/RADIO-L``, ...) hold a
``RADIOConfig`` (``args`` as a plain dict, adaptor head configs, normaliser sizes) and the weights
of the official ``RADIOModel`` under ``radio_model.*``. Only safetensors are read, so loading
runs no code from the repository (``trust_remote_code`` is never needed). Keys are converted
to the ``.pth.tar`` layout at this edge and the model is built by the same code as every other
checkpoint, so ViTDet works too (the official Hugging Face model ignores the window size).

Folders of transformers' own native ``RadioModel`` (``model_type="radio"`` with ``hidden_size`` and no
``args``) are read and written by :mod:`openradio.formats.native` (``save_transformers`` is
re-exported here); :mod:`openradio.formats.resolve` picks the route for a folder.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import huggingface_hub
import torch
from safetensors.torch import save_file

from openradio.atomicio import atomic_path, write_text
from openradio.formats.build import build_radio, finish_loaded, preferred
from openradio.formats.native import save_transformers
from openradio.formats.official import (
    arg,
    backbone_state_to_official,
    jsonable_args,
    official_state_dict,
    parse_dtype,
)
from openradio.formats.safeload import CheckpointError, read_safetensors
from openradio.model.radio import RADIOModel

HF_PREFIX = "hf-hub:"
# RADIOModel submodule -> official .pth.tar key family
_TO_OFFICIAL = [
    ("model.", "base_model."),
    ("input_conditioner.", "input_conditioner."),
    ("feature_normalizer.", "_feature_normalizer."),
    ("inter_feature_normalizer.", "_intermediate_feature_normalizer."),
]


def is_hf_reference(version: str) -> bool:
    return version.startswith(HF_PREFIX) or (os.path.isdir(version) and (Path(version) / "config.json").is_file())


def snapshot(repo_id: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> Path:
    """Download (or reuse from the Hugging Face cache) the config and safetensors of a repo."""
    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"],
            )
        )
    except Exception as e:  # offline, unknown repo, gated repo: say what to do
        raise RuntimeError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({' '.join(str(e).split())[:300]}). "
            "Offline, download the repository elsewhere and pass its folder instead."
        ) from None


def hf_folder(reference: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> Path:
    """The local folder of ``hf-hub:owner/name`` (downloaded once into the Hugging Face cache) or of a path."""
    if reference.startswith(HF_PREFIX):
        return snapshot(reference[len(HF_PREFIX) :], revision, cache_dir)
    return Path(reference)


def read_hf_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``config.json`` and the weights of a Hugging Face RADIO folder."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face RADIO folder")
    config = json.loads(cfg_path.read_text())
    if "args" not in config:
        raise CheckpointError(
            f"{cfg_path} has no 'args': not a RADIO config in the Hugging Face layout (a "
            "transformers-native folder loads with openradio.radio_model(folder))"
        )
    return config, read_safetensors(folder)


def hf_to_official(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """``radio_model.*`` keys -> the official ``.pth.tar`` keys (and the stored summary_idxs)."""
    out: dict[str, torch.Tensor] = {}
    summary_idxs = None
    for k, v in state.items():
        if not k.startswith("radio_model."):
            raise CheckpointError(f"unexpected key {k!r}: Hugging Face RADIO weights live under 'radio_model.'")
        k = k[len("radio_model.") :]
        if k == "summary_idxs":
            summary_idxs = v
            continue
        if k.startswith("adaptors."):
            name, rest = k[len("adaptors.") :].split(".", 1)
            kind, rest = rest.split(".", 1)
            family = {"head_mlp": "_heads", "feat_mlp": "_feature_projections"}.get(kind)
            if family is None:
                raise CheckpointError(f"unexpected adaptor key {k!r}")
            out[f"{family}.{name}.{rest}"] = v
            continue
        for src, dst in _TO_OFFICIAL:
            if k.startswith(src):
                out[dst + k[len(src) :]] = v
                break
        else:
            raise CheckpointError(f"unexpected key {'radio_model.' + k!r} in the Hugging Face weights")
    return out, summary_idxs


def load_hf(
    reference: str,
    adaptor_names: Optional[Sequence[str]] = None,
    vitdet_window_size: Optional[int] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    version: Optional[str] = None,
) -> RADIOModel:
    """``hf-hub:nvidia/RADIO-B`` or a local folder with config.json + model.safetensors (the
    official remote-code layout; transformers-native folders: :func:`openradio.formats.native.load_native`).
    The model's ``version`` is ``version``, else ``reference``."""
    config, state = read_hf_folder(hf_folder(reference, revision, cache_dir))
    args = dict(config["args"])
    if isinstance(args.get("dtype"), str):  # config.json keeps it as text ('torch.bfloat16')
        args["dtype"] = parse_dtype(args["dtype"])
    official, summary_idxs = hf_to_official(state)
    model = build_radio(
        argparse.Namespace(**args),
        official,
        adaptor_names=adaptor_names,
        vitdet_window_size=vitdet_window_size,
        version=version or reference,
        patch_size=config.get("patch_size"),
        max_resolution=config.get("max_resolution"),
        preferred_resolution=preferred(config.get("preferred_resolution")),
    )
    # the Hugging Face model's own summary selection (no de-duplication by name) and head slots
    return finish_loaded(model, summary_idxs=summary_idxs, adaptor_configs=config.get("adaptor_configs"))


def save_hf(model: RADIOModel, folder: str | os.PathLike, version: Optional[str] = None) -> Path:
    """Write ``model`` in the Hugging Face layout (config.json + model.safetensors)."""
    args = model.args
    if args is None:
        raise ValueError("the model has no checkpoint args; load it with openradio.radio_model first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    a = jsonable_args(args)
    # backbone keys in the official names (e.g. the DINOv2 student's w12/w3), as NVIDIA's repos
    backbone = backbone_state_to_official(model.model.state_dict(), arg(args, "model") or "")
    state = {f"radio_model.model.{k}": v for k, v in backbone.items()}
    state.update(
        {
            f"radio_model.{k}": v
            for k, v in model.state_dict().items()
            if not k.startswith("model.") and ".text_tower." not in k
        }
    )
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    config = {
        "architectures": ["RADIOModel"],
        "model_type": "radio",
        "args": a,
        "version": version or model.version,
        "patch_size": model.patch_size,
        "max_resolution": model.max_resolution,
        "preferred_resolution": list(model.preferred_resolution) if model.preferred_resolution else None,
        "adaptor_names": list(model.adaptors),
        "adaptor_configs": {
            n: {"head_idx": a_.head_idx, "upsample_factor": a_.upsample_factor} for n, a_ in model.adaptors.items()
        },
        "vitdet_window_size": model.window_size,
        "feature_normalizer_config": (
            {"embed_dim": model.embed_dim} if not isinstance(model.feature_normalizer, torch.nn.Identity) else None
        ),
        "inter_feature_normalizer_config": (
            {
                "num_intermediates": int(model.inter_feature_normalizer.alphas.shape[0]),
                "embed_dim": model.embed_dim,
                "rot_per_layer": model.inter_feature_normalizer.rotation.ndim == 3,
            }
            if model.inter_feature_normalizer is not None
            else None
        ),
    }
    with atomic_path(folder / "model.safetensors") as tmp:  # weights first: config.json marks a complete folder
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_text(folder / "config.json", json.dumps(config, indent=2, default=str))
    return folder


__all__ = [
    "load_hf",
    "save_hf",
    "save_transformers",
    "read_hf_folder",
    "hf_folder",
    "hf_to_official",
    "is_hf_reference",
    "official_state_dict",
]
