"""Where a script computes: the device, and the DataLoader workers of this machine."""
from __future__ import annotations

import os

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
