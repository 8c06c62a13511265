"""RADIO checkpoints in the Hugging Face layout (``config.json`` + ``model.safetensors``).

The official Hugging Face repositories (``nvidia/RADIO-B``, ``nvidia/RADIO-L``, ...) hold a
``RADIOConfig`` (``args`` as a plain dict, adaptor head configs, normaliser sizes) and the weights
of the official ``RADIOModel`` under ``radio_model.*``. Only safetensors are read, so loading
runs no code from the repository (``trust_remote_code`` is never needed). Keys are converted
to the ``.pth.tar`` layout at this edge and the model is built by the same code as every other
checkpoint, so ViTDet works too (the official Hugging Face model ignores the window size).

Folders of transformers' own native ``RadioModel`` (``model_type="radio"`` with ``hidden_size`` and no
``args``) are recognised here too and read by ``openradio.formats.native``; ``save_transformers`` writes them.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from openradio.formats.official import CheckpointError, arg, backbone_state_to_official, build_radio, official_state_dict
from openradio.model.radio import RADIOModel, Resolution

HF_PREFIX = "hf-hub:"
# RADIOModel submodule -> official .pth.tar key family
_TO_OFFICIAL = [("model.", "base_model."), ("input_conditioner.", "input_conditioner."),
                ("feature_normalizer.", "_feature_normalizer."),
                ("inter_feature_normalizer.", "_intermediate_feature_normalizer.")]


def is_hf_reference(version: str) -> bool:
    return version.startswith(HF_PREFIX) or (os.path.isdir(version) and (Path(version) / "config.json").is_file())


def snapshot(repo_id: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> Path:
    """Download (or reuse from the Hugging Face cache) the config and safetensors of a repo."""
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                      allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"]))
    except Exception as e:  # offline, unknown repo, gated repo: say what to do
        raise RuntimeError(f"could not fetch {repo_id!r} from the Hugging Face hub ({' '.join(str(e).split())[:300]}). "
                           "Offline, download the repository elsewhere and pass its folder instead.") from None


def read_hf_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face RADIO folder")
    config = json.loads(cfg_path.read_text())
    if "args" not in config:
        raise CheckpointError(f"{cfg_path} has no 'args': not a RADIO config")
    return config, read_weights(folder)


def read_weights(folder: Path, default_files: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face folder: the shards its ``model.safetensors.index.json``
    names, else ``default_files`` (default: ``model.safetensors``)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = list(default_files) if default_files is not None else ["model.safetensors"]
    if not files:
        raise FileNotFoundError(f"{folder} has no model.safetensors")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        try:
            state.update(load_file(str(path)))
        except Exception as e:
            raise CheckpointError(f"cannot read {path}: the file is truncated or corrupt ({e})") from None
    return state


def hf_to_official(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """``radio_model.*`` keys -> the official ``.pth.tar`` keys (and the stored summary_idxs)."""
    out: dict[str, torch.Tensor] = {}
    summary_idxs = None
    for k, v in state.items():
        if not k.startswith("radio_model."):
            raise CheckpointError(f"unexpected key {k!r}: Hugging Face RADIO weights live under 'radio_model.'")
        k = k[len("radio_model."):]
        if k == "summary_idxs":
            summary_idxs = v
            continue
        if k.startswith("adaptors."):
            name, rest = k[len("adaptors."):].split(".", 1)
            kind, rest = rest.split(".", 1)
            family = {"head_mlp": "_heads", "feat_mlp": "_feature_projections"}.get(kind)
            if family is None:
                raise CheckpointError(f"unexpected adaptor key {k!r}")
            out[f"{family}.{name}.{rest}"] = v
            continue
        for src, dst in _TO_OFFICIAL:
            if k.startswith(src):
                out[dst + k[len(src):]] = v
                break
        else:
            raise CheckpointError(f"unexpected key {'radio_model.' + k!r} in the Hugging Face weights")
    return out, summary_idxs


def load_hf(reference: str, adaptor_names: Optional[Sequence[str]] = None, vitdet_window_size: Optional[int] = None,
            revision: Optional[str] = None, cache_dir: Optional[str] = None) -> RADIOModel:
    """``hf-hub:nvidia/RADIO-B`` or a local folder with config.json + model.safetensors."""
    folder = snapshot(reference[len(HF_PREFIX):], revision, cache_dir) if reference.startswith(HF_PREFIX) else Path(reference)
    from openradio.formats.native import is_native_config, load_native
    cfg_path = Path(folder) / "config.json"
    if cfg_path.is_file() and is_native_config(native := json.loads(cfg_path.read_text())):
        model = load_native(folder, native, adaptor_names=adaptor_names, vitdet_window_size=vitdet_window_size)
        if reference.startswith(HF_PREFIX):
            model.version = reference
        return model
    config, state = read_hf_folder(folder)
    args = dict(config["args"])
    if isinstance(args.get("dtype"), str):
        args["dtype"] = getattr(torch, args["dtype"].replace("torch.", ""))
    args = argparse.Namespace(**args)
    official, summary_idxs = hf_to_official(state)
    pref = config.get("preferred_resolution")
    model = build_radio(args, official, adaptor_names=adaptor_names, vitdet_window_size=vitdet_window_size,
                        patch_size=config.get("patch_size"), max_resolution=config.get("max_resolution"),
                        preferred_resolution=Resolution(*pref) if pref else None)
    if summary_idxs is not None:  # the Hugging Face model's own selection (no de-duplication by name)
        model.summary_idxs = summary_idxs.to(torch.int64)
    for name, cfg in (config.get("adaptor_configs") or {}).items():
        if name in model.adaptors and "head_idx" in cfg:
            model.adaptors[name].head_idx = int(cfg["head_idx"])
    model.version = reference
    return model


def jsonable_args(args) -> dict:
    """Checkpoint ``args`` (a Namespace or dict) as JSON-ready data: dtypes by name."""
    a = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    for field in ("dtype", "amp_dtype"):
        if a.get(field) is not None:
            a[field] = str(a[field]).split(".")[-1]
    return json.loads(json.dumps(a, default=str))


def save_hf(model: RADIOModel, folder: str | os.PathLike, version: Optional[str] = None) -> Path:
    """Write ``model`` in the Hugging Face layout (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    args = getattr(model, "args", None)
    if args is None:
        raise ValueError("the model has no checkpoint args; load it with openradio.radio_model first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    a = jsonable_args(args)
    # backbone keys in the official names (e.g. the DINOv2 student's w12/w3), as NVIDIA's repos
    backbone = backbone_state_to_official(model.model.state_dict(), arg(args, "model") or "")
    state = {f"radio_model.model.{k}": v for k, v in backbone.items()}
    state.update({f"radio_model.{k}": v for k, v in model.state_dict().items()
                  if not k.startswith("model.") and ".text_tower." not in k})
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    config = {
        "architectures": ["RADIOModel"], "model_type": "radio", "args": a,
        "version": version or getattr(model, "version", None),
        "patch_size": model.patch_size, "max_resolution": model.max_resolution,
        "preferred_resolution": list(model.preferred_resolution) if model.preferred_resolution else None,
        "adaptor_names": list(model.adaptors),
        "adaptor_configs": {n: {"head_idx": a_.head_idx, "upsample_factor": a_.upsample_factor}
                            for n, a_ in model.adaptors.items()},
        "vitdet_window_size": model.window_size,
        "feature_normalizer_config": ({"embed_dim": model.embed_dim}
                                      if not isinstance(model.feature_normalizer, torch.nn.Identity) else None),
        "inter_feature_normalizer_config": (
            {"num_intermediates": int(model.inter_feature_normalizer.alphas.shape[0]), "embed_dim": model.embed_dim,
             "rot_per_layer": model.inter_feature_normalizer.rotation.ndim == 3}
            if model.inter_feature_normalizer is not None else None),
    }
    from openradio.atomicio import atomic_path, write_text
    with atomic_path(folder / "model.safetensors") as tmp:  # weights first: config.json marks a complete folder
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_text(folder / "config.json", json.dumps(config, indent=2, default=str))
    return folder


def save_transformers(model: RADIOModel, folder: str | os.PathLike, version: Optional[str] = None) -> Path:
    """Write a folder that transformers' native ``RadioModel.from_pretrained`` loads (no remote code);
    adaptor heads and PHI-S normalisers go to ``openradio.safetensors`` beside it (see openradio.formats.native)."""
    from openradio.formats.native import save_transformers as _save
    return _save(model, folder, version=version)


__all__ = ["load_hf", "save_hf", "save_transformers", "read_hf_folder", "hf_to_official", "is_hf_reference", "official_state_dict"]
