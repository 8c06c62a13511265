"""bf16 ViT blocks for CPU inference on CPUs with native bf16 (AVX512-BF16, AMX).

A timm ``Block`` run op by op in bf16 leaves a third of the matmul time on the table on such a
CPU: ATen's bf16 ``addmm`` first copies the broadcast bias into its output and then multiplies
into it (a full extra write of every activation), the GELU reads and writes the 4x-wide MLP
activation once more, and each residual add another (B, N, D) pass. With AMX a matmul finishes
so fast that these memory passes take as long as the arithmetic. oneDNN's matmul applies bias,
GELU and the residual add to each output tile while it is still in registers ("post-ops"), so
:func:`block_forward` computes each block as four fused matmuls (qkv + bias; projection + bias +
residual; fc1 + bias + GELU; fc2 + bias + residual), two LayerNorms and the fused SDPA.

The arithmetic is that of the plain block up to bf16 rounding (oneDNN's erf GELU and the order
of bias and residual additions differ by at most an ulp of the stored bf16 value); float32
models never take this path, so their outputs stay bit-identical to the plain block's.
:func:`applies` decides per call: bf16 activations and weights on the CPU, no autograd, eval
mode, timm's own Block/Attention/Mlp with exact GELU, and a oneDNN that runs bf16 matmuls here
(probed once: ``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX-512 CPU, as the parity matrix sets it,
leaves oneDNN without any bf16 kernel).

Each Linear's weight is handed to oneDNN once in its own blocked layout
(:func:`packed_weight`, what ``torch.compile``'s freezing does too) instead of being re-laid-out
inside every matmul: x1.15-1.4 per matmul for the short row counts of batch 1 and x1.0-1.1 for a
block pass of 2048 rows, at the cost of a second copy of the bf16 weights while the model is used
this way (170 MB for a ViT-B/16). On a Sapphire Rapids CPU (AMX) the outputs had the same bits at
every row count measured; the tests allow bf16 rounding, as another CPU's kernels may sum in
another order.
"""

from __future__ import annotations

import functools
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block
from torch import nn

from openradio.runtime import tensor_state

# oneDNN matmul with fused post-ops: (X, W, B, attr, scalars, algorithm) and the binary form
# (X, other, W, B, 'add') = other + X @ W^T + B; what torch.compile's CPU backend emits for Linear
_linear_pointwise = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_reorder_linear_weight = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)

# the row count oneDNN lays a packed weight out for: a CPU block pass holds up to
# RADIOModel.cpu_chunk_tokens (2560) rows; on AMX it gave the same bits at every row count measured
PACK_ROWS = 2048
PACK_WEIGHTS = True  # False: hand oneDNN the plain weights (no second copy)
# Linear -> (tensor_state of its weight, the weight, packed weight); a module that goes away
# takes its packed copy with it
_packed: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=None)
def onednn_bf16_matmuls() -> bool:
    """Whether oneDNN's fused bf16 matmuls run on this CPU and under this process's settings."""
    if _linear_pointwise is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        x = torch.ones(4, 32, dtype=torch.bfloat16)
        w = torch.ones(16, 32, dtype=torch.bfloat16)
        b = torch.zeros(16, dtype=torch.bfloat16)
        y = _linear_pointwise(x, w, b, "gelu", [], "none")
        z = _linear_pointwise.binary(x, torch.ones(4, 16, dtype=torch.bfloat16), w, b, "add")
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.allclose(y.float(), torch.full((4, 16), 32.0))) and bool(torch.all(z == 33))


def _exact_gelu(act: nn.Module) -> bool:
    return type(act) is nn.GELU and act.approximate == "none"


def fusable(block: nn.Module) -> bool:
    """timm's plain pre-norm block: Block, Attention without gate or fused-away norms, an Mlp of
    two Linears (GELU or any activation in between, an optional norm after it)."""
    if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
        return False
    a, m = block.attn, block.mlp
    if getattr(a, "gate", None) is not None or not isinstance(a.qkv, nn.Linear) or not isinstance(a.proj, nn.Linear):
        return False
    return isinstance(m.fc1, nn.Linear) and isinstance(m.fc2, nn.Linear)


