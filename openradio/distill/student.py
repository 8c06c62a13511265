"""The student: its arguments from the training config and the teachers, and its construction.

The one place the trainer creates a student: from a typed
:class:`~openradio.model.config.RadioConfig`; the official checkpoint ``args`` are derived from it
at the edge (:func:`openradio.formats.official.official_args`) only to be written into checkpoints.
Export rebuilds a trained one from its state dict with :func:`openradio.formats.build.build_model`
(after :func:`fold_spectral_state`).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from openradio.distill.config import TrainConfig
from openradio.formats.official import official_args, radio_config
from openradio.model.config import BackboneConfig, RadioConfig
from openradio.model.factory import create_radio
from openradio.model.radio import RADIOModel

__all__ = [
    "student_config",
    "student_args",
    "preferred_resolution_of",
    "build_student",
    "args_to_state",
    "args_from_state",
    "SpectralReparam",
    "spectral_weight",
    "apply_spectral_reparam",
    "fold_spectral_reparam",
    "fold_spectral_state",
    "has_spectral_reparam",
]


def student_config(cfg: TrainConfig, teachers: Mapping[str, Any]) -> RadioConfig:
    """The student's typed model config for ``cfg``; ``teachers`` give input sizes and widths."""
    s = cfg.student
    entries = []
    for t in cfg.teachers:
        teacher = teachers[t.name]
        d = {
            "name": t.name,
            "type": t.type or t.name,
            "model": t.model,
            "pretrained": t.pretrained,
            "input_size": teacher.input_size,
            "use_summary": bool(t.summary_weight) and teacher.summary_dim is not None,
        }
        if t.fd_upsample_factor > 1:
            d["fd_upsample_factor"] = t.fd_upsample_factor
        entries.append(d)
    backbone = BackboneConfig(
        arch=s.model,
        model_kwargs=dict(s.model_kwargs),
        cpe_max_size=s.cpe_max_size,
        register_multiple=s.register_multiple,
        drop_rate=0.0,
        drop_path_rate=s.drop_path or None,
    )
    return RadioConfig(
        backbone=backbone,
        teachers=entries,
        mlp_version=s.mlp_version,
        mlp_hidden_size=s.mlp_hidden_size,
        mlp_num_inner=s.mlp_num_inner,
    ).with_backbone_tokens()


def preferred_resolution_of(cfg: TrainConfig) -> list[int]:
    """[H, W] the student was last trained at: the largest partition resolution of the last stage."""
    res = max(p.resolution for p in cfg.stages[-1].partitions)
    return [res, res]


def student_args(cfg: TrainConfig, teachers: Mapping[str, Any]) -> argparse.Namespace:
    """The official checkpoint ``args`` of the student (converted at the edge, in
    :func:`openradio.formats.official.official_args`), with the recipe fields the official format
    carries and the resolution the student was trained at (``model.preferred_resolution`` on load)."""
    return official_args(
        student_config(cfg, teachers),
        feature_normalization="PHI_S" if cfg.phi_s.enabled else None,
        amp_dtype="bfloat16" if cfg.amp else None,
        preferred_resolution=preferred_resolution_of(cfg),
    )


def build_student(
    config: RadioConfig | argparse.Namespace,
    head_dims: Mapping[str, tuple[Optional[int], int]],
    *,
    spectral_reparam: bool = False,
) -> RADIOModel:
    """A fresh student (new weights, drawn from the global RNG) from its typed config (or official
    ``args``, converted at the edge) and head widths ``{teacher: (summary_dim, feature_dim)}``;
    ``spectral_reparam``: train the ViT blocks' Linear layers sigma-reparametrised."""
    if not isinstance(config, RadioConfig):
        config = radio_config(config)
    model = create_radio(config, {k: (v[0], v[1]) for k, v in head_dims.items()})
    if spectral_reparam:
        apply_spectral_reparam(model)
    return model


# -- spectral (sigma) reparametrisation -------------------------------------------------------------
SPECTRAL_EPS = 1e-6
_PARAMETRIZED = ".parametrizations.weight.original"


def spectral_weight(weight: Tensor, u: Tensor, v: Tensor, scale: Tensor, eps: float = SPECTRAL_EPS) -> Tensor:
    """The effective weight of a :class:`SpectralReparam`: ``W * (softplus(scale) + 0.05) / sigma``
    with ``sigma = u . (W v) + eps`` (its power-iteration state ``u``, ``v`` as they are)."""
    sigma = torch.dot(u, weight @ v) + eps
    return weight * ((F.softplus(scale) + 0.05) / sigma)


