"""Which floating-point precision a training run uses on a device, decided once at start.

- CUDA: bf16 autocast where the GPU supports it, otherwise fp16 autocast with a grad
  scaler (:func:`models.inference.amp_dtype_for`).
- CPU: bf16 autocast **only** where the processor does bf16 natively (the
  ``avx512_bf16`` or ``amx_bf16`` flag in ``/proc/cpuinfo``). Elsewhere PyTorch emulates
  bf16, and a DynUNet training step under CPU bf16 autocast was measured 33 times
  slower than in fp32 (31.7 s against 0.95 s on an AMD EPYC Zen 3 with AVX2 only); with
  native bf16 it is about twice as fast as fp32. Without those flags the CPU trains in
  fp32.

The loss is always computed in fp32 (:mod:`models.training`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch

from .errors import ModelsError
from .inference import amp_dtype_for

__all__ = [
    "CPU_BF16_FLAGS",
    "Precision",
    "PrecisionChoice",
    "PrecisionError",
    "cpu_bf16_flags",
    "training_precision",
]

#: ``/proc/cpuinfo`` flags that mean the CPU computes bf16 natively.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

_CPUINFO = Path("/proc/cpuinfo")


class PrecisionError(ModelsError, ValueError):
    """A precision was asked for that the device cannot run (natively)."""


class Precision(StrEnum):
    """Training precision: asked for (``auto``, ``fp32``, ``bf16``) or decided
    (``fp32``, ``bf16``, ``fp16`` - the last only as CUDA's fallback under ``auto``)."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


#: What a config may ask for.
REQUESTABLE = (Precision.AUTO, Precision.FP32, Precision.BF16)


@dataclass(frozen=True, slots=True)
class PrecisionChoice:
    """The decided precision, the autocast dtype (``None`` = plain fp32) and why."""

    precision: Precision
    reason: str

    def __post_init__(self) -> None:
        if self.precision == Precision.AUTO:
            raise PrecisionError("a decided precision cannot be 'auto'")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {
            Precision.BF16: torch.bfloat16,
            Precision.FP16: torch.float16,
        }.get(self.precision)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.precision == Precision.FP16

    def describe(self) -> str:
        return f"{self.precision} ({self.reason})"


def cpu_bf16_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The native-bf16 flags (:data:`CPU_BF16_FLAGS`) the CPU reports. ``cpuinfo`` is the
    text of ``/proc/cpuinfo`` (read when ``None``; on a system without it - not Linux -
    none is reported, so such a CPU trains in fp32)."""
    if cpuinfo is None:
        if not sys.platform.startswith("linux"):
            return ()
        try:
            cpuinfo = _CPUINFO.read_text(encoding="ascii", errors="replace")
        except OSError:
            return ()
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            found.update(value.split())
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in found)


def training_precision(
    device: torch.device,
    requested: Precision | str = Precision.AUTO,
    *,
    cpuinfo: str | None = None,
) -> PrecisionChoice:
    """Decide the training precision for ``device``: ``auto`` picks bf16 where it is
    native (a bf16-capable GPU, a CPU with :data:`CPU_BF16_FLAGS`), fp16 on other CUDA
    GPUs, else fp32. ``bf16`` where it is not native raises :class:`PrecisionError`
    naming the reason. ``cpuinfo``: ``/proc/cpuinfo`` text (for tests)."""
    try:
        asked = Precision(requested)
    except ValueError as exc:
        allowed = ", ".join(p.value for p in REQUESTABLE)
        raise PrecisionError(f"precision must be one of {allowed}, got {requested!r}") from exc
    if asked not in REQUESTABLE:
        allowed = ", ".join(p.value for p in REQUESTABLE)
        raise PrecisionError(f"precision must be one of {allowed}, got {requested!r}")
    if asked == Precision.FP32:
        return PrecisionChoice(Precision.FP32, "asked for")
    if device.type == "cuda":
        dtype = amp_dtype_for(device)
        if dtype == torch.bfloat16:
            return PrecisionChoice(Precision.BF16, "CUDA GPU with bf16")
        if asked == Precision.BF16:
            raise PrecisionError("precision bf16: this CUDA GPU does not support bf16")
        return PrecisionChoice(Precision.FP16, "CUDA GPU without bf16, with a grad scaler")
    if device.type == "cpu":
        flags = cpu_bf16_flags(cpuinfo)
        if flags:
            return PrecisionChoice(Precision.BF16, f"CPU with {', '.join(flags)}")
        if asked == Precision.BF16:
            raise PrecisionError(
                "precision bf16: this CPU has no native bf16 (no "
                f"{' or '.join(CPU_BF16_FLAGS)} flag in /proc/cpuinfo); emulated bf16 trains "
                "about 30 times slower than fp32 here - use precision auto or fp32"
            )
        return PrecisionChoice(
            Precision.FP32, f"CPU without native bf16 ({' / '.join(CPU_BF16_FLAGS)})"
        )
    if asked == Precision.BF16:
        raise PrecisionError(f"precision bf16 is supported on CUDA and CPU, not {device.type}")
    return PrecisionChoice(Precision.FP32, f"{device.type} device")
