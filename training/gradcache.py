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
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel



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


class CachedEmbedding:
    """Gradient caching as the step's forward/backward pair: ``forward`` embeds the batch chunk by chunk without
    graphs and returns the embeddings as leaves; the caller gathers them and computes the loss as usual;
    ``backward(loss)`` takes dL/dz and runs each chunk again with its graph, back-propagating its rows.

    ``net`` maps (c, 3, H, W) to (c, d) float32 (utils.precision.PrecisionNet), maybe inside DataParallel or
    DistributedDataParallel (then gradients are all-reduced once, after the last backward: the others run under
    ``no_sync()``). ``chunk_size`` pairs per chunk need not divide N (``chunk_bounds``)."""

    def __init__(self, net: nn.Module, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.net, self.chunk_size = net, chunk_size
        self.ddp = isinstance(net, DistributedDataParallel)
        self.plain = net.module if self.ddp else net  # the first pass needs no DDP reducer nor buffer broadcast

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z1, z2), (N, d) each, leaves that require grad; BN running statistics as they were before (they are
        updated by the second pass only)."""
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape; got {tuple(x1.shape)} and {tuple(x2.shape)}")
        cuda_devices = _cuda_devices(self.net, x1.device)
        # The forwards: each chunk's view 1, then its view 2, each its own BN batch of c images.
        self.pieces = [(x, a, b) for a, b in chunk_bounds(x1.shape[0], self.chunk_size) for x in (x1, x2)]
        buffers = [t.detach().clone() for t in self.plain.buffers()]
        self.rng, zs = [], []
        with torch.no_grad():
            for x, a, b in self.pieces:
                self.rng.append(_RngState(cuda_devices))
                zs.append(self.plain(x[a:b]).float())  # (c, d)
            for buf, saved in zip(self.plain.buffers(), buffers):
                buf.copy_(saved)
        self.z1 = torch.cat(zs[0::2]).requires_grad_()  # (N, d)
        self.z2 = torch.cat(zs[1::2]).requires_grad_()
        return self.z1, self.z2

    def backward(self, loss: torch.Tensor) -> None:
        """dL/dz of this rank's embeddings, then each forward again with its graph, back-propagating its rows."""
        grad1, grad2 = torch.autograd.grad(loss, [self.z1, self.z2])  # (N, d) each
        self.z1 = self.z2 = None
        for k, (x, a, b) in enumerate(self.pieces):
            sync = self.net.no_sync() if self.ddp and k < len(self.pieces) - 1 else contextlib.nullcontext()
            with sync, self.rng[k].replay(), torch.enable_grad():
                z = self.net(x[a:b])  # (c, d)
                z.backward((grad1, grad2)[k % 2][a:b].to(z.dtype))
        self.pieces = self.rng = None
