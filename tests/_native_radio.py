"""Shared by tests/export/test_native_video.py and test_native_swiglu.py: random transformers
``RadioModel``s of any ``RadioConfig``, and exact output comparisons with openradio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

import openradio
from openradio.verify.testing import make_tiny_checkpoint

P = 4  # patch size of the tiny models
MAX_IMG = 64  # position grid 16 x 16
SIZES = [(64, 64), (24, 40), (32, 16)]  # the full grid (no resampling), non-square up and down


@dataclass(frozen=True)
class Case:
    """One RadioConfig: SwiGLU x layer scale x temporal patch size x registers x CLS tokens."""

    swiglu: bool = False
    layerscale: bool = False
    temporal: Optional[int] = None  # video_temporal_patch_size (None: images only; transformers refuses 1)
    registers: int = 3
    cls: int = 2
    mlp_ratio: float = 2.5
    hidden_act: str = "gelu"

    @property
    def summary_idxs(self) -> list[int]:
        return {0: [], 1: [0], 2: [1, 0]}.get(self.cls, [0, self.cls - 2, self.cls - 1])

    def id(self) -> str:
        return (
            f"{'swiglu' if self.swiglu else 'mlp'}-{'ls' if self.layerscale else 'nols'}-t{self.temporal or 1}"
            f"-r{self.registers}-c{self.cls}"
            + ("" if self.hidden_act == "gelu" else f"-{self.hidden_act}")
            + ("" if self.mlp_ratio == 2.5 else f"-ratio{self.mlp_ratio:.3g}")
        )

    def hf_config(self, transformers):
        return transformers.RadioConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=self.mlp_ratio,
            patch_size=P,
            max_img_size=MAX_IMG,
            num_cls_tokens=self.cls,
            num_registers=self.registers,
            summary_idxs=self.summary_idxs,
            use_swiglu_ffn=self.swiglu,
            video_temporal_patch_size=self.temporal,
            layerscale_value=0.5 if self.layerscale else 1.0,
            hidden_act=self.hidden_act,
        )


def random_hf_model(transformers, case: Case, seed: int = 0):
    """transformers' own RadioModel for ``case`` with every tensor random (it starts biases at
    zero and layer scales at ``layerscale_value``: both would hide mistakes)."""
    torch.manual_seed(seed)
    hf = transformers.RadioModel(case.hf_config(transformers)).eval()
    with torch.no_grad():
        for name, t in hf.named_parameters():
            if "layer_scale" in name:
                t.copy_(torch.rand_like(t) + 0.5 if case.layerscale else torch.ones_like(t))
            else:
                t.copy_(torch.randn_like(t) * 0.1)
    return hf


def tiny_openradio_checkpoint(path, case: Case, seed: int = 0):
    """An openradio .pth.tar with ``case``'s architecture (built by openradio, not transformers)."""
    kwargs = dict(patch_size=P, mlp_ratio=case.mlp_ratio)
    if case.swiglu:
        kwargs["mlp_layer"] = "swiglu"
    if case.layerscale:
        kwargs["init_values"] = 0.5
    if case.hidden_act != "gelu":  # openradio names timm's layers (transformers' gelu_pytorch_tanh: gelu_tanh)
        kwargs["act_layer"] = {"gelu_pytorch_tanh": "gelu_tanh"}.get(case.hidden_act, case.hidden_act)
    teachers = [dict(name=f"t{i}", type="generic", use_summary=i in case.summary_idxs) for i in range(case.cls)]
    extra = {"video_temporal_patch_size": case.temporal} if case.temporal else {}
    return make_tiny_checkpoint(
        path,
        teachers=teachers,
        head_dims={t["name"]: (8, 8) for t in teachers},
        embed_dim=32,
        depth=2,
        num_heads=2,
        cpe_max_size=MAX_IMG,
        register_multiple=None,
        cpe_num_registers=case.registers,
        model_kwargs=kwargs,
        seed=seed,
        **extra,
    )


def packed_patches(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' packed layout: every image's (c, dy, dx)-ordered patches, concatenated."""
    rows, grid = [], []
    for im in images:
        c, h, w = im.shape[-3:]
        rows.append(im.reshape(c, h // P, P, w // P, P).permute(1, 3, 0, 2, 4).reshape(-1, c * P * P))
        grid.append([h // P, w // P])
    return torch.cat(rows), torch.tensor(grid)


def hf_on_clips(hf, clips: torch.Tensor):
    """transformers on (B, T, 3, H, W) clips in [0, 1]: its conditioner handles 3 channels, so its
    video path takes clips normalised frame by frame (by that conditioner) with the model's own
    conditioner detached, as transformers' make_preprocessor_external does."""
    B, T = clips.shape[:2]
    conditioner = hf.input_conditioner
    frames = conditioner(clips.flatten(0, 1))
    hf.input_conditioner = torch.nn.Identity()
    try:
        return hf(pixel_values=frames.reshape(B, T * frames.shape[1], *frames.shape[-2:]))
    finally:
        hf.input_conditioner = conditioner


def assert_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert torch.equal(a, b), f"{what}: max |diff| {(a.float() - b.float()).abs().max().item():.3g}"


@torch.no_grad()
def assert_same_outputs(hf, model, case: Case, seed: int = 1) -> None:
    """Images, packed images and (with a video projection) clips: transformers == openradio, bit for bit."""
    g = torch.Generator().manual_seed(seed)
    for h, w in SIZES:
        x = torch.rand(2, 3, h, w, generator=g)
        a, b = hf(pixel_values=x), model(x)
        assert_equal(a.summary, b.summary, f"summary {h}x{w}")
        assert_equal(a.features, b.features, f"features {h}x{w}")
    images = [torch.rand(3, h, w, generator=g) for h, w in SIZES]
    patches, grid = packed_patches(images)
    a = hf(pixel_values=patches, image_grid_hw=grid)
    outs = model.forward_images(images)
    assert_equal(a.summary, torch.cat([o.summary for o in outs]), "packed summary")
    assert_equal(a.features, torch.cat([o.features[0] for o in outs]), "packed features")
    if not case.temporal:
        assert model.temporal_patch_size is None
        return
    assert model.temporal_patch_size == case.temporal
    for h, w in SIZES[:2]:
        clips = torch.rand(2, case.temporal, 3, h, w, generator=g)
        a = hf_on_clips(hf, clips)
        for b in (model(clips), model.forward_video(clips.flatten(1, 2))):
            assert_equal(a.summary, b.summary, f"clip summary {h}x{w}")
            assert_equal(a.features, b.features, f"clip features {h}x{w}")
    # clips in forward_images (packed with an image): each as it is alone, up to float32 noise (a
    # pack's matrices have more rows than one image's, and BLAS may then sum in another order;
    # tests/model/test_packed.py holds images to the same bound)
    clip = torch.rand(case.temporal, 3, 24, 40, generator=g)
    outs = model.forward_images([clip, images[2]])
    for out, alone in ((outs[0], model(clip[None])), (outs[1], model(images[2][None]))):
        assert out.features.shape == alone.features.shape
        assert (out.features - alone.features).abs().max() <= 1e-6
        assert out.summary.shape == alone.summary.shape
        assert not out.summary.numel() or (out.summary - alone.summary).abs().max() <= 1e-6


def load(folder, **kw):
    return openradio.radio_model(str(folder), **kw)
