"""Numeric precision of the network: one choice gives the autocast context and the memory format."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

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