class SpectralReparam(nn.Module):
    """``W_eff = W * (softplus(scale) + 0.05) / sigma(W)`` (Zhai et al. 2023, "sigma-Reparam"; the
    form the released RADIO configs' ``spectral_reparam`` uses).

    ``sigma(W)`` is the largest singular value, tracked by one power-iteration step per training
    forward (``_u``, ``_v`` buffers; eval mode reuses them). The learned ``scale`` starts where
    ``W_eff`` equals the initial ``W``, so switching the option on does not change the network at
    initialisation; what it changes is the optimisation: the update of ``W`` can no longer grow its
    spectral norm, which keeps attention logits bounded (no entropy collapse).
    """

    def __init__(self, weight: Tensor, n_init_iter: int = 20, eps: float = SPECTRAL_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.armed = True  # power-iteration updates in training mode
        w = weight.detach().float()
        v = F.normalize(torch.randn(w.shape[1], dtype=w.dtype, device=w.device), dim=0, eps=eps)
        u = F.normalize(w @ v, dim=0, eps=eps)
        for _ in range(n_init_iter):
            u = F.normalize(w @ v, dim=0, eps=eps)
            v = F.normalize(w.t() @ u, dim=0, eps=eps)
        self.register_buffer("_u", u.to(weight.dtype))
        self.register_buffer("_v", v.to(weight.dtype))
        sigma = float(torch.dot(u, w @ v)) + eps
        target = max(sigma - 0.05, 1e-4)  # softplus(scale) + 0.05 == sigma at initialisation
        self.scale = nn.Parameter(
            torch.tensor(target + math.log(-math.expm1(-target)), dtype=weight.dtype, device=weight.device)
        )

    def forward(self, weight: Tensor) -> Tensor:
        if self.training and self.armed:
            with torch.no_grad():
                w = weight.detach()
                u = F.normalize(w @ self._v, dim=0, eps=self.eps)
                v = F.normalize(w.t() @ u, dim=0, eps=self.eps)
                self._u.copy_(u)
                self._v.copy_(v)
        return spectral_weight(weight, self._u, self._v, self.scale, self.eps)


def apply_spectral_reparam(model: RADIOModel) -> RADIOModel:
    """Sigma-reparametrise every Linear of the ViT blocks (attention qkv/proj, MLP fc1/fc2), in place."""
    for module in model.model.blocks.modules():
        if isinstance(module, nn.Linear) and not parametrize.is_parametrized(module, "weight"):
            sr = SpectralReparam(module.weight)
            sr.armed = False  # registering evaluates it (in training mode): no power step for that
            parametrize.register_parametrization(module, "weight", sr)
            sr.armed = True
    return model


def has_spectral_reparam(state: Mapping[str, Tensor]) -> bool:
    """Whether a student state dict comes from a sigma-reparametrised student."""
    return any(k.endswith(_PARAMETRIZED) for k in state)


@torch.no_grad()
def fold_spectral_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A student state dict with every sigma-reparametrised weight (``X.parametrizations.weight.*``)
    replaced by its effective ``X.weight``, as :func:`fold_spectral_reparam` computes it on the
    model (eval mode: no power step); other entries as they are."""
    out = {k: v for k, v in state.items() if ".parametrizations.weight." not in k}
    for key, original in state.items():
        if key.endswith(_PARAMETRIZED):
            layer = key[: -len(_PARAMETRIZED)]
            sr = f"{layer}.parametrizations.weight.0"
            u, v, scale = state[f"{sr}._u"], state[f"{sr}._v"], state[f"{sr}.scale"]
            out[f"{layer}.weight"] = spectral_weight(original, u, v, scale)
    return out


@torch.no_grad()
def fold_spectral_reparam(model: nn.Module) -> nn.Module:
    """Replace every parametrised weight by its effective value (eval-mode ``sigma``), in place:
    the plain ViT that export writes and the official loader reads."""
    was_training = model.training
    model.eval()
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model.train(was_training)


def args_to_state(args: argparse.Namespace) -> dict:
    """The student's ``args`` as plain data a ``weights_only`` checkpoint can hold."""
    return dict(vars(args))


def args_from_state(state: Mapping) -> argparse.Namespace:
    """Back to the official checkpoint's ``argparse.Namespace`` (conversion at the edge)."""
    return argparse.Namespace(**dict(state))
