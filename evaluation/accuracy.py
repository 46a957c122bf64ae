"""Top-1 / top-5 accuracy and cross-entropy of a classifier over a DataLoader of (image, label)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm


@torch.no_grad()
def classification_scores(logits_fn: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader,
                          device: torch.device, desc: str = "test") -> tuple[float, float, float]:
    """Top-1 (%), top-5 (%) and mean cross-entropy of ``logits_fn(x)`` (float logits (B, C)) over ``loader``.
    The caller sets eval mode and autocast inside ``logits_fn``."""
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for x, y in tqdm(loader, desc=desc, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = logits_fn(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        total += len(y)
    return 100.0 * correct1 / total, 100.0 * correct5 / total, loss_sum / total
