"""Open-vocabulary semantic segmentation with RADIO's language-aligned adaptors (clip, siglip).

Mapping (RADSeg's and NARadio's): the adaptor's **summary** head -- the MLP trained to map the
CLS token into the teacher's image-embedding space -- is applied to every patch token (the
backbone's output after the final norm, before the feature normaliser, i.e. the tokens the CLS
token is taken from), giving one text-comparable embedding per patch. Each patch is scored by
the cosine with every prompt's text embedding (the mean of the normalised embeddings of the
prompt in each ImageNet template, re-normalised: the zero-shot classifier).

Attention (``attention=``):

* ``'scra'``: for this call the last block's attention becomes a self-correlating one: instead of
  queries attending to keys by ``q . k``, the attention map is the mean of two self-similarity
  maps, ``A = (softmax(s * Q Q^T) + softmax(s * K K^T)) / 2`` (``s`` the block's own scale
  ``1/sqrt(head_dim)``, per head, prefix tokens included), applied to the values ``V`` and the
  block's output projection; the block's residual connections, LayerScale and MLP are kept.
  This is the q-q + k-k "correlative self-attention" of SCLIP, the self-correlation RADSeg's SCRA
  and NACLIP build on; RADSeg's recursion, its global aggregation (SCGA) and SAM refinement and
  NACLIP's neighbourhood kernel are not included.
* ``'plain'``: the model as it is (the summary head on the ordinary patch tokens), for comparison.

The model is left as it was after every call (the attention is swapped inside a ``try/finally``).
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from openradio.atomicio import atomic_path, write_text
from openradio.dense.backbone import call_window, resolution_step
from openradio.eval.zero_shot import build_classifier, get_templates
from openradio.extras import require
from openradio.inputs.imageio import image_to_tensor, load_image, tensor_to_uint8
from openradio.model.radio import LOADED
from openradio.runtime import autocast, default_resolution

__all__ = [
    "segment",
    "SegmentationResult",
    "SelfCorrelatingAttention",
    "self_correlating_last_block",
    "dense_text_features",
    "prompt_embeddings",
    "write_segmentation",
    "ATTENTIONS",
    "label_palette",
]

ATTENTIONS = ("scra", "plain")


class SelfCorrelatingAttention(nn.Module):
    """A timm ``Attention`` with ``q . k`` replaced by the mean of ``q . q`` and ``k . k``
    attention (same weights; see the module docstring)."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        for name in ("qkv", "num_heads", "proj"):
            if not hasattr(attn, name):
                raise ValueError(
                    f"attention={type(attn).__name__} has no {name!r}: the self-correlating attention "
                    "needs timm-style blocks (qkv, proj); use attention='plain'"
                )
        self.inner = attn

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False, **kwargs
    ) -> torch.Tensor:
        a = self.inner
        B, N, C = x.shape
        heads = a.num_heads
        qkv = a.qkv(x).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = getattr(a, "q_norm", nn.Identity())(q)
        k = getattr(a, "k_norm", nn.Identity())(k)
        out = 0.5 * (
            F.scaled_dot_product_attention(q, q, v, attn_mask=attn_mask)
            + F.scaled_dot_product_attention(k, k, v, attn_mask=attn_mask)
        )
        out = out.transpose(1, 2).reshape(B, N, -1)
        out = getattr(a, "norm", nn.Identity())(out)
        return getattr(a, "proj_drop", nn.Identity())(a.proj(out))


@contextmanager
def self_correlating_last_block(model):
    """Within the ``with``, ``model``'s last block uses :class:`SelfCorrelatingAttention`."""
    block = model.blocks[-1]
    if not hasattr(block, "attn"):
        raise ValueError(f"the last block ({type(block).__name__}) has no .attn; use attention='plain'")
    original = block.attn
    block.attn = SelfCorrelatingAttention(original)
    try:
        yield model
    finally:
        block.attn = original


def _adaptor(model, name: str):
    adaptors = getattr(model, "adaptors", {})
    if name not in adaptors:
        raise ValueError(
            f"the model has no {name!r} adaptor (loaded: {sorted(adaptors.keys()) or 'none'}); "
            f"load it with openradio.radio_model(..., adaptor_names=[{name!r}])"
        )
    return adaptors[name]


