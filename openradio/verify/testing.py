"""Small random checkpoints in the official format, for tests, examples and the offline demo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from openradio.formats.official import make_args, official_state_dict, radio_config, save_checkpoint
from openradio.model.factory import create_radio

# name, type, model, pretrained, input size, (summary dim, feature dim), extra
TINY_TEACHERS = [
    dict(name="clip", type="open_clip", model="ViT-H-14-378-quickgelu", pretrained="dfn5b", input_size=378),
    dict(name="siglip", type="open_clip", model="ViT-SO400M-14-SigLIP-384", pretrained="webli", input_size=378),
    dict(name="dino_v2", type="dino_v2", model="dinov2_vitg14_reg", input_size=378),
    dict(name="sam", type="sam", model="vit-h", input_size=1024, use_summary=False),
]
TINY_HEAD_DIMS = {"clip": (32, 40), "siglip": (36, 36), "dino_v2": (48, 48), "sam": (16, 16)}


def make_tiny_checkpoint(
    path: str | Path,
    *,
    teachers: Optional[list[dict]] = None,
    head_dims: Optional[dict] = None,
    embed_dim: int = 64,
    depth: int = 4,
    num_heads: int = 2,
    head_hidden: int = 64,
    head_inner: int = 1,
    cpe_max_size: int = 512,
    register_multiple: int = 8,
    seed: int = 0,
    heads_by_name: bool = True,
    with_ema: bool = False,
    dtype: torch.dtype = torch.float32,
    arch: str = "vit_tiny_patch16_224",
    model_kwargs: Optional[dict] = None,
    **arg_overrides,
) -> Path:
    """Write a random checkpoint in the official format that ``openradio.radio_model(path)``
    loads: RADIOv2.5-style by default; ``arch`` may name any backbone of
    ``openradio.model.vit_families`` (``model_kwargs`` then add to the sizes given here)."""
    teachers = [dict(t) for t in (teachers or TINY_TEACHERS)]
    head_dims = dict(head_dims or TINY_HEAD_DIMS)
    kwargs = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    kwargs.update(model_kwargs or {})
    args = make_args(
        arch,
        teachers=teachers,
        model_kwargs=kwargs,
        cpe_max_size=cpe_max_size,
        register_multiple=register_multiple,
        mlp_hidden_size=head_hidden,
        mlp_num_inner=head_inner,
        dtype=dtype,
        **arg_overrides,
    )
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        radio = create_radio(radio_config(args), head_dims, args=args)
        # timm zero-initialises biases and some heads; give every tensor some signal so tests
        # can tell layers apart
        with torch.no_grad():
            for p in radio.parameters():
                if p.ndim == 1 and torch.count_nonzero(p) == 0:
                    p.normal_(0, 0.02)
        state = official_state_dict(radio, heads_by_name=heads_by_name)
        ema = None
        if with_ema:
            ema = {
                k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() and "input_conditioner" not in k else v
                for k, v in state.items()
            }
    finally:
        torch.random.set_rng_state(gen_state)
    return save_checkpoint(path, args, state, state_dict_ema=ema)
