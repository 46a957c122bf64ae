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
    """DataLoader workers per process: this machine's cores shared among its torchrun processes, 2 to 16."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(2, min(16, (os.cpu_count() or 2) // local))
