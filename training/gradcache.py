"""Gradient caching: NT-Xent over a large batch with the activation memory of a small chunk.

Gao, Zhang, Han, Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (GradCache). The contrastive loss couples all images of a batch only through their
embeddings z, which are small (B x 128), so one step splits into

1. embed the batch chunk by chunk without autograd graphs (activations freed after each chunk);
2. compute the loss on all embeddings (optionally gathered from all DDP ranks) and its gradient
   dL/dz, which is exact: it sees every negative of the batch;
3. run each chunk again with its graph and back-propagate the cached dL/dz of its rows; the
   parameter gradients add up over chunks to dL/dtheta.

Peak activation memory is that of one chunk's view, at the cost of a second forward pass. Exact up
to floating-point for networks whose output for an image does not depend on the other images of its
forward batch. BatchNorm in training mode does: here each chunk forwards its view-1 images and its
view-2 images as two separate BN batches, so that no BN batch holds both views of a pair (the
leakage the paper's Sec. 2.2, Global BN, warns against: with both views in one small BN batch the
network can find the positive from the batch statistics). A step equals a K-process run without
SyncBN, one chunk per process, whose processes forward their two views as separate BN batches; it
is not the full-batch step (one BN batch of all 2N images). Both passes of a forward replay the
same RNG state (CPU and CUDA, forked per forward), and BN running statistics are updated once per
forward of the second pass (saved before the first pass and restored after it).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.distributed import gather_pairs


class _RngState:
    """The CPU RNG state and that of the GPUs a forward pass uses, to replay the pass's randomness."""

    def __init__(self, cuda_devices: list[int]) -> None:
        self.cuda_devices = cuda_devices
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in cuda_devices]

    @contextlib.contextmanager
    def replay(self):
        """Run the block from this state; the RNG state outside the block is left as it was."""
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.cpu)
            for d, state in zip(self.cuda_devices, self.cuda):
                torch.cuda.set_rng_state(state, d)
            yield


def _cuda_devices(model: nn.Module, device: torch.device) -> list[int]:
    if isinstance(model, nn.DataParallel):
        return list(model.device_ids)
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """[a, b) of every chunk of ``chunk_size`` pairs; a last chunk of a single pair joins the one before, since
    one image is no BatchNorm batch."""
    bounds = [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def gradcache_step(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk_size: int,
                   gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of ``loss_fn(z1, z2)`` over the batch, ``chunk_size`` pairs at a time.

    ``model`` maps (c, 3, H, W) to (c, d); it may be wrapped in DataParallel or
    DistributedDataParallel (then gradients are all-reduced once, after the last backward: the others
    run under ``no_sync()``); its precision is its own (utils.precision.AtPrecision). ``x1``, ``x2``
    (N, 3, H, W) are the two views (row i of both is pair i), on the model's device. ``chunk_size``
    need not divide N (the last chunk is shorter, or one longer: ``chunk_bounds``). ``gather`` (e.g.
    ``utils.distributed.gather_with_grad``) collects the embeddings of all ranks once, before the loss.
    Returns the loss, detached.

    The caller zeroes the gradients before and steps the optimizer after, as around ``backward()``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape; got {tuple(x1.shape)} and {tuple(x2.shape)}")
    n = x1.shape[0]
    chunks = chunk_bounds(n, chunk_size)
    ddp = isinstance(model, DistributedDataParallel)
    plain = model.module if ddp else model  # the first pass needs no DDP reducer nor buffer broadcast
    cuda_devices = _cuda_devices(model, x1.device)

    # The forwards: each chunk's view 1, then its view 2, each its own BN batch of c images.
    pieces = [(x, a, b) for a, b in chunks for x in (x1, x2)]

    # 1. Embeddings without graphs; BN running statistics put back afterwards (updated in step 3 only).
    buffers = [t.detach().clone() for t in plain.buffers()]
    rng, zs = [], []
    with torch.no_grad():
        for x, a, b in pieces:
            rng.append(_RngState(cuda_devices))
            zs.append(plain(x[a:b]).float())  # (c, d)
        for buf, saved in zip(plain.buffers(), buffers):
            buf.copy_(saved)

    # 2. The loss over the whole (global) batch, and its gradient with respect to this rank's embeddings.
    z1 = torch.cat(zs[0::2]).requires_grad_()  # (N, d)
    z2 = torch.cat(zs[1::2]).requires_grad_()
    with torch.enable_grad():
        g1, g2 = (z1, z2) if gather is None else gather_pairs(z1, z2, gather)  # (world*N, d) each
        loss = loss_fn(g1, g2)
        grad1, grad2 = torch.autograd.grad(loss, [z1, z2])  # (N, d) each
    del zs

    # 3. Each forward again, with its graph, back-propagating its rows of dL/dz.
    for k, (x, a, b) in enumerate(pieces):
        sync = model.no_sync() if ddp and k < len(pieces) - 1 else contextlib.nullcontext()
        with sync, rng[k].replay(), torch.enable_grad():
            z = model(x[a:b])  # (c, d)
            z.backward((grad1, grad2)[k % 2][a:b].to(z.dtype))
    return loss.detach()
