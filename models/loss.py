"""NT-Xent, the normalised temperature-scaled cross-entropy loss (Chen et al. 2020, Eq. 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


SCALES = {"official": 2.0, "paper": 1.0}


class NTXentLoss(nn.Module):
    """-log softmax of the positive among the other 2N-1 embeddings, averaged over the 2N anchors
    (``scale="paper"``: Algorithm 1, Eq. 1) or summed over the two views and averaged over the N pairs
    (``scale="official"``, the default: the official ``objective.py``'s ``loss_a + loss_b``, twice the
    paper's mean; the official lr and weight decay were tuned at this scale).

    ``forward(z1, z2)`` takes the projections of the two views, each (N, d); row i of z1 and row i
    of z2 are the positive pair. Computed in float32 even under autocast. Depends only on its
    inputs, so a short last batch is fine.

    Up to 2N = 4096 anchors (batch 2048) the (2N, 2N) similarity matrix is built at once. Above,
    the loss and its gradient are computed ``block_rows`` anchors at a time (``blockwise_nt_xent``;
    by default blocks of 2^24 similarities, 64 MiB), so memory is O(block_rows * 2N) instead of
    the dense path's several (2N)^2 floats: the batch is no longer limited by the loss.
    ``block_rows`` sets the block (and the threshold) by hand.
    """

    BLOCK_ELEMENTS = 2**24

    def __init__(self, temperature: float = 0.5, block_rows: int | None = None, scale: str = "official") -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
        if block_rows is not None and block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        self.temperature = temperature
        self.block_rows = block_rows
        self.scale = scale

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return SCALES[self.scale] * self.mean_over_anchors(z1, z2)

    def mean_over_anchors(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"z1 and z2 must both be (N, d); got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # z: (2N, d)
            rows = self.block_rows or max(1, self.BLOCK_ELEMENTS // (2 * n))
            if 2 * n > rows:
                return blockwise_nt_xent(z, self.temperature, rows)
            logits = z @ z.t() / self.temperature  # (2N, 2N) cosine similarities / t
            self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(self_mask, float("-inf"))
            idx = torch.arange(n, device=z.device)
            targets = torch.cat([idx + n, idx])  # the positive of anchor i is its other view
            return F.cross_entropy(logits, targets)


def blockwise_nt_xent(z: torch.Tensor, temperature: float, block_rows: int) -> torch.Tensor:
    """NT-Xent of normalised embeddings z (2N, d), rows i and (i + N) mod 2N positive, computed
    ``block_rows`` anchors at a time in the forward and the backward pass (memory O(block_rows * 2N))."""
    return _BlockwiseNTXent.apply(z, temperature, block_rows)


class _BlockwiseNTXent(torch.autograd.Function):
    """L = 1/M sum_i (lse_i - s_i,p(i)), s_ij = z_i . z_j / t, lse_i = logsumexp_{j != i} s_ij, M = 2N.

    Forward keeps only z and lse (M floats). Backward recomputes each block of rows of s and, with
    G = softmax - onehot(positive) (the anchor itself excluded), dL/dz = (G z + G^T z) / (M t).
    """

    @staticmethod
    def _logits(z: torch.Tensor, start: int, stop: int, temperature: float) -> torch.Tensor:
        """Rows start..stop-1 of the similarity matrix / t, the anchors themselves set to -inf: (b, M)."""
        logits = z[start:stop] @ z.t() / temperature
        rows = torch.arange(stop - start, device=z.device)
        logits[rows, rows + start] = float("-inf")
        return logits

    @staticmethod
    def forward(ctx, z: torch.Tensor, temperature: float, block_rows: int) -> torch.Tensor:
        m = z.shape[0]
        lse = torch.empty(m, dtype=z.dtype, device=z.device)
        for start in range(0, m, block_rows):
            stop = min(start + block_rows, m)
            lse[start:stop] = torch.logsumexp(_BlockwiseNTXent._logits(z, start, stop, temperature), dim=1)
        positive = (z * torch.roll(z, m // 2, dims=0)).sum(dim=1) / temperature  # row i with (i + N) mod 2N
        ctx.save_for_backward(z, lse)
        ctx.temperature, ctx.block_rows = temperature, block_rows
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z, lse = ctx.saved_tensors
        m, t = z.shape[0], ctx.temperature
        grad = torch.zeros_like(z)
        scale = grad_out / (m * t)
        for start in range(0, m, ctx.block_rows):
            stop = min(start + ctx.block_rows, m)
            g = torch.exp_(_BlockwiseNTXent._logits(z, start, stop, t).sub_(lse[start:stop, None]))  # softmax
            rows = torch.arange(stop - start, device=z.device)
            g[rows, (rows + start + m // 2) % m] -= 1.0                                           # - onehot
            g.mul_(scale)
            grad[start:stop] += g @ z
            grad.addmm_(g.t(), z[start:stop])
        return grad, None, None
