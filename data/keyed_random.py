"""Counter-based random numbers: uniforms that are a pure function of (seed, epoch, image, view, draw).

A view's random parameters are hashed from its key instead of drawn from a stateful generator, so an
image gets the same two views whatever batch it falls in and however many processes or DataLoader
workers share the epoch: a run can resume with another number of processes and see the same views.
The hash is integer arithmetic on int64 tensors holding 32-bit lanes (every product stays below
2**63, so nothing overflows), hence the same bits on CPU and CUDA. Each key word is pre-mixed and
absorbed with MurmurHash3's 32-bit finaliser (``fmix32``), a bijective mixer with full avalanche.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF
_IV = 0x243F6A88      # initial state (digits of pi)
_WORD = 0x9E3779B9    # xor-ed into each key word before pre-mixing (golden ratio)


def _mul32(x, c: int):
    """x * c mod 2**32 for x in [0, 2**32) (int or int64 tensor) and a 32-bit constant c, through the
    16-bit halves of c so that no product reaches 2**63."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def fmix32(h):
    """MurmurHash3's 32-bit finaliser on ints or int64 tensors with values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _absorb(h, word):
    """The state after one more key word (int or int64 tensor, taken modulo 2**32)."""
    return fmix32(h ^ fmix32((word & _M32) ^ _WORD))


@dataclass(frozen=True)
class ViewKeys:
    """The key of one view of each image of a batch; every random draw of the view is a function of it.

    index: (B,) int64 image indices in the dataset (below 2**32); the draws are made on its device.
    epoch: one for the batch, or (B,) int64 on index's device (a batch that crosses an epoch: data/sampler.py).
    """
    index: torch.Tensor
    seed: int = 0
    epoch: int | torch.Tensor = 0
    view: int = 0

    def __len__(self) -> int:
        return self.index.shape[0]

    def uniform(self, first: int, count: int) -> torch.Tensor:
        """Draws ``first .. first + count - 1`` of every sample: (B, count) float32, uniform in [0, 1)
        with 24 random bits (as ``torch.rand``)."""
        h = _IV
        for word in (self.seed, self.seed >> 32, self.epoch, self.view):  # in Python, until a tensor epoch
            h = _absorb(h, word)
        state = _absorb(h, self.index.long())                                           # (B,)
        draws = torch.arange(first, first + count, dtype=torch.long, device=self.index.device)
        bits = fmix32(state[:, None] ^ fmix32(draws ^ _WORD))                            # (B, count)
        return (bits >> 8).to(torch.float32) * 2.0 ** -24
