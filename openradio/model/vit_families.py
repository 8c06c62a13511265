"""The backbone names that released RADIO checkpoints put in ``args.model``.

timm ships ``vit_base_patch16_224`` and ``vit_large_patch16_224`` (RADIOv2.5-B/L); the other
families use names that NVIDIA's code registers itself (families spec §0). Each entry here builds
the same network from timm's own building blocks (``VisionTransformer``, ``Block``, ``Mlp``,
``SwiGLUPacked``, ``LayerScale``) with the name's defaults, then overlays the checkpoint's
``model_kwargs`` the way the official registered functions do (a later key wins). Nothing is put
into timm's global registry.

Key names that differ from timm's (LayerScale ``grandma``, the DINOv2 student's ``w12``/``w3``)
are converted where checkpoints are read (``openradio.formats.official``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional

import timm
import torch
from timm.layers import GELUTanh, Mlp, QuickGELU, SwiGLU, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# ViT-H/16, ViT-g/16, SO400M: widths of the released networks (families spec §0, §4, §7)
_HUGE = dict(patch_size=16, embed_dim=1280, depth=32, num_heads=16)
_GIANT = dict(patch_size=16, embed_dim=1536, depth=40, num_heads=24)
_SO400M = dict(patch_size=16, embed_dim=1152, depth=27, num_heads=16)
# the ``_v2`` names: timm's DINOv2-register layout at patch 16 (LayerScale, 4 unused reg tokens,
# img_size 592 = 518 * 16 / 14, which only shapes the position embedding CPE deletes)
_V2 = dict(init_values=1e-5, reg_tokens=4, no_embed_class=True, img_size=592)


def mlp_with_norm(in_features: int, hidden_features: Optional[int] = None, **kwargs) -> nn.Module:
    """timm's Mlp with a LayerNorm (torch default eps 1e-5) on the hidden activation, after the
    GELU and before fc2: the MLP of ``vit_huge_patch16_224_mlpnorm`` (RADIOv2 / v2.1)."""
    kwargs["norm_layer"] = nn.LayerNorm  # timm's Block passes norm_layer=None here
    return Mlp(in_features, hidden_features, **kwargs)


class ScaledLayerNorm(timm.layers.LayerNorm):
    """LayerNorm whose output is multiplied by a constant (``scaled_ln``: 1/sqrt(block index + 1)).
    The constant is no parameter: state dicts are those of a plain LayerNorm."""

    def __init__(self, dim: int, scale: float, **kwargs):
        super().__init__(dim, **kwargs)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def _apply_scaled_ln(model: VisionTransformer) -> None:
    for i, block in enumerate(model.blocks):
        for attr in ("norm1", "norm2"):
            ln = getattr(block, attr)
            scaled = ScaledLayerNorm(ln.normalized_shape[0], (i + 1) ** -0.5, eps=ln.eps)
            scaled.load_state_dict(ln.state_dict())
            setattr(block, attr, scaled)


@dataclass(frozen=True)
class Family:
    """One official backbone name: how to build it and what it stands for."""

    name: str
    defaults: dict
    released_as: str
    kind: str = "vit"  # 'vit' (timm VisionTransformer) or 'dinov2_student' (sizes read from the weights)
    mlp: Optional[Callable] = None  # timm mlp_layer override
    extra_kwargs: tuple[str, ...] = field(default=())  # keywords this name accepts beyond timm's


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("vit_huge_patch16_224_mlpnorm", _HUGE, "radio_v2, radio_v2.1", mlp=mlp_with_norm),
        Family("vit_huge_patch16_224", _HUGE, "radio_v2.5-h, -h-norm, c-radio_v2-vlm-h, c-radio_v4-h"),
        Family(
            "vit_giant_patch16_224", _GIANT, "c-radio_v2-g (and the c-radio_v3-g backbone)", extra_kwargs=("scaled_ln",)
        ),
        Family(
            "vit_base_patch16_v2_224", dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, **_V2), "c-radio_v3-b"
        ),
        Family(
            "vit_large_patch16_v2_224",
            dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, **_V2),
            "c-radio_v3-l",
        ),
        Family("vit_so400m_patch16_224", dict(_SO400M, mlp_ratio=4304 / 1152), "c-radio_v4-so400m"),
        Family("vit_so400m_v2_patch16_224", dict(_SO400M, mlp_ratio=4320 / 1152), "c-radio_v4-so400m (alternative)"),
        # registered by the official code but used by no release
        Family("vit_tiny_patch14_224", dict(patch_size=14, embed_dim=192, depth=12, num_heads=3), "-"),
        Family("vit_small_patch14_224", dict(patch_size=14, embed_dim=384, depth=12, num_heads=6), "-"),
        Family("vit_base_patch14_224", dict(patch_size=14, embed_dim=768, depth=12, num_heads=12), "-"),
        Family(
            "vit_bigG_patch14_224", dict(patch_size=14, embed_dim=1664, depth=48, num_heads=16, init_values=1e-6), "-"
        ),
        # the DINOv2 architecture (SwiGLU, LayerScale, patch bias, final norm always); the official
        # builder ignores model_kwargs, so sizes come from the state dict
        Family(
            "dino_v2_g_student",
            dict(patch_size=14, embed_dim=1536, depth=40, num_heads=24, mlp="swiglu"),
            "radio_v2.5-g",
            kind="dinov2_student",
        ),
        Family(
            "dino_v2_l_student",
            dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp="gelu"),
            "-",
            kind="dinov2_student",
        ),
    ]
}


# -- layer choices as data ---------------------------------------------------------------------------
# model_kwargs travel in checkpoint args (a .pth.tar's Namespace, the JSON of Hugging Face and
# transformers folders), so layers are named there, not pickled as classes. The names are those
# of transformers' RadioConfig (hidden_act, use_swiglu_ffn, layer_norm_eps); each maps to the
# timm/torch layer computing the same expression in the same order (bit-exact with transformers).
ACT_LAYERS: dict[str, type] = {
    "gelu": nn.GELU,  # erf GELU: transformers' "gelu"
    "gelu_tanh": GELUTanh,  # F.gelu(approximate="tanh"): transformers' "gelu_pytorch_tanh"
    "quick_gelu": QuickGELU,  # x * sigmoid(1.702 x)
    "silu": nn.SiLU,
    "relu": nn.ReLU,
}
MLP_LAYERS = ("mlp", "swiglu")


def swiglu_hidden_features(embed_dim: int, mlp_ratio: float) -> int:
    """Hidden width of a SwiGLU FFN as transformers' RadioConfig (and DINOv2) size it: two thirds
    of int(D * mlp_ratio), rounded up to a multiple of 8."""
    return (int(int(embed_dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _swiglu_layer(hidden: int):
    """timm's SwiGLU (separate gate ``fc1_g`` and value ``fc1_x``, SiLU, then ``fc2``) at a fixed
    hidden width, whatever width and activation the block asks for (SwiGLU always gates with SiLU)."""

    def make(in_features: int, hidden_features: Optional[int] = None, act_layer: Any = None, **kwargs) -> nn.Module:
        return SwiGLU(in_features, hidden, act_layer=nn.SiLU, **kwargs)

    return make


def resolve_layer_kwargs(model_kwargs: dict) -> dict:
    """``model_kwargs`` with layers named as data turned into timm's constructor arguments:

    * ``mlp_layer``: ``"mlp"`` (timm's GELU MLP, the default) or ``"swiglu"`` (timm's ``SwiGLU``;
      ``mlp_hidden_features`` gives its width, default :func:`swiglu_hidden_features`);
    * ``act_layer``: a name of :data:`ACT_LAYERS` (the MLP activation);
    * ``norm_eps``: the eps of every LayerNorm (timm's default 1e-6).
    Classes given in code pass through unchanged."""
    out = dict(model_kwargs)
    mlp = out.pop("mlp_layer", None)
    hidden = out.pop("mlp_hidden_features", None)
    if isinstance(mlp, str):
        if mlp not in MLP_LAYERS:
            raise ValueError(f"unknown mlp_layer {mlp!r} in model_kwargs (known: {', '.join(MLP_LAYERS)})")
        if mlp == "swiglu":
            if not hidden and "embed_dim" not in out:
                raise ValueError("mlp_layer='swiglu' in model_kwargs needs mlp_hidden_features (or embed_dim)")
            out["mlp_layer"] = _swiglu_layer(
                int(hidden) if hidden else swiglu_hidden_features(out["embed_dim"], out.get("mlp_ratio", 4.0))
            )
        elif hidden:
            out["mlp_layer"] = _fixed_width_mlp(int(hidden), packed=False)
    elif mlp is not None:
        out["mlp_layer"] = mlp
    act = out.get("act_layer")
    if isinstance(act, str):
        if act not in ACT_LAYERS:
            raise ValueError(f"unknown act_layer {act!r} in model_kwargs (known: {', '.join(ACT_LAYERS)})")
        out["act_layer"] = ACT_LAYERS[act]
    eps = out.pop("norm_eps", None)
    if eps is not None:
        out["norm_layer"] = partial(timm.layers.LayerNorm, eps=float(eps))
    return out


def is_family(name: str) -> bool:
    return name in FAMILIES


def is_dinov2_student(name: str) -> bool:
    """A DINOv2-architecture student (keys under ``inner.``, SwiGLU ``w12``/``w3``, sizes from the weights)."""
    return name in FAMILIES and FAMILIES[name].kind == "dinov2_student"


def build_family_vit(name: str, model_kwargs: dict, **timm_kwargs: Any) -> VisionTransformer:
    """A timm VisionTransformer for one of the registered ViT names (not the DINOv2 students).

    ``model_kwargs`` overlay the name's defaults; ``timm_kwargs`` are the loader's own arguments
    (in_chans, num_classes, drop rates, weight_init)."""
    fam = FAMILIES[name]
    if fam.kind != "vit":
        raise ValueError(f"{name} is not a plain ViT family")
    kwargs = dict(fam.defaults)
    kwargs.update(timm_kwargs)
    kwargs.update(model_kwargs)
    scaled_ln = bool(kwargs.pop("scaled_ln", False))
    if scaled_ln and "scaled_ln" not in fam.extra_kwargs:
        raise ValueError(f"{name} does not take scaled_ln")
    if fam.mlp is not None:
        kwargs.setdefault("mlp_layer", fam.mlp)
    model = VisionTransformer(**kwargs)
    if scaled_ln:
        _apply_scaled_ln(model)
    return model


# -- the DINOv2 student ------------------------------------------------------------------------------
def dinov2_sizes_from_state(state: dict[str, torch.Tensor], prefix: str = "inner.") -> dict:
    """embed_dim, depth, patch size, MLP type/width and head count of a DINOv2 student from its
    weights. Heads are not in the weights: the released widths use head dim 64 (ViT-g 1536 -> 24
    heads, ViT-L 1024 -> 16); other (test) widths use head dim 16 (families spec §6.5)."""
    try:
        D = state[f"{prefix}norm.weight"].shape[0]
        emb = state[f"{prefix}patch_generator.embedder.weight"]
    except KeyError as e:
        raise ValueError(f"a DINOv2 student checkpoint needs {e.args[0]!r}") from None
    p2 = emb.shape[1] // 3
    p = int(round(p2**0.5))
    if p * p * 3 != emb.shape[1]:
        raise ValueError(f"patch embedder width {emb.shape[1]} is not 3 * p * p")
    depth = 1 + max(
        (int(k[len(prefix) + 7 :].split(".", 1)[0]) for k in state if k.startswith(f"{prefix}blocks.")), default=-1
    )
    if f"{prefix}blocks.0.mlp.w12.weight" in state:
        mlp, hidden = "swiglu", state[f"{prefix}blocks.0.mlp.w3.weight"].shape[1]
    elif f"{prefix}blocks.0.mlp.fc1.weight" in state:
        w = state[f"{prefix}blocks.0.mlp.fc1.weight"]
        # fc1 packs [gate | value] in the SwiGLU layout once converted; w3/fc2 tells the width
        fc2 = state[f"{prefix}blocks.0.mlp.fc2.weight"]
        mlp, hidden = ("swiglu", fc2.shape[1]) if w.shape[0] == 2 * fc2.shape[1] else ("gelu", w.shape[0])
    else:
        raise ValueError("cannot tell the DINOv2 student's MLP from its weights (no mlp.w12 or mlp.fc1)")
    heads = {1536: 24, 1024: 16}.get(D, max(D // 16, 1))
    return dict(embed_dim=D, depth=depth, patch_size=p, num_heads=heads, mlp=mlp, mlp_hidden=hidden)


def _fixed_width_mlp(hidden: int, packed: bool):
    """An mlp_layer that ignores the width the block asks for (int(D * ratio) can be off by one
    for ratios such as 16/3) and uses the checkpoint's."""

    def make(in_features: int, hidden_features: Optional[int] = None, **kwargs) -> nn.Module:
        if packed:
            return SwiGLUPacked(in_features, hidden_features=2 * hidden, **kwargs)
        return Mlp(in_features, hidden, **kwargs)

    return make


class _UnusedConditioner(nn.Module):
    """The official DINOv2 wrapper stores an ImageNet conditioner it never uses
    (``base_model.input_conditioner.norm_mean/std``): kept so checkpoints round-trip."""

    def __init__(self):
        super().__init__()
        self.register_buffer("norm_mean", torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1))
        self.register_buffer("norm_std", torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))


