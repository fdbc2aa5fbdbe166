"""Mixed precision: which dtype autocast uses on a device, and whether the hardware has it.

``precision`` (a top-level recipe key) is one of :data:`PRECISIONS`:

- ``fp32``: no autocast; every op in float32 (the exact path the recipe had before mixed precision).
- ``bf16``: ``torch.autocast`` with bfloat16 on CPU or CUDA.
- ``auto``: bf16 where the hardware computes it natively -- CUDA GPUs with bf16 (fp16 with a gradient
  scaler on older GPUs, as before), CPUs with AVX512_BF16 or AMX-BF16 -- and fp32 elsewhere. Without
  those instructions a CPU emulates bf16 matmuls and they are far slower than fp32 (measured on an AVX2
  AMD EPYC: ~0.2 GFLOP/s against ~50 in fp32).

Autocast only changes the dtype of the ops it lists (matmuls, linear layers); parameters, gradients and
optimizer state stay float32, so AdamW steps float32 master weights. What the recipe keeps in float32 on
purpose even under autocast (the recurrent state, pooling, the losses, AR/TAR, and the LSTM on a CPU
without native bf16) is listed in docs/RECIPE.md and enforced where those ops live (``awd_lstm.py``, ``losses.py``).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import PRECISIONS

#: CPU flags (Linux ``/proc/cpuinfo`` names) of instructions that compute bf16 dot products natively.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class MixedPrecision:
    """What one training run uses: the autocast dtype (None: float32 throughout) and whether gradients
    need scaling (float16 only, whose range underflows small gradients)."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """A context manager to enter around forward passes and losses (reusable, not re-entrant)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's flags from ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        with path.open() as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has AVX512_BF16 or AMX-BF16, the instructions oneDNN's bf16 kernels need.

    Asks torch's own CPU feature detection (``torch.cpu.get_capabilities``, torch >= 2.6) and, where that
    is missing or says nothing, the kernel's ``/proc/cpuinfo`` flags; either saying yes is enough.
    """
    capabilities: dict = {}
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        try:
            capabilities = dict(get())
        except (RuntimeError, AttributeError):  # an older or unusual build: fall back to the kernel's view
            capabilities = {}
    if any(capabilities.get(flag) for flag in CPU_BF16_FLAGS):
        return True
    return bool(_cpuinfo_flags() & set(CPU_BF16_FLAGS))


def resolve(precision: str, device: torch.device | str) -> MixedPrecision:
    """The :class:`MixedPrecision` that ``precision`` (one of :data:`PRECISIONS`) means on ``device``.

    Raises ValueError for an unknown name or for ``bf16`` on a GPU without bf16; warns when ``bf16`` is
    asked for on a CPU that would emulate it.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32":
        return MixedPrecision(device.type, None)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return MixedPrecision("cuda", torch.bfloat16)
        if precision == "bf16":
            raise ValueError(f"precision: bf16 asked for, but {torch.cuda.get_device_name(device)} has no bf16; "
                             "use precision: auto (float16 with gradient scaling) or fp32")
        return MixedPrecision("cuda", torch.float16)
    if device.type != "cpu":
        return MixedPrecision(device.type, torch.bfloat16 if precision == "bf16" else None)
    if cpu_has_native_bf16():
        return MixedPrecision("cpu", torch.bfloat16)
    if precision == "bf16":
        warnings.warn("precision: bf16 on a CPU without AVX512_BF16 or AMX-BF16: its bf16 matmuls are emulated "
                      "and much slower than float32; use precision: auto (float32 here) unless you are testing "
                      "bf16 numerics", RuntimeWarning, stacklevel=2)
        return MixedPrecision("cpu", torch.bfloat16)
    return MixedPrecision("cpu", None)
