"""Data-parallel training over processes (``torchrun``): process-group setup, global negatives, SyncBN.

SimCLR's negatives are the other images of the *global* batch (Chen et al. 2020, Sec. 2.2 and B.1:
"we aggregate BN mean and variance over all devices" and compute the loss over the batch of all
cores). With DistributedDataParallel every process embeds its own slice of the batch, so the
embeddings are all-gathered before NT-Xent (``gather_with_grad``), and BatchNorm layers are
replaced by synchronised ones (``convert_sync_batchnorm``: ``AllReduceSyncBatchNorm``, on every device).

The rule used throughout, which makes the gradients exact: every collective's backward is the
adjoint of its forward (all_gather <-> reduce-scatter of the sum, all_reduce <-> all_reduce; SyncBN's
backward does the adjoint of its forward's two all-reduces in one, as the gradients of the mean and
the variance are linear in two per-channel sums, which it all-reduces), so the local gradients of
all processes add up to the gradient of ``sum_r L_r``, where ``L_r`` is the loss computed on rank r.
Here each rank computes the same global loss L, so the sum is ``world * dL/dtheta``, and DDP's
gradient averaging (division by world) leaves exactly the gradient of one process on the
concatenated global batch.
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


def failing_rank(failed: bool, dist_info: DistInfo) -> int | None:
    """The highest rank on which ``failed`` is true, or None: one all-reduce of a CPU tensor under DDP, over gloo
    (no GPU synchronisation), cheap enough to ask at every step."""
    if not dist_info.distributed:
        return dist_info.rank if failed else None
    t = torch.tensor([float(dist_info.rank + 1) if failed else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CONTROL.get("group"))
    return int(t.item()) - 1 if t.item() else None


def any_rank(flag: bool, dist_info: DistInfo) -> bool:
    """Whether ``flag`` is true on any rank (``failing_rank``), so that every rank acts alike."""
    return failing_rank(flag, dist_info) is not None


def wrap_model(net: nn.Module, dist_info: DistInfo, compiled: bool = False,
               sync_bn: bool = False) -> tuple[nn.Module, str]:
    """DistributedDataParallel under torchrun; DataParallel over all visible GPUs without it; else ``net``
    itself. Returns the wrapped network and a description for the log. A ``compiled`` network is refused
    under DataParallel: its replicas would run GPU 0's compiled weights. With ``sync_bn`` (its BatchNorm layers
    converted by ``convert_sync_batchnorm``) DDP does not broadcast rank 0's buffers at every forward: the
    running statistics are the same on every rank already, and the broadcast would be one more collective."""
    if compiled and not dist_info.distributed and dist_info.device.type == "cuda" and torch.cuda.device_count() > 1:
        raise UserError("--compile does not work under DataParallel: launch with torchrun --nproc_per_node=N, "
                        "or leave out --compile")
    if dist_info.distributed:
        ids = [dist_info.local_rank] if dist_info.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(net, device_ids=ids, broadcast_buffers=not sync_bn)
        return ddp, f"DDP over {dist_info.world_size} processes"
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


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training BatchNorm over the union of the ranks' batches: ``y = (x - mean) / sqrt(var + eps) * weight + bias``
    with the per-channel mean and biased variance of all ranks' elements, from two all-reduces of sums; its
    backward all-reduces the per-channel sums of the output gradient g and of g * x_hat, the two sums that the
    gradients of mean and var are linear in. Only the input is saved (as BatchNorm saves it); x_hat is recomputed."""

    @staticmethod
    def forward(ctx, input, weight, bias, eps: float, group):
        acc = torch.float64 if input.device.type == "cpu" else torch.float32  # why: see AllReduceSyncBatchNorm
        dims = [0] + list(range(2, input.dim()))  # every dimension but the channels
        shape = (1, -1) + (1,) * (input.dim() - 2)  # a (C,) tensor broadcast over (B, C, ...)
        count = torch.full((1,), input.numel() // input.shape[1], dtype=acc, device=input.device)
        sums = torch.cat([input.sum(dims, dtype=acc), count])
        dist.all_reduce(sums, group=group)  # (C + 1,): every rank's sum per channel, then its element count
        n = sums[-1]
        mean = sums[:-1] / n
        var = (input - mean.view(shape)).square_().sum(dims)  # in the accumulation dtype, by type promotion
        dist.all_reduce(var, group=group)
        var /= n  # biased, as BatchNorm normalises with
        rstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(input, weight, mean, rstd, n)
        ctx.dims, ctx.shape, ctx.group = dims, shape, group
        ctx.mark_non_differentiable(mean, var, n)
        scale = rstd if weight is None else rstd * weight.to(acc)  # y = x * scale + shift, per channel
        shift = -mean * scale if bias is None else bias.to(acc) - mean * scale
        y = torch.addcmul(shift.view(shape), input, scale.view(shape)).to(input.dtype)
        return y, mean, var, n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, _mean, _var, _n):
        input, weight, mean, rstd, n = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        acc = mean.dtype
        x_hat = (input - mean.view(shape)).mul_(rstd.view(shape))  # (B, C, ...) in acc
        local = torch.cat([grad_y.sum(dims, dtype=acc), (grad_y * x_hat).sum(dims)])  # (2C,)
        total = local.clone()
        dist.all_reduce(total, group=ctx.group)  # every rank joins, whether or not it needs grad_input
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            sum_g, sum_g_x_hat = total.chunk(2)
            scale = rstd if weight is None else rstd * weight.to(acc)
            grad_input = torch.sub(grad_y, x_hat.mul_((sum_g_x_hat / n).view(shape)).add_((sum_g / n).view(shape)))
            grad_input = grad_input.mul_(scale.view(shape)).to(input.dtype)
        if weight is not None:  # this rank's share; DDP averages it over the ranks
            grad_bias, grad_weight = (t.to(weight.dtype) for t in local.chunk(2))
        return grad_input, grad_weight, grad_bias, None, None


class AllReduceSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm synchronised across the process group by all-reduces, on every device; for 2D to 5D inputs
    (B, C, ...), like ``nn.SyncBatchNorm``.

    In training under a process group of several ranks, the batch mean and biased variance are those of the
    union of all ranks' batches (``_SyncBatchNormFunction``: the gradients of one BatchNorm over that union), and
    the running statistics are updated as BatchNorm does (unbiased variance, or the cumulative average when
    ``momentum`` is None); they come out the same on every rank. Otherwise it is plain BatchNorm.

    Why not ``nn.SyncBatchNorm``: it all-gathers each rank's mean, inverse std and count, and drops the ranks
    with no elements by boolean-mask indexing, whose output shape depends on values, so the host waits for the
    GPU at every BN layer's forward; nor does it run on the CPU. Sums need no such mask (an empty rank adds
    zeros), and the element count, the variance correction n / (n - 1) and the momentum stay tensors on the
    input's device: no value is read back on the host in forward or backward.

    The sums are accumulated in float64 on the CPU: those of the backward (of the gradient and of gradient x
    normalised input) can cancel to a small fraction of their terms, float32 sums were visibly off against torch's
    BatchNorm on such a batch, and torch's CPU BatchNorm accumulates in float64 too. On GPUs they are float32, as
    torch's CUDA BatchNorm: float64 would multiply the memory traffic of bf16 activations and run far slower.
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
        y, mean, var, n = _SyncBatchNormFunction.apply(input, self.weight, self.bias, self.eps, group)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked  # a tensor
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1).clamp(min=1)).to(self.running_var.dtype), m)
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm*D in ``module`` becomes an ``AllReduceSyncBatchNorm``, synchronised across the process group.

    The layers converted by ``nn.SyncBatchNorm.convert_sync_batchnorm`` are given the class
    ``AllReduceSyncBatchNorm`` (same attributes). Parameters and buffers stay the same tensors, so
    ``state_dict`` keys and values are unchanged. The class is the same on every device.
    """
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for m in module.modules():
        if type(m) is nn.SyncBatchNorm:
            m.__class__ = AllReduceSyncBatchNorm
    return module
