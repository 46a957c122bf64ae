"""Numeric precision of the network: one choice gives the autocast context and the memory format."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from utils.errors import UserError


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16" or "fp32"
    channels_last: bool
    device_type: str

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


def native_bf16(device: torch.device) -> bool:
    """bf16 with tensor cores: CUDA GPUs of compute capability 8.0 (Ampere) or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(choice: str, device: torch.device, channels_last: bool | None = None) -> Precision:
    """``auto``: bf16 on GPUs with native bf16, fp32 elsewhere (the CPU, pre-Ampere GPUs, which would
    emulate it); channels_last follows bf16 unless given."""
    if choice not in ("auto", "fp32", "bf16"):
        raise UserError(f"unknown precision {choice!r}: use auto, fp32 or bf16")
    name = choice if choice != "auto" else ("bf16" if native_bf16(device) else "fp32")
    return Precision(name, name == "bf16" if channels_last is None else channels_last, device.type)


class AtPrecision(nn.Module):
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
    """On CUDA: cuDNN picks the fastest convolution algorithms for the (fixed) input shapes, and fp32
    matmuls and convolutions run on TF32 tensor cores (the batched augmentation, the kNN monitor, L-BFGS)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
