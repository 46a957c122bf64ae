"""NT-Xent, the normalised temperature-scaled cross-entropy loss (Chen et al. 2020, Eq. 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NTXentLoss(nn.Module):
    """Mean over all 2N anchors of -log softmax of the positive among the other 2N-1 embeddings.

    ``forward(z1, z2)`` takes the projections of the two views, each (N, d); row i of z1 and row i
    of z2 are the positive pair. Computed in float32 even under autocast. Depends only on its
    inputs, so a short last batch is fine.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"z1 and z2 must both be (N, d); got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # z: (2N, d)
            logits = z @ z.t() / self.temperature  # (2N, 2N) cosine similarities / t
            self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(self_mask, float("-inf"))
            idx = torch.arange(n, device=z.device)
            targets = torch.cat([idx + n, idx])  # the positive of anchor i is its other view
            return F.cross_entropy(logits, targets)