def applies(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`block_forward` computes this call (see the module docstring)."""
    return (
        x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not block.training
        and fusable(block)
        and block.attn.qkv.weight.dtype == torch.bfloat16
        and onednn_bf16_matmuls()
    )


def packed_weight(lin: nn.Linear) -> torch.Tensor:
    """``lin.weight`` in oneDNN's own layout, made once and made again when the weight changes
    (its storage, in-place version, dtype or shape); the plain weight where oneDNN cannot pack."""
    w = lin.weight
    key = tensor_state(w) if _reorder_linear_weight is not None and PACK_WEIGHTS else None
    if key is None:  # (an inference tensor has no version counter to tell an in-place edit by)
        return w
    hit = _packed.get(lin)
    if hit is not None and hit[0] == key:
        return hit[2]
    try:
        p = _reorder_linear_weight(w.detach(), PACK_ROWS)
    except RuntimeError:
        return w
    # the weight is held with its packed copy, so a new weight cannot take its address (and key)
    _packed[lin] = (key, w.detach(), p)
    return p


def _linear(x: torch.Tensor, lin: nn.Linear, attr: str = "none") -> torch.Tensor:
    w = packed_weight(lin)
    if attr == "gelu":
        return _linear_pointwise(x, w, lin.bias, "gelu", [], "none")  # 'none': erf, not tanh
    return _linear_pointwise(x, w, lin.bias, "none", [], "")


def _linear_add(x: torch.Tensor, lin: nn.Linear, residual: torch.Tensor, scale: nn.Module) -> torch.Tensor:
    """``residual + scale(lin(x))``, the add fused into the matmul where ``scale`` is the identity."""
    if isinstance(scale, nn.Identity):
        return _linear_pointwise.binary(x, residual, packed_weight(lin), lin.bias, "add")
    return residual + scale(_linear(x, lin))


def attend_sdpa(attn: Attention, qkv: torch.Tensor) -> torch.Tensor:
    """(B, n, 3*D) -> (B, n, D): timm's Attention core (heads split, q/k norms, fused SDPA)."""
    B, n, _ = qkv.shape
    return sdpa_heads(attn, qkv.reshape(B, n, 3, attn.num_heads, attn.head_dim))


def sdpa_heads(attn: Attention, qkv: torch.Tensor) -> torch.Tensor:
    """(B, n, 3, H, hd) -> (B, n, H*hd), as timm's Attention.forward computes it."""
    B, n, _, H, hd = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        y = F.scaled_dot_product_attention(q, k, v)
    else:
        a = (q * attn.scale) @ k.transpose(-2, -1)
        y = a.softmax(dim=-1) @ v
    return y.transpose(1, 2).reshape(B, n, H * hd)


def block_forward(
    block: Block, x: torch.Tensor, attend: Callable[[Attention, torch.Tensor], torch.Tensor] = attend_sdpa
) -> torch.Tensor:
    """``block(x)`` for (B, N, D) bf16 ``x`` with fused matmuls; ``attend(attn, qkv)`` maps the
    (B, N, 3*D) projections to the (B, N, D) attention output (the packed runner passes its
    block-diagonal attention). Call only where :func:`applies` holds."""
    a, m = block.attn, block.mlp
    B, N, D = x.shape
    x2 = x.reshape(B * N, D)
    qkv = _linear(block.norm1(x2), a.qkv)
    y = a.norm(attend(a, qkv.view(B, N, -1))).reshape(B * N, -1)
    x2 = _linear_add(y, a.proj, x2, block.ls1)
    h = block.norm2(x2)
    if _exact_gelu(m.act):
        h = _linear(h, m.fc1, "gelu")
    else:
        h = m.act(_linear(h, m.fc1))
    x2 = _linear_add(m.norm(h), m.fc2, x2, block.ls2)
    return x2.view(B, N, D)


def run_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)``, through :func:`block_forward` where it applies."""
    return block_forward(block, x) if applies(block, x) else block(x)


def block_runner(block: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A one-argument callable computing ``run_block(block, x)`` (for the ViTDet runner)."""
    return functools.partial(run_block, block)


__all__ = [
    "applies",
    "attend_sdpa",
    "block_forward",
    "block_runner",
    "fusable",
    "onednn_bf16_matmuls",
    "packed_weight",
    "run_block",
    "sdpa_heads",
]