class DinoV2Student(nn.Module):
    """The DINOv2-architecture student of RADIOv2.5-g, under the attribute ``inner`` as in the
    official checkpoints. The final norm is always applied, and the token bookkeeping is the
    DINOv2 constructor's: 1 CLS token and 4 registers, so the summary is token 0 and features
    start at token 5 whatever the patch generator's prefix (families spec §6.3)."""

    DINOV2_REGISTERS = 4

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        mlp: str,
        mlp_hidden: int,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        weight_init: str = "skip",
    ):
        super().__init__()
        self.inner = VisionTransformer(
            img_size=518,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            init_values=1.0,
            reg_tokens=self.DINOV2_REGISTERS,
            no_embed_class=True,
            mlp_layer=_fixed_width_mlp(mlp_hidden, mlp == "swiglu"),
            act_layer=nn.SiLU if mlp == "swiglu" else nn.GELU,
            drop_path_rate=drop_path_rate or 0.0,
            weight_init=weight_init,
        )
        self.inner.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # unused at inference
        self.input_conditioner = _UnusedConditioner()

    # the attributes RADIOModel reads from a backbone
    @property
    def blocks(self) -> nn.Sequential:
        return self.inner.blocks

    @property
    def norm(self) -> nn.Module:
        return self.inner.norm

    @property
    def patch_generator(self) -> nn.Module:
        return self.inner.patch_generator

    @property
    def embed_dim(self) -> int:
        return self.inner.embed_dim

    @property
    def patch_size(self) -> int:
        return self.inner.patch_size

    num_cls_tokens = 1
    num_registers = DINOV2_REGISTERS
    num_prefix_tokens = 1 + DINOV2_REGISTERS
    summary_is_first_token = True  # every summary (backbone and adaptor heads) reads token 0


