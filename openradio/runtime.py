"""What running a model needs, in one place: the device, autocast, input sizes, which output,
labels and number lists. Evaluation, visualisation, benchmarks, the demo and the CLI all use
these (and only these) helpers.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

# Input side used when a model does not advertise a preferred resolution (e.g. loaded from a file
# that records none).
FALLBACK_RESOLUTION = 512


# -- devices ------------------------------------------------------------------------------------------
def pick_device(name: Optional[str] = None) -> torch.device:
    """``name`` as given ('cpu', 'cuda:1', ...), else the first GPU if there is one, else the CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def cpuinfo_field(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo (Linux), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (what benchmarks and parity reports print)."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's x86 feature flags (empty elsewhere)."""
    return set((cpuinfo_field("flags") or "").split())


def capturing() -> bool:
    """Whether torch.jit, torch.compile / torch.export (dynamo) or the ONNX exporter is capturing
    the code running now: no data-dependent checks, and no caches the capture would bake in."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


def tensor_state(t: torch.Tensor) -> Optional[tuple]:
    """What a value cached from ``t`` depends on: its storage, dtype, device, shape and in-place
    version. None for an inference tensor: it keeps no version counter, so a cache could not tell
    an in-place edit (callers then compute afresh)."""
    if t.is_inference():
        return None
    return (t.data_ptr(), t.dtype, t.device, tuple(t.shape), t._version)


# The x86 flags that decide a benchmark's speed and its output bits (which kernels ATen and oneDNN
# pick): AVX2-only (AMD Zen 3), AVX-512 with BF16/VNNI (AMD Zen 4), AMX (Intel Sapphire Rapids on).
PLATFORM_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")


# environment variables that hold a library's kernels below what the CPU offers
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")


def platform_line(device: torch.device | str | None = None) -> str:
    """One line naming what a benchmark ran on, printed first by every script in benchmarks/:
    ``cpu: <model name> | <n> cores | flags: <those of PLATFORM_FLAGS present, or -> | torch <version>
    | <n> threads``, then ``| KEY=value`` for each of KERNEL_ENV set (a run whose kernels were held
    below the CPU's must not read as the CPU's own), and ``| gpu: <name>`` when ``device`` is a CUDA
    device."""
    flags = " ".join(f for f in PLATFORM_FLAGS if f in cpu_flags()) or "-"
    line = (
        f"cpu: {cpu_model()} | {os.cpu_count()} cores | flags: {flags} | torch {torch.__version__} | "
        f"{torch.get_num_threads()} threads"
    )
    line += "".join(f" | {k}={os.environ[k]}" for k in KERNEL_ENV if os.environ.get(k))
    if device is not None and torch.device(device).type == "cuda":
        line += f" | gpu: {torch.cuda.get_device_name(torch.device(device))}"
    return line


def _cpu_flags() -> set[str]:
    return cpu_flags() | set((cpuinfo_field("Features") or "").split())  # x86 'flags', Arm 'Features'


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
    warnings.warn(
        f"bf16 autocast on this CPU ({cpu_model()}: no AVX512-BF16 or AMX) is emulated and about 50x "
        "slower than float32; drop --amp (amp=False) here: bf16 pays off on GPUs and CPUs with "
        "AVX512-BF16/AMX",
        UserWarning,
        stacklevel=3,
    )


def autocast(device: torch.device | str, amp: bool = True):
    """bf16 autocast on ``device`` when ``amp``, else a no-op; warns once where bf16 is emulated."""
    if not amp:
        return contextlib.nullcontext()
    warn_if_slow_bf16(device)
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


# -- inputs and outputs ---------------------------------------------------------------------------------
def default_resolution(model: nn.Module) -> int:
    """The model's preferred input side (its height for an (h, w) preference), else
    :data:`FALLBACK_RESOLUTION`."""
    pref = getattr(model, "preferred_resolution", None)
    if pref is None:
        return FALLBACK_RESOLUTION
    if isinstance(pref, int):
        return pref
    return int(pref[0])


def supported_resolution(model: nn.Module, resolution: int) -> int:
    """``resolution`` rounded to a square size the model accepts (multiples of the patch size times
    the ViTDet window: ``get_nearest_supported_resolution``)."""
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    fn = getattr(model, "get_nearest_supported_resolution", None)
    if fn is None:
        return int(resolution)
    return int(fn(resolution, resolution)[0])


def model_resolution(model: nn.Module, requested: Optional[int] = None) -> int:
    """The square input side to run ``model`` at: ``requested`` (else :func:`default_resolution`)
    rounded by :func:`supported_resolution`. The one rule every command and tool uses."""
    return supported_resolution(model, requested or default_resolution(model))


def select_output(out, adaptor: Optional[str]):
    """``RadioOutput`` of the backbone (``adaptor=None``/'backbone') or of an adaptor from a model call."""
    if isinstance(out, dict):
        key = adaptor or "backbone"
        if key not in out:
            raise KeyError(
                f"model output has no {key!r}; available: {sorted(out)} (load the model with adaptor_names=[{key!r}])"
            )
        return out[key]
    if adaptor not in (None, "backbone"):
        raise KeyError(
            f"the model was loaded without adaptors, so {adaptor!r} outputs are not available; "
            f"load it with adaptor_names=[{adaptor!r}]"
        )
    return out


# -- labels and arguments ---------------------------------------------------------------------------------
def model_label(version: str) -> str:
    """A short, file-name-safe label for a model: a released name as is, a checkpoint or folder by
    its name without the checkpoint suffix."""
    name = Path(version).name if (os.sep in version or "/" in version) else version
    for suffix in (".pth.tar", ".pth", ".pt", ".safetensors", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return safe_name(name) if name else "model"


def safe_name(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, '.', '_' and '-' made one '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def parse_int_list(text: str, what: str = "values") -> list[int]:
    """'224,432' -> [224, 432]; ``what`` names the argument in the error ('--resolutions')."""
    try:
        vals = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers like 224,432,768, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"{what} must be positive comma-separated integers like 224,432,768, got {text!r}")
    return vals


class PhaseTimer:
    """Wall time per phase of a run, in the order they ran: ``lap(name)`` closes the phase that
    began at the previous lap (or at construction); ``timings`` maps names to seconds."""

    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self.cpu_start = time.process_time()
        self.timings: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        """Seconds since construction (also recorded as ``timings['total']``)."""
        self.timings["total"] = time.perf_counter() - self.start
        return self.timings["total"]

    def cpu_time(self) -> float:
        """This process's CPU seconds since construction."""
        return time.process_time() - self.cpu_start