def dense_text_features(
    model, x: torch.Tensor, adaptor: str = "clip", attention: str = "scra", vitdet_window=LOADED
) -> torch.Tensor:
    """(B, D, h, w) L2-normalised per-patch embeddings in ``adaptor``'s text space for images
    ``x`` (B, 3, H, W) in [0, 1] at a supported resolution."""
    if attention not in ATTENTIONS:
        raise ValueError(f"unknown attention {attention!r}; use one of {list(ATTENTIONS)}")
    head = _adaptor(model, adaptor)
    window = call_window(model, vitdet_window)
    step = resolution_step(model, vitdet_window)
    if x.ndim != 4 or x.shape[-2] % step or x.shape[-1] % step:
        raise ValueError(
            f"images must be (B, 3, H, W) with H, W multiples of {step} (patch size x ViTDet window); got "
            f"{tuple(x.shape)}: resize to model.get_nearest_supported_resolution(H, W) first"
        )
    p = model.patch_size
    xc = model.input_conditioner(x)
    if attention == "scra":
        with self_correlating_last_block(model):
            tokens = model.forward_tokens(xc, window)
    else:
        tokens = model.forward_tokens(xc, window)
    patches = tokens[:, model.num_prefix_tokens :].float()
    emb = F.normalize(head.forward_summary(patches), dim=-1)
    B = x.shape[0]
    return emb.reshape(B, x.shape[-2] // p, x.shape[-1] // p, -1).permute(0, 3, 1, 2)


def prompt_embeddings(
    model, prompts: Sequence[str], adaptor: str = "clip", templates="openai", progress: bool = False
) -> torch.Tensor:
    """(K, D) normalised text embedding of each prompt: mean over ``templates`` (open_clip's 80
    OpenAI ImageNet templates by default) of the normalised embeddings, re-normalised."""
    head = _adaptor(model, adaptor)
    if not hasattr(head, "encode_text"):
        raise ValueError(
            f"the {adaptor!r} adaptor has no text tower; load the model with text_towers='lazy' "
            "(the default) or attach one (openradio.model.text.attach_text_tower)"
        )
    return build_classifier(
        head.tokenizer, head.encode_text, list(prompts), get_templates(templates), progress=progress
    ).T.contiguous()


@dataclass
class SegmentationResult:
    labels: torch.Tensor  # (H, W) int64: 0 = background (below threshold), k + 1 = prompts[k]
    scores: torch.Tensor  # (K, H, W) float32 cosine similarity of each pixel with each prompt
    prompts: list[str]
    threshold: Optional[float] = None
    settings: dict = field(default_factory=dict)

    def class_scores(self) -> dict:
        """Per prompt: share of pixels it labels, mean and max cosine over the image."""
        n = self.labels.numel()
        out = {}
        for k, name in enumerate(self.prompts):
            s = self.scores[k]
            out[name] = {
                "label": k + 1,
                "pixel_fraction": float((self.labels == k + 1).sum()) / n,
                "mean_score": float(s.mean()),
                "max_score": float(s.max()),
            }
        out["background"] = {"label": 0, "pixel_fraction": float((self.labels == 0).sum()) / n}
        return out


def _as_image(image) -> torch.Tensor:
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor in [0, 1], got shape {tuple(image.shape)}")
        return image.float()
    return image_to_tensor(image)


def _windows(length: int, window: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with windows of ``window``, the last one flush with the end."""
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


@torch.no_grad()
def segment(
    model,
    image,
    prompts: Union[str, Sequence[str]],
    *,
    adaptor: str = "clip",
    attention: str = "scra",
    resolution: Optional[int] = None,
    window: Optional[int] = None,
    stride: Optional[int] = None,
    threshold: Optional[float] = None,
    templates="openai",
    text_embeddings: Optional[torch.Tensor] = None,
    vitdet_window=LOADED,
    batch_size: int = 8,
    amp: bool = False,
) -> SegmentationResult:
    """Label every pixel of ``image`` with the best-matching prompt.

    Args:
        model: a RADIO model with the ``adaptor`` loaded (``radio_model(v, adaptor_names=['clip'])``).
        image: (3, H, W) tensor in [0, 1], PIL image, array or file path.
        prompts: class names (a list, or one comma-separated string).
        attention: 'scra' (self-correlating last block) or 'plain' (see the module docstring).
        resolution: the short side the image is resized to before inference (rounded to the
            model's step; default: ``openradio.runtime.default_resolution``, the model's preferred
            side, else 512).
        window, stride: sliding-window inference with ``window`` x ``window`` px crops every
            ``stride`` px (default 2/3 of the window) of the resized image; the scores of
            overlapping windows are averaged. Without ``window`` the whole image runs at once.
        threshold: pixels whose best cosine is below it are background (label 0).
        templates: prompt templates ('openai', 'simple', 'base' or a list with '{}').
        text_embeddings: (K, D) prompt embeddings to use instead of the text tower's.
    """
    if isinstance(prompts, str):
        prompts = [p.strip() for p in prompts.split(",") if p.strip()]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts: pass class names, e.g. ['cat', 'sofa', 'floor']")
    img = _as_image(image)
    H, W = img.shape[-2:]
    device = next(model.parameters()).device
    text = (
        prompt_embeddings(model, prompts, adaptor, templates)
        if text_embeddings is None
        else F.normalize(text_embeddings.float(), dim=-1)
    )
    if text.shape[0] != len(prompts):
        raise ValueError(f"{text.shape[0]} text embeddings for {len(prompts)} prompts")
    text = text.to(device)
    step = resolution_step(model, vitdet_window)
    if resolution is None:
        resolution = default_resolution(model)
    scale = resolution / min(H, W)
    rh, rw = model.get_nearest_supported_resolution(round(H * scale), round(W * scale), vitdet_window=vitdet_window)
    x = F.interpolate(img[None], size=(rh, rw), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    x = x.to(device)

    def score(batch: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            f = dense_text_features(model, batch, adaptor, attention, vitdet_window)
        return torch.einsum("bdhw,kd->bkhw", f.float(), text)

    if window is None:
        sim = F.interpolate(score(x), size=(rh, rw), mode="bilinear", align_corners=False)
    else:
        if window % step:
            raise ValueError(f"window {window} must be a multiple of the model's step {step}")
        stride = stride or max(step, (window * 2 // 3) // step * step)
        if stride <= 0 or stride > window:
            raise ValueError(f"stride {stride} must be in (0, window={window}] so the windows cover the image")
        ph, pw = max(window - rh, 0), max(window - rw, 0)
        xp = F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x
        PH, PW = xp.shape[-2:]
        boxes = [(t, c0) for t in _windows(PH, window, stride) for c0 in _windows(PW, window, stride)]
        sim = torch.zeros(1, len(prompts), PH, PW, device=device)
        count = torch.zeros(1, 1, PH, PW, device=device)
        for i in range(0, len(boxes), batch_size):
            chunk = boxes[i : i + batch_size]
            crops = torch.cat([xp[..., t : t + window, c0 : c0 + window] for t, c0 in chunk])
            s = F.interpolate(score(crops), size=(window, window), mode="bilinear", align_corners=False)
            for (t, c0), si in zip(chunk, s):
                sim[..., t : t + window, c0 : c0 + window] += si
                count[..., t : t + window, c0 : c0 + window] += 1
        sim = (sim / count)[..., :rh, :rw]
    sim = F.interpolate(sim, size=(H, W), mode="bilinear", align_corners=False)[0].cpu()
    best, idx = sim.max(0)
    labels = idx + 1
    if threshold is not None:
        labels[best < threshold] = 0
    settings = dict(
        adaptor=adaptor,
        attention=attention,
        resolution=[rh, rw],
        window=window,
        stride=stride,
        threshold=threshold,
        templates=templates if isinstance(templates, str) else "custom",
    )
    return SegmentationResult(labels, sim, prompts, threshold, settings)


def label_palette(n: int) -> np.ndarray:
    """(n + 1, 3) uint8 colours: black for background (0), then matplotlib's tab20."""
    cmap = require("matplotlib", "label colours").colormaps["tab20"]
    cols = [(0, 0, 0)] + [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(n)]
    return np.array(cols, dtype=np.uint8)


def write_segmentation(
    result: SegmentationResult, image, out_dir: str | os.PathLike, stem: str, alpha: float = 0.5
) -> dict[str, Path]:
    """Writes ``STEM_labels.png`` (palette PNG: pixel value = label), ``STEM_overlay.png``
    (the image under the colour-coded labels, with a legend) and ``STEM_scores.json``."""
    matplotlib = require("matplotlib", "the segmentation overlay")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # optional: openradio[viz], checked by require() above
    from matplotlib.patches import Patch  # optional: openradio[viz], checked by require() above

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pal = label_palette(len(result.prompts))
    labels = result.labels.numpy().astype(np.uint8 if len(result.prompts) < 256 else np.int32)
    paths = {
        "labels": out / f"{stem}_labels.png",
        "overlay": out / f"{stem}_overlay.png",
        "scores": out / f"{stem}_scores.json",
    }
    lab = Image.fromarray(labels.astype(np.uint8), mode="P")
    lab.putpalette(pal.flatten().tolist() + [0] * (768 - pal.size))
    with atomic_path(paths["labels"]) as tmp:
        lab.save(tmp, format="PNG")
    rgb = tensor_to_uint8(_as_image(image)).astype(np.float32)
    colour = pal[result.labels.numpy()].astype(np.float32)
    blend = ((1 - alpha) * rgb + alpha * colour).clip(0, 255).astype(np.uint8)
    h, w = blend.shape[:2]
    zoom = max(1.0, 300 / w)  # small images are shown at least 300 px wide
    img_w, img_h, legend_w = w * zoom / 100, h * zoom / 100, 1.6
    fig = plt.figure(figsize=(img_w + legend_w, img_h), dpi=100)
    ax = fig.add_axes([0, 0, img_w / (img_w + legend_w), 1])
    ax.imshow(blend)
    ax.axis("off")
    present = [k for k in range(len(result.prompts) + 1) if (result.labels == k).any()]
    names = ["background"] + list(result.prompts)
    handles = [Patch(color=pal[k] / 255, label=names[k]) for k in present]
    fig.legend(
        handles=handles, loc="center left", bbox_to_anchor=(img_w / (img_w + legend_w), 0.5), frameon=False, fontsize=9
    )
    with atomic_path(paths["overlay"]) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    write_text(
        paths["scores"],
        json.dumps({"prompts": result.prompts, "settings": result.settings, "classes": result.class_scores()}, indent=2)
        + "\n",
    )
    return paths