def build_dinov2_student(
    name: str, sizes: dict, *, in_chans: int = 3, drop_path_rate: float = 0.0, weight_init: str = "skip"
) -> DinoV2Student:
    fam = FAMILIES[name]
    if fam.kind != "dinov2_student":
        raise ValueError(f"{name} is not a DINOv2 student")
    s = dict(fam.defaults)
    s.update(sizes)
    if "mlp_hidden" not in s:  # the DINOv2 recipe's widths
        h0 = int(s["embed_dim"] * 4.0)
        s["mlp_hidden"] = (int(h0 * 2 / 3) + 7) // 8 * 8 if s["mlp"] == "swiglu" else h0
    return DinoV2Student(
        s["embed_dim"],
        s["depth"],
        s["num_heads"],
        s["patch_size"],
        s["mlp"],
        s["mlp_hidden"],
        in_chans=in_chans,
        drop_path_rate=drop_path_rate,
        weight_init=weight_init,
    )


def describe() -> list[dict]:
    """One row per name, for documentation and ``openradio versions``."""
    rows = []
    for f in FAMILIES.values():
        d = f.defaults
        rows.append(
            {
                "name": f.name,
                "released_as": f.released_as,
                "patch": d["patch_size"],
                "embed_dim": d["embed_dim"],
                "depth": d["depth"],
                "heads": d["num_heads"],
                "kind": f.kind,
            }
        )
    return rows
