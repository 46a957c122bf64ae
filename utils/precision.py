"""Numeric precision of the network: one choice gives the autocast context and the memory format."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
from torch import nn

from utils.errors import UserError


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16" or "fp32"
    channels_last: bool
    device_type: str
    reason: str = ""  # what --precision auto went by, e.g. "CPU with AMX"; empty for an explicit choice

    @property
    def label(self) -> str:
        """The name and, under auto, its reason: "bf16 (CPU with AMX)"."""
        return f"{self.name} ({self.reason})" if self.reason else self.name

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return torch.bfloat16 if self.name == "bf16" else None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def autocast(self):
        """The context the network runs in (losses leave it: models/loss.py computes in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def _cpu_bf16_units() -> str | None:
    """The CPU's bf16 matrix or dot-product instructions: "AMX" (Intel Sapphire Rapids and later), "AVX512-BF16"
    (AMD Zen 4 and later, Intel Cooper Lake), or None; through torch's private probes, else /proc/cpuinfo."""
    amx, avx = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    if amx is not None and avx is not None:
        return "AMX" if amx() else "AVX512-BF16" if avx() else None
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    return "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None


def fast_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether bf16 outruns fp32 on ``device``, and why: CUDA GPUs of compute capability 8.0 (Ampere) or
    newer (tensor cores), CPUs with AMX or AVX512-BF16 (bf16 in hardware); elsewhere bf16 is emulated and
    slower (bench/throughput.py measures both)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"GPU of compute capability {major}.{minor}"
    units = _cpu_bf16_units()
    return units is not None, f"CPU with {units}" if units else "CPU without AMX or AVX512-BF16"


def resolve_precision(choice: str, device: torch.device, channels_last: bool | None = None) -> Precision:
    """``auto``: bf16 where it is fast (:func:`fast_bf16`), fp32 elsewhere; channels_last follows bf16
    unless given."""
    if choice not in ("auto", "fp32", "bf16"):
        raise UserError(f"unknown precision {choice!r}: use auto, fp32 or bf16")
    name, reason = choice, ""
    if choice == "auto":
        fast, reason = fast_bf16(device)
        name = "bf16" if fast else "fp32"
    elif choice == "bf16" and device.type == "cuda" and not fast_bf16(device)[0]:
        print(f"warning: --precision bf16 on a {fast_bf16(device)[1]}: bf16 is emulated there, slower than fp32 "
              f"(--precision auto picks fp32)", file=sys.stderr)
    return Precision(name, name == "bf16" if channels_last is None else channels_last, device.type, reason)


class PrecisionNet(nn.Module):
    """``module`` run at ``precision``: input in its memory format, autocast entered inside ``forward`` and
    a float32 output. Inside, so that DataParallel's replica threads, which re-enter autocast with only
    ``enabled=`` and so CUDA's default fp16, compute in the chosen dtype too."""

    def __init__(self, module: nn.Module, precision: Precision) -> None:
        super().__init__()
        self.module, self.precision = module, precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.precision.memory_format)
        with self.precision.autocast():
            return self.module(x).float()


def configure_backends(device: torch.device) -> None:
    """The one backend setup of every script and bench. On CUDA: cuDNN times the convolution algorithms for the
    (fixed) input shapes and keeps the fastest (``cudnn.benchmark``; not bitwise deterministic from run to run),
    and fp32 stays IEEE fp32: TF32 is off for matmuls and convolutions, which the fp32 paths would otherwise
    take (the augmentation's resize matmuls and blur convolutions, NT-Xent's logits, fp32 features for
    evaluation) at about 1e-3 relative error. The fast path is bf16 autocast (``--precision``), not TF32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
