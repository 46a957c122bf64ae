"""Data-parallel training over processes (``torchrun``): process-group setup, global negatives, SyncBN.

SimCLR's negatives are the other images of the *global* batch (Chen et al. 2020, Sec. 2.2 and B.1:
"we aggregate BN mean and variance over all devices" and compute the loss over the batch of all
cores). With DistributedDataParallel every process embeds its own slice of the batch, so the
embeddings are all-gathered before NT-Xent (``gather_with_grad``), and BatchNorm layers are
replaced by synchronised ones (``convert_sync_batchnorm``; ``CPUSyncBatchNorm`` on CPU processes).

The rule used throughout, which makes the gradients exact: every collective's backward is the
adjoint of its forward (all_gather <-> reduce-scatter of the sum, all_reduce <-> all_reduce), so
the local gradients of all processes add up to the gradient of ``sum_r L_r``, where ``L_r`` is
the loss computed on rank r. Here each rank computes the same global loss L, so the sum is
``world * dL/dtheta``, and DDP's gradient averaging (division by world) leaves exactly the gradient
of one process on the concatenated global batch.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from utils.device import select_device
from utils.errors import UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_CONTROL = {}  # the gloo group of any_rank beside an nccl group: a flag on the CPU, no GPU synchronisation


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its global rank, the number of processes, its rank on this machine,
    and the device it computes on (``cuda:<local_rank>`` under torchrun with GPUs)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False  # a process group was initialised by init_distributed

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, logs and writes checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun (``torch.distributed.run``) started this process: it sets RANK, WORLD_SIZE, LOCAL_RANK."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def init_distributed(backend: str | None = None, device: str = "auto",
                     timeout: datetime.timedelta = datetime.timedelta(minutes=60)) -> DistInfo:
    """Join the process group that torchrun describes in the environment, or describe a single process.

    Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set) the process group is
    initialised with ``init_method="env://"``: backend ``nccl`` when computing on GPUs, else ``gloo``
    (``backend`` overrides). With GPUs each process takes ``cuda:LOCAL_RANK``, so launch at most one
    process per visible GPU. ``device`` is ``"auto"`` (GPUs when torch sees any), ``"cuda"`` or
    ``"cpu"``. The ``timeout`` covers the longest wait at a collective, e.g. the other ranks waiting
    at a barrier while rank 0 runs the kNN monitor (default: 60 minutes).

    Without torchrun nothing is initialised and the single-process description is returned; its
    device is ``cuda`` (all GPUs, for DataParallel) or ``cpu``.
    """
    use_cuda = select_device(device).type == "cuda"
    if not launched_by_torchrun():
        return DistInfo(device=torch.device("cuda" if use_cuda else "cpu"))
    if not dist.is_available():
        raise UserError("launched by torchrun, but this torch build has no torch.distributed: run without torchrun")
    rank, world_size, local_rank = (int(os.environ[v]) for v in TORCHRUN_VARS)
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process with LOCAL_RANK {local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                            f"visible): use --nproc_per_node={torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), init_method="env://",
                                rank=rank, world_size=world_size, timeout=timeout)
    if dist.get_backend() != "gloo" and "group" not in _CONTROL:
        _CONTROL["group"] = dist.new_group(backend="gloo", timeout=timeout)  # any_rank's CPU flags
    return DistInfo(rank, world_size, local_rank, dev, distributed=True)


def cleanup_distributed() -> None:
    """Destroy the process group, if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        _CONTROL.clear()
        dist.destroy_process_group()


def barrier(dist_info: DistInfo) -> None:
    """Wait for all ranks (no-op in a single process)."""
    if not dist_info.distributed:
        return
    if dist_info.device.type == "cuda":
        dist.barrier(device_ids=[dist_info.local_rank])
    else:
        dist.barrier()


