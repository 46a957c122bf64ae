"""Where a script computes: the device, and the DataLoader workers of this machine (how many, and how many
batches they may keep in /dev/shm)."""
from __future__ import annotations

import math
import os
import sys

import torch

from utils.errors import UserError


def select_device(choice: str) -> torch.device:
    """``"auto"``: cuda when torch sees a GPU, else cpu; ``"cuda"`` (an error without GPU) or ``"cpu"``."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no GPU: use --device cpu, or install a CUDA "
                            "build of torch")
        return torch.device("cuda")
    return torch.device("cpu")


def default_workers() -> int:
    """DataLoader workers per process: the cores this process may run on (its affinity set, not the machine's
    count) shared among this machine's torchrun processes, less one for the process itself; 2 to 16."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(2, min(16, cores // local - 1))


# ---- DataLoader workers' batches in /dev/shm ---------------------------------------------------------------

HELD = 2  # batches of a loader in shared memory besides those requested: the one the loop holds, the next one


def shm_batches(workers: int, prefetch: int) -> int:
    """The most batches of one DataLoader in shared memory at once: the ``workers * prefetch`` that torch keeps
    requested (each in a worker's shared memory from its collate until the loop takes it), plus ``HELD``."""
    return workers * prefetch + HELD


def shm_plan(batch_bytes: int, workers: int, free_bytes: int, local_processes: int = 1,
             prefetch: int = 2) -> tuple[int, int]:
    """(workers, prefetch_factor) for a DataLoader whose workers return batches of ``batch_bytes``, such that its
    ``shm_batches`` fit in this process's share of half the free /dev/shm (``free_bytes / 2 / local_processes``:
    torchrun's processes on one machine share it, and the other half is left to everything else). Lowers the
    prefetch to 1 first, then the workers; a UserError when one worker does not fit. Past the free space, a
    worker writing its batch dies of a bus error (a container's /dev/shm is 64 MB unless it is given more)."""
    share = free_bytes // (2 * local_processes)
    for p in sorted({prefetch, 1}, reverse=True):
        if shm_batches(workers, p) * batch_bytes <= share:
            return workers, p
    fit = share // batch_bytes - HELD  # workers at prefetch 1
    if fit >= 1:
        return fit, 1
    raise UserError(f"DataLoader workers' batches of {_size(batch_bytes)} do not fit in /dev/shm "
                    f"({_share_text(free_bytes, local_processes)}): even one worker needs {shm_batches(1, 1)} of them "
                    f"at once: use a smaller --batch-size, --num-workers 0 (images read by the training process, "
                    f"slower), or {_shm_size_text(shm_batches(1, 1) * batch_bytes, local_processes)}")


def shm_free_bytes(path: str = "/dev/shm") -> int | None:
    """Free bytes in /dev/shm, where DataLoader workers' batches live on Linux (with either of torch's sharing
    strategies); None where there is none (macOS, Windows: torch shares memory by other means, not checked)."""
    if not os.path.isdir(path):
        return None
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fit_workers_to_shm(batch_bytes: int, workers: int, prefetch: int = 2) -> tuple[int, int]:
    """``shm_plan`` for this machine (/dev/shm's free space now, torchrun's LOCAL_WORLD_SIZE), with one warning
    line on stderr when it lowers ``workers`` or ``prefetch``; unchanged without workers or without /dev/shm."""
    free = shm_free_bytes()
    if workers == 0 or free is None:
        return workers, prefetch
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    planned = shm_plan(batch_bytes, workers, free, local, prefetch)
    if planned != (workers, prefetch):
        rank = os.environ.get("RANK", "0")  # as utils.errors.run_cli: every process reports, the others named
        lowered = " and ".join(f"{what} {a} -> {b}" for what, a, b in
                               (("DataLoader workers", workers, planned[0]), ("prefetch", prefetch, planned[1]))
                               if a != b)
        print(f"warning{'' if rank == '0' else f' (rank {rank})'}: lowered {lowered} to fit their batches of "
              f"{_size(batch_bytes)} in /dev/shm ({_share_text(free, local)}); {workers} workers at prefetch "
              f"{prefetch} need {_shm_size_text(shm_batches(workers, prefetch) * batch_bytes, local)}",
              file=sys.stderr)
    return planned


def shm_workers(dataset, key, batch_size: int, num_workers: int) -> dict:
    """DataLoader's ``num_workers`` and ``prefetch_factor`` for batches of ``batch_size`` samples like
    ``dataset[key]`` (a tuple of tensors and ints, measured on that one sample), as ``fit_workers_to_shm`` fits
    them in /dev/shm."""
    if num_workers == 0 or len(dataset) == 0 or shm_free_bytes() is None:
        return {"num_workers": num_workers}
    per_sample = sum(t.numel() * t.element_size() if torch.is_tensor(t) else 8 for t in dataset[key])
    workers, prefetch = fit_workers_to_shm(batch_size * per_sample, num_workers)
    return {"num_workers": workers, "prefetch_factor": prefetch}


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _share_text(free_bytes: int, local_processes: int) -> str:
    among = f", shared among {local_processes} processes" if local_processes > 1 else ""
    return f"{_size(free_bytes)} free; this process may use {_size(free_bytes / (2 * local_processes))}: half{among}"


def _shm_size_text(process_bytes: int, local_processes: int) -> str:
    """The free /dev/shm in which ``process_bytes`` per process fit, and the docker option that gives it."""
    gb = math.ceil(process_bytes * 2 * local_processes / 1e9)
    return f"a /dev/shm with {gb} GB free (docker run --shm-size={gb}g)"
