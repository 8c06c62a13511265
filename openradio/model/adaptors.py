"""Teacher adaptors: MLP heads mapping the student's CLS token / patch tokens to a teacher's space."""

from __future__ import annotations

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn


def pixel_shuffle_tokens(x: torch.Tensor, u: int, images: torch.Tensor | None, patch_size: int | None):
    """(B, h*w, u*u*C) laid out (u1 u2 c) -> (B, (h*u)*(w*u), C): each token's channels become a
    u x u block of a finer grid."""
    if u == 1:
        return x
    if images is None or patch_size is None:
        raise ValueError("an upsampling head needs the images and patch size to know the token grid")
    h, w = images.shape[-2] // patch_size, images.shape[-1] // patch_size
    return rearrange(x, "b (h w) (u1 u2 c) -> b (h u1 w u2) c", h=h, w=w, u1=u, u2=u)


class MLP2(nn.Module):
    """'v2' head: fc1 -> N residual [LN, GELU, Linear] blocks -> LN, GELU, Linear.

    LayerNorms use torch's default eps 1e-5 (not the backbone's 1e-6). With ``upsample_factor``
    u > 1 the output has C*u^2 channels laid out (u1 u2 c) and is pixel-shuffled onto a u x
    finer token grid.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        num_inner: int = 0,
        pre_norm: bool = False,
        upsample_factor: int = 1,
    ):
        super().__init__()
        self.pre_norm = nn.Sequential(nn.LayerNorm(input_size), nn.GELU()) if pre_norm else nn.Identity()
        self.upsample_factor = upsample_factor
        self._real_output_dim = output_size
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
            for _ in range(num_inner)
        )
        self.final = nn.Sequential(
            nn.LayerNorm(hidden_size), nn.GELU(), nn.Linear(hidden_size, output_size * upsample_factor**2)
        )

    @property
    def output_dim(self) -> int:
        return self._real_output_dim

    def forward(self, x: torch.Tensor, images: torch.Tensor | None = None, patch_size: int | None = None):
        x = self.pre_norm(x)
        x = self.fc1(x)
        for block in self.blocks:
            x = x + block(x)
        x = self.final(x)
        return pixel_shuffle_tokens(x, self.upsample_factor, images, patch_size)


class MLP1(nn.Module):
    """'v1' head: fc1 -> LN -> ReLU -> N x [Linear, LN, ReLU] -> fc2."""

    def __init__(
        self, input_size: int, hidden_size: int, output_size: int, num_inner: int = 0, upsample_factor: int = 1
    ):
        super().__init__()
        self.upsample_factor = upsample_factor
        self._real_output_dim = output_size
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.relu = nn.ReLU()
        self.inner = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.LayerNorm(hidden_size), nn.ReLU())
            for _ in range(num_inner)
        )
        self.fc2 = nn.Linear(hidden_size, output_size * upsample_factor**2)

    @property
    def output_dim(self) -> int:
        return self._real_output_dim

    def forward(self, x: torch.Tensor, images: torch.Tensor | None = None, patch_size: int | None = None):
        x = self.relu(self.norm(self.fc1(x)))
        for layer in self.inner:
            x = layer(x)
        x = self.fc2(x)
        return pixel_shuffle_tokens(x, self.upsample_factor, images, patch_size)


class AttnFDHead(nn.Module):
    """'attn' feature head (C-RADIOv4): two timm transformer blocks over the patch tokens, then an
    MLP2 without inner blocks (families spec §8.3).

    The blocks are timm ``Block``s with timm's defaults, as in the official head: 16 heads, MLP
    ratio 4, qkv without bias, LayerScale (``ls1.gamma``), timm's LayerNorm (eps 1e-6 with
    timm >= 1.0.16). Prefix tokens are not included and attention is global over all patches
    (the head runs after ViTDet has restored raster order). With ``upsample_factor`` u > 1 the
    inner MLP2 pixel-shuffles onto a u x finer grid (the official head crashes there instead).
    """

    NUM_HEADS = 16

    def __init__(
        self, input_size: int, hidden_size: int, output_size: int, num_blocks: int = 2, upsample_factor: int = 1
    ):
        super().__init__()
        if input_size % self.NUM_HEADS:
            raise ValueError(f"an 'attn' feature head needs a width divisible by {self.NUM_HEADS}, got {input_size}")
        self.blocks = nn.Sequential(
            *[
                Block(input_size, num_heads=self.NUM_HEADS, mlp_ratio=4.0, qkv_bias=False, init_values=1e-5)
                for _ in range(num_blocks)
            ]
        )
        self.mlp = MLP2(input_size, hidden_size, output_size, num_inner=0, upsample_factor=upsample_factor)
        self.upsample_factor = upsample_factor

    @property
    def output_dim(self) -> int:
        return self.mlp.output_dim

    def forward(self, x: torch.Tensor, images: torch.Tensor | None = None, patch_size: int | None = None):
        return self.mlp(self.blocks(x), images=images, patch_size=patch_size)


MLP_VERSIONS = {"v1": MLP1, "v2": MLP2}
HEAD_VERSIONS = ("v1", "v2", "attn")


def create_mlp(
    version: str, input_size: int, hidden_size: int, output_size: int, num_inner: int = 0, upsample_factor: int = 1
) -> nn.Module:
    """One adaptor head. ``'attn'`` (feature heads only) takes ``num_inner`` as its block count."""
    if version == "attn":
        return AttnFDHead(
            input_size, hidden_size, output_size, num_blocks=num_inner or 2, upsample_factor=upsample_factor
        )
    try:
        cls = MLP_VERSIONS[version]
    except KeyError:
        raise ValueError(f"Unsupported adaptor MLP version {version!r}; supported: {list(HEAD_VERSIONS)}") from None
    return cls(input_size, hidden_size, output_size, num_inner, upsample_factor=upsample_factor)


def head_versions(teacher: dict, mlp_version: str | None, spatial_mlp_version: str | None) -> tuple[str, str]:
    """(summary head version, feature head version) of one teacher (families spec §8.0).

    Summary: the teacher's ``mlp_version``, else the run's. Features: the teacher's
    ``spatial_mlp_version``, else the run's ``spatial_mlp_version``, else the run's
    ``mlp_version`` (a teacher-level ``mlp_version`` does not reach the feature head)."""
    base = mlp_version or "v2"
    summary = teacher.get("mlp_version") or base
    feature = teacher.get("spatial_mlp_version") or spatial_mlp_version or base
    if summary == "attn":
        raise ValueError(f"teacher {teacher.get('name')!r}: a summary head cannot be 'attn'")
    return summary, feature


def mlp_dims_from_state(version: str, state: dict[str, torch.Tensor], upsample_factor: int = 1):
    """(input, hidden, output, num_inner) of a head from its weights (prefix already stripped).
    For an 'attn' head ``num_inner`` is its number of transformer blocks."""
    if version == "attn":
        try:
            hidden, inp = state["mlp.fc1.weight"].shape
            out = state["mlp.final.2.weight"].shape[0]
        except KeyError as e:
            raise ValueError(
                f"'attn' feature head weights are missing {e.args[0]!r}; keys present: {sorted(state)[:8]}..."
            ) from None
        n = 0
        while f"blocks.{n}.norm1.weight" in state:
            n += 1
        if out % (upsample_factor**2):
            raise ValueError(f"head output {out} is not divisible by upsample_factor^2={upsample_factor**2}")
        return inp, hidden, out // upsample_factor**2, n
    try:
        hidden, inp = state["fc1.weight"].shape
        if version == "v2":
            out = state["final.2.weight"].shape[0]
            inner_key = "blocks.{}.0.weight"
        else:
            out = state["fc2.weight"].shape[0]
            inner_key = "inner.{}.0.weight"
    except KeyError as e:
        raise ValueError(
            f"adaptor head weights are missing {e.args[0]!r} (MLP {version}); keys present: {sorted(state)[:8]}..."
        ) from None
    n = 0
    while inner_key.format(n) in state:
        n += 1
    if out % (upsample_factor**2):
        raise ValueError(f"head output {out} is not divisible by upsample_factor^2={upsample_factor**2}")
    return inp, hidden, out // upsample_factor**2, n


class GenericAdaptor(nn.Module):
    """A teacher's summary head and feature head, plus which prefix token feeds the summary head."""

    def __init__(
        self,
        name: str,
        head_mlp: nn.Module,
        feat_mlp: nn.Module,
        head_idx: int,
        upsample_factor: int = 1,
        teacher_conf: dict | None = None,
    ):
        super().__init__()
        self.name = name
        self.head_mlp = head_mlp
        self.feat_mlp = feat_mlp
        self.head_idx = head_idx
        self.upsample_factor = upsample_factor
        self.teacher_conf = dict(teacher_conf or {})

    def forward_summary(self, summary: torch.Tensor) -> torch.Tensor:
        return self.head_mlp(summary)

    def forward_features(self, features: torch.Tensor, images: torch.Tensor, patch_size: int) -> torch.Tensor:
        return self.feat_mlp(features, images=images, patch_size=patch_size)


def make_adaptor(
    cfg, name: str, embed_dim: int, summary: tuple[int, int, int], features: tuple[int, int, int]
) -> GenericAdaptor:
    """The one adaptor factory (new students and loaded checkpoints alike).

    ``cfg`` is the model's :class:`~openradio.model.config.RadioConfig`; ``summary`` and
    ``features`` are (hidden width, output width, inner blocks) of the two heads (for an 'attn'
    feature head: its number of transformer blocks). Which head class, the upsampling factor and
    the prefix token of the summary head come from the teacher's entry in ``cfg``."""
    _, teacher = cfg.find_teacher(name)
    u = int(teacher.get("fd_upsample_factor") or 1)
    s_version, f_version = head_versions(teacher, cfg.mlp_version, cfg.spatial_mlp_version)
    head = create_mlp(s_version, embed_dim, summary[0], summary[1], summary[2])
    feat = create_mlp(f_version, embed_dim, features[0], features[1], features[2], upsample_factor=u)
    return GenericAdaptor(name, head, feat, head_idx=cfg.head_idx(name), upsample_factor=u, teacher_conf=teacher)