def any_rank(flag: bool, dist_info: DistInfo) -> bool:
    """Whether ``flag`` is true on any rank (one all-reduce of a CPU tensor under DDP, over gloo), so that every
    rank acts alike; cheap enough to ask at every step."""
    if not dist_info.distributed:
        return flag
    t = torch.tensor([float(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CONTROL.get("group"))
    return bool(t.item())


def wrap_model(net: nn.Module, dist_info: DistInfo, compiled: bool = False) -> tuple[nn.Module, str]:
    """DistributedDataParallel under torchrun; DataParallel over all visible GPUs without it; else ``net``
    itself. Returns the wrapped network and a description for the log. A ``compiled`` network is refused
    under DataParallel: its replicas would run GPU 0's compiled weights."""
    if compiled and not dist_info.distributed and dist_info.device.type == "cuda" and torch.cuda.device_count() > 1:
        raise UserError("--compile does not work under DataParallel: launch with torchrun --nproc_per_node=N, "
                        "or leave out --compile")
    if dist_info.distributed:
        ids = [dist_info.local_rank] if dist_info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids), f"DDP over {dist_info.world_size} processes"
    if dist_info.device.type == "cuda" and torch.cuda.device_count() > 1:
        return nn.DataParallel(net), f"DataParallel over {torch.cuda.device_count()} GPUs"
    return net, "1 process"


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradient over ranks and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        return torch.cat(parts)  # (world*N, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # sum over every rank's loss
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N, ...) of every rank, in rank order, into (world*N, ...), differentiably.

    Every rank must pass the same shape. Forward: ``all_gather``. Backward: the gradient that
    arrives for the (world*N, ...) output is all-reduced (summed) across ranks, and this rank's N
    rows are returned as the gradient of ``x``.

    Why the sum: rank k computes the loss L_k(Z) of the gathered Z, and its rows ``Z[r]`` depend on
    rank r's parameters only through rank r's computation. The gradient that rank r's parameters
    need is ``sum_k dL_k/dZ[r]`` (reduce-scatter: the adjoint of all_gather), not only its own
    ``dL_r/dZ[r]``. When all ranks compute the same global NT-Xent (L_k = L), the sum is
    ``world * dL/dZ[r]``; DDP then averages the parameter gradients over ranks (divides by world),
    so each parameter gets ``sum_r dL/dZ[r] * dZ[r]/dtheta``: exactly the gradient of one process
    on the concatenated global batch. The common shortcuts are wrong by a factor: a plain
    ``all_gather`` (no gradient) with this rank's rows put back in place, or a gather that only
    slices the gradient without the all-reduce, both give ``1/world`` of it (LARS's trust ratio
    hides a uniform factor on the weights, not on its weight-decay balance nor on the BN parameters
    and biases, which it does not adapt). The all-reduce also keeps the gradient right
    when the ranks compute different losses (e.g. each only over its own anchors).

    In a single process (no process group, or world 1) ``x`` is returned as is.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_pairs(z1: torch.Tensor, z2: torch.Tensor, gather: Callable[[torch.Tensor], torch.Tensor] = gather_with_grad
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views' embeddings of the global batch, (world*N, d) each, from this rank's (N, d) each.

    One collective: ``gather(cat([z1, z2]))`` is (world*2N, d) in rank order, rearranged so that row
    i of both outputs is the same image (rank-major, as the concatenation of the ranks' batches).
    """
    n, d = z1.shape
    z = gather(torch.cat([z1, z2]))  # (world*2N, d)
    z = z.view(-1, 2, n, d)  # (world, view, N, d)
    return z[:, 0].reshape(-1, d), z[:, 1].reshape(-1, d)


class _AllReduceSum(torch.autograd.Function):
    """all_reduce (sum) whose backward is the same all_reduce: its adjoint."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU processes (gloo), which torch's ``nn.SyncBatchNorm`` does not run on (and which
    DDP refuses in CPU modules); for 2D to 5D inputs (B, C, ...), like ``nn.SyncBatchNorm``.

    In training under a process group of several ranks, the batch mean and biased variance are those
    of the union of all ranks' batches, from two differentiable all-reduces (sums of x, with the
    element count, then of (x - mean)^2); the running statistics are updated as BatchNorm does
    (unbiased variance). That is the computation of ``nn.SyncBatchNorm`` on GPUs, gradients included
    (its backward all-reduces the same sums), in float64: the sums of BN's backward (of the gradient and
    of gradient x normalised input) can cancel to a small fraction of their terms, and torch's CPU
    BatchNorm accumulates them in float64 too; in float32 they were off by up to 0.7% on such a batch.
    Otherwise it is plain BatchNorm.
    """

    process_group = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not (self.training and group is not None and dist.get_world_size(group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        c = input.shape[1]
        x = input.double().transpose(0, 1).reshape(c, -1)  # (C, this rank's elements per channel)
        count = torch.full((1,), float(x.shape[1]), dtype=torch.float64)
        sums = _AllReduceSum.apply(torch.cat([x.sum(1), count]), group)  # (C + 1,)
        n = sums[c].detach()
        mean = sums[:c] / n
        xc = x - mean[:, None]
        var = _AllReduceSum.apply(xc.pow(2).sum(1), group) / n  # biased, as BN normalises with
        y = xc * torch.rsqrt(var + self.eps)[:, None]
        if self.weight is not None:
            y = y * self.weight.double()[:, None] + self.bias.double()[:, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_((var.detach() * n / max(n.item() - 1, 1)).to(self.running_var.dtype), m)
        shape = (c, input.shape[0]) + tuple(input.shape[2:])
        return y.reshape(shape).transpose(0, 1).to(input.dtype)  # (B, C, ...) as the input


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str = "cuda") -> nn.Module:
    """Every BatchNorm*D in ``module`` becomes synchronised across the process group.

    On GPUs: ``nn.SyncBatchNorm.convert_sync_batchnorm``. On the CPU the converted layers are then
    given the class ``CPUSyncBatchNorm`` (same attributes). Parameters and buffers stay the same
    tensors, so ``state_dict`` keys and values are unchanged.
    """
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if torch.device(device).type == "cpu":
        for m in module.modules():
            if type(m) is nn.SyncBatchNorm:
                m.__class__ = CPUSyncBatchNorm
    return module
