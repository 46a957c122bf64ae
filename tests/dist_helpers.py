"""Helpers of the multi-process tests: gloo process groups on the CPU, tiny networks and batches."""
from __future__ import annotations

import gc
import multiprocessing
import os
import socket
import sys

import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from models.head import ProjectionHead
from utils.interrupt import StopRequest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int, args: tuple, environ: dict) -> None:
    os.environ.clear()  # the test process's environment at the call, as the spawn start method passes it
    os.environ.update(environ)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from utils.distributed import cleanup_distributed, init_distributed
    info = init_distributed(device="cpu")  # reads the variables torchrun would set
    assert info.distributed and info.world_size == world and info.rank == rank
    try:
        fn(info, *args)
    finally:
        # DDP objects in reference cycles (comm hooks) must die before their process group, not during
        # interpreter shutdown: there their destructors can abort the process ("terminate called ...").
        gc.collect()
        cleanup_distributed()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip C++ static destructors at exit; results were written to files by fn


# Imported once per test process by multiprocessing's fork server, before it forks the ranks: each rank then starts
# in a fraction of a second instead of importing torch and torchvision again (seconds per process on 2 cores).
_PRELOAD = ["torch", "torch.distributed", "torch.nn.parallel", "simclr", "tests.dist_helpers"]


def spawn(fn, world: int, *args) -> None:
    """Run ``fn(dist_info, *args)`` in ``world`` new processes joined in a gloo process group on the CPU.

    The processes are forked from multiprocessing's fork server (started once per test process; it has only
    imported _PRELOAD, and touches no GPU): as with the spawn start method, they get the test process's
    environment, working directory and sys.path, and no other state of it.
    ``fn`` must be importable (module level); it returns results by writing files (e.g. torch.save)."""
    multiprocessing.set_forkserver_preload(_PRELOAD)  # no effect once the server runs
    mp.start_processes(_entry, args=(fn, world, free_port(), args, dict(os.environ)), nprocs=world, join=True,
                       start_method="forkserver")


class TinyNet(nn.Module):
    """conv-BN-ReLU x2, pooled, then the SimCLR projection head (Linear-BN-ReLU-Linear-BN): (B, 3, 8, 8) -> (B, 8).

    ``bn=False`` replaces every BatchNorm by Identity; ``dropout`` adds a Dropout before the head."""

    def __init__(self, bn: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        norm2d = nn.BatchNorm2d if bn else (lambda c: nn.Identity())
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=not bn), norm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=not bn), norm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = ProjectionHead(16, 16, 8, 2)
        if not bn:
            for block in self.head.layers:
                block[1] = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, 8)


def tiny_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (n, 3, 8, 8) 'views' (random, row i of both is pair i)."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 3, 8, 8, generator=g)
    return x1, x1 + 0.3 * torch.randn(n, 3, 8, 8, generator=g)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when both are 0)."""
    den = b.norm().item()
    return (a - b).norm().item() / den if den > 0 else (a - b).norm().item()


def max_rel_err(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (a.keys() ^ b.keys())
    return max(rel_err(a[k], b[k]) for k in a)


class HostReads(TorchDispatchMode):
    """Records the ops, run while it is active (forward and backward), that read a tensor's values on the host
    or copy host values into a tensor: ``.item()`` and ``.tolist()`` (``_local_scalar_dense``), ``torch.tensor``
    of a Python value (``lift_fresh``), and the ops whose output shape depends on values (``nonzero``,
    ``masked_select``, boolean-mask indexing). On a GPU each is a host round trip: the host waits for the GPU."""
    OPS = {"lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "nonzero", "masked_select"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.OPS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class StopAfter(StopRequest):
    """A stop request that arrives at the ``n``-th time it is asked, as SIGTERM would; the loop asks when it
    reads the loss (every --log-freq steps) and at each epoch's end."""
    n = 3

    def __init__(self):
        super().__init__()
        self.checks = 0

    @property
    def requested(self):
        self.checks += 1
        return self.checks > StopAfter.n

    @requested.setter
    def requested(self, value):
        pass
