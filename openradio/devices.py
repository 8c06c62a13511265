"""Where a module lives, and what its device can do fast."""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

# bf16 autocast on a CPU is fast only with native bf16 instructions; elsewhere (AVX2-only CPUs such
# as AMD Zen 3) ATen emulates it: measured 1.2 GFLOP/s in bf16 against 65 in float32 on one core.
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16, Intel AMX, Arm BF16
_WARNED_SLOW_BF16 = False


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for a module with neither."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def _cpu_flags() -> set[str]:
    from openradio.parity import _cpuinfo, cpu_flags
    return cpu_flags() | set((_cpuinfo("Features") or "").split())  # x86 'flags', Arm 'Features'


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16, AMX or Arm BF16)."""
    return any(f in _cpu_flags() for f in _NATIVE_BF16_FLAGS)


def slow_bf16(device: torch.device | str) -> bool:
    """True where bf16 autocast is emulated and much slower than float32 (a CPU without native bf16)."""
    return torch.device(device).type == "cpu" and not cpu_has_native_bf16()


def warn_if_slow_bf16(device: torch.device | str) -> None:
    """One warning per process when bf16 autocast is asked for where it is emulated."""
    global _WARNED_SLOW_BF16
    if _WARNED_SLOW_BF16 or not slow_bf16(device):
        return
    _WARNED_SLOW_BF16 = True
    from openradio.parity import cpu_model
    warnings.warn(f"bf16 autocast on this CPU ({cpu_model()}: no AVX512-BF16 or AMX) is emulated and about 50x "
                  "slower than float32; drop --amp (amp=False) here: bf16 pays off on GPUs and CPUs with "
                  "AVX512-BF16/AMX", UserWarning, stacklevel=3)


def autocast(device: torch.device | str, amp: bool = True):
    """bf16 autocast on ``device`` when ``amp``, else a no-op; warns once where bf16 is emulated."""
    if not amp:
        return contextlib.nullcontext()
    warn_if_slow_bf16(device)
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
