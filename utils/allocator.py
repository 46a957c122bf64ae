"""Keep freed tensor memory in the process on CPU, instead of handing it back to the OS each time.

glibc's malloc serves every allocation above ``M_MMAP_THRESHOLD`` (128 KiB to 32 MiB, adjusted
as it goes) with a fresh ``mmap`` and returns it with ``munmap`` when freed, and it trims the top
of the heap back to the OS above ``M_TRIM_THRESHOLD``. A CPU training step allocates and frees
tensors of tens of MiB hundreds of times (a ResNet-18 activation at batch 256 is 64 MiB), so
each one is zero-filled page by page by the kernel again. PyTorch has no caching allocator on
CPU, unlike on CUDA. Raising both thresholds to 2 GiB keeps that memory in the heap for reuse.

``bench/throughput.py`` measures the gain (columns b and c; README, Results).

The cost is that memory, once used, stays with the process until it exits (its peak is what it
was anyway). Set ``SIMCLR_MALLOC_TUNING=0`` to leave malloc alone. Other C libraries (musl,
macOS) are left alone; jemalloc or tcmalloc through ``LD_PRELOAD`` do the same job there.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

import torch

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 2**31 - 1  # mallopt takes an int; 2 GiB is above any one tensor of a CIFAR/ImageNet step

_tuned = False


def tune_cpu_allocator(device: torch.device | str = "cpu") -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the workers it forks later)
    when it computes on ``device`` = the CPU; a GPU run is left alone.

    Returns True when the thresholds are set (now or by an earlier call), False for another device,
    when the C library is not glibc, or with ``SIMCLR_MALLOC_TUNING=0``. Safe to call more than once.
    """
    global _tuned
    if _tuned:
        return True
    if (torch.device(device).type != "cpu" or os.environ.get("SIMCLR_MALLOC_TUNING", "1") == "0"
            or platform.libc_ver()[0] != "glibc"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    return _tuned
