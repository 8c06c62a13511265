"""Training state -> official ``.pth.tar``: student (and EMA) weights with PHI-S folded into the heads.

Everything export needs travels in the training checkpoint itself (``student_args``, ``head_dims``,
``phi_s``, ``model``, ``ema``), so a run is exported without building a teacher, downloading
anything, or writing into the run directory (``export_run``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Mapping, NamedTuple, Optional

import torch
from torch import nn

from openradio.distill.checkpointing import CheckpointManager
from openradio.distill.phi_s import PhiSNormalizer, fold_inverse_into_linear
from openradio.distill.student import args_from_state, fold_spectral_reparam, fold_spectral_state
from openradio.formats.build import build_model
from openradio.formats.official import official_state_dict, prefixed, radio_config, save_checkpoint
from openradio.model.radio import RADIOModel

__all__ = [
    "export_normalizer_key",
    "export_state_dict",
    "write_export",
    "phi_s_from_state",
    "student_from_state",
    "export_run",
    "ExportResult",
]


def export_normalizer_key(
    phi_s: Mapping[str, PhiSNormalizer], teacher: str, teacher_input_size: Optional[int]
) -> Optional[str]:
    """Which of a teacher's PHI-S normalisers to fold into its (shared) head: the one at the
    teacher's native input size when it exists, else the one that saw the most features."""
    keys = [k for k in phi_s.keys() if k.split("@")[0] == teacher]
    if not keys:
        return None
    native = f"{teacher}@{teacher_input_size}"
    if native in keys:
        return native
    return max(keys, key=lambda k: float(phi_s[k].estimator.count))


def export_state_dict(model: RADIOModel, phi_s: Mapping[str, PhiSNormalizer]) -> dict:
    """The official state dict of ``model`` with each feature head's PHI-S inverse folded into
    its final Linear (so the released adaptors emit raw teacher features) and any spectral
    reparametrisation folded into plain weights."""
    model = fold_spectral_reparam(copy.deepcopy(model).cpu().float())
    for name, adaptor in model.adaptors.items():
        key = export_normalizer_key(phi_s, name, adaptor.teacher_conf.get("input_size"))
        if key is None:
            continue
        norm = phi_s[key]
        mlp = adaptor.feat_mlp
        final = mlp.final[2] if hasattr(mlp, "final") else mlp.fc2
        folded = fold_inverse_into_linear(
            final, norm.mean.cpu(), inv_tx=norm.inv_tx.cpu(), upsample_factor=adaptor.upsample_factor
        )
        if hasattr(mlp, "final"):
            mlp.final[2] = folded
        else:
            mlp.fc2 = folded
    return official_state_dict(model, heads_by_name=True)


def write_export(
    path: str | Path,
    args: argparse.Namespace,
    student: RADIOModel,
    phi_s: Mapping[str, PhiSNormalizer],
    ema: Optional[RADIOModel] = None,
    step: int = 0,
) -> Path:
    """Write the official ``.pth.tar`` (``state_dict``, and ``state_dict_ema`` when ``ema``)."""
    plain = export_state_dict(student, phi_s)
    ema_sd = export_state_dict(ema, phi_s) if ema is not None else None
    return save_checkpoint(path, args, plain, state_dict_ema=ema_sd, epoch=step)


def phi_s_from_state(state: Mapping[str, torch.Tensor]) -> nn.ModuleDict:
    """PHI-S normalisers rebuilt from a training checkpoint's ``phi_s`` entry (``KEY.mean``, ...)."""
    keys = sorted({k.split(".", 1)[0] for k in state})
    out = nn.ModuleDict()
    for key in keys:
        norm = PhiSNormalizer(int(state[f"{key}.mean"].shape[0]))
        norm.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == key})
        out[key] = norm
    return out


def student_from_state(state: Mapping, weights: str = "model") -> RADIOModel:
    """The student of a training checkpoint with the weights ``state[weights]`` ('model' or 'ema'),
    in eval mode, built by :func:`openradio.formats.build.build_model`; a sigma-reparametrised
    student comes back with its effective (folded) weights, the network export writes."""
    missing = [k for k in ("student_args", "head_dims", weights) if state.get(k) is None]
    if missing:
        raise ValueError(
            f"the training checkpoint has no {', '.join(missing)}: it was written by an older openradio "
            "(or without EMA); export it with that version, or resume training once with this one"
        )
    own = fold_spectral_state(state[weights])
    cfg = radio_config(args_from_state(state["student_args"]), prefixed(own, "model"))
    with torch.random.fork_rng(devices=[]):  # construction draws initial weights: keep the caller's RNG
        return build_model(cfg, own, adaptor_names=cfg.unique_names())


class ExportResult(NamedTuple):
    path: Path
    step: int
    teachers: list  # adaptor (teacher) names in the export


def export_run(run_dir: str | Path, out: str | Path, use_ema: bool = True) -> ExportResult:
    """Export the newest readable checkpoint of a training run; reads only ``run_dir/checkpoints``.

    Builds no teacher and downloads nothing: the student's arguments, head widths, PHI-S states
    and (EMA) weights all come from the checkpoint.
    """
    ckpt = CheckpointManager(Path(run_dir) / "checkpoints", is_writer=False)
    found = ckpt.load_latest(map_location="cpu")
    if found is None:
        raise FileNotFoundError(f"no readable checkpoint in {Path(run_dir) / 'checkpoints'}")
    state, step = found
    student = student_from_state(state, "model")
    ema = student_from_state(state, "ema") if (use_ema and state.get("ema") is not None) else None
    phi_s = phi_s_from_state(state["phi_s"])
    args = args_from_state(state["student_args"])
    path = write_export(out, args, student, phi_s, ema=ema, step=step)
    return ExportResult(path, step, list(student.adaptors.keys()))
