"""One SimCLR step: embed both views, gather the global batch's embeddings, NT-Xent, backward."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from training.gradcache import gradcache_step
from utils.distributed import gather_pairs


def simclr_step(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor, loss_fn: Callable, chunk_size: int = 0,
                gather: Callable | None = None) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of NT-Xent on one batch and return the loss, detached.

    ``net`` maps (2N, 3, H, W) images to (2N, d) float32 embeddings (utils.precision.AtPrecision, maybe inside
    DDP or DataParallel); ``x1``, ``x2``: this process's (N, 3, H, W) views, row i of both the same image, on
    the net's device. ``gather`` (under DDP) collects every process's embeddings before the loss, so the
    negatives are the global batch's. ``chunk_size`` < N: gradient caching (training.gradcache), the same
    loss with the activation memory of ``chunk_size`` pairs."""
    if 0 < chunk_size < x1.shape[0]:
        return gradcache_step(net, x1, x2, loss_fn, chunk_size, gather=gather)
    z1, z2 = net(torch.cat([x1, x2])).chunk(2)  # (N, d) each
    if gather is not None:
        z1, z2 = gather_pairs(z1, z2, gather)  # (W*N, d) each
    loss = loss_fn(z1, z2)
    loss.backward()
    return loss.detach()
