"""LARS (You et al. 2017) as in the official SimCLR TF code (``lars_optimizer.py``).

For every parameter w of a group with ``adapt=True`` (the default)::

    g     <- g + weight_decay * w
    trust <- eta * ||w|| / ||g||        (1 where either norm is 0)
    v     <- momentum * v + lr * trust * g
    w     <- w - v

A group with ``adapt=False`` gets no trust ratio: ``v <- momentum * v + lr * (g + weight_decay * w)``. Decay and
adaptation are set apart as the official optimizer's two exclusion lists; ``optim.groups.param_groups`` decides
them once (weights with ndim > 1 decay and adapt; BN parameters and biases do neither; the fine-tuning
classifier's weight decays without adapting, as the official code's L2 on ``head_supervised``).

All the parameters of a group are updated with ``torch._foreach_*`` ops: a few multi-tensor kernels on a GPU
instead of about ten small kernels per parameter, and no host synchronisation. A foreach op over two lists fuses
only when the tensors at each index have the same sizes and strides, so the trust ratios are not multiplied in as
one 0-dim tensor per gradient (one kernel per parameter) but spread, on the device, into views shaped and strided
like the momentum buffers (``_spread``). The tests compare the update bit for bit with the per-parameter loop, with
the formula above, and check that every foreach op can fuse.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 1e-3) -> None:
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("momentum and weight_decay must be >= 0 and trust_coefficient > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, adapt=True))
        self._numels: dict[tuple, torch.Tensor] = {}  # for _spread; not in state_dict, so not in checkpoints

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # pickle and deepcopy keep only defaults, state and param_groups
        self._numels = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            _update(params, [self.state[p]["momentum_buffer"] for p in params], group, self._numels)
        return loss


def _trust(w_norm: torch.Tensor, g_norm: torch.Tensor, eta: float) -> torch.Tensor:
    """eta * ||w|| / ||g||, and 1 where either norm is 0 (elementwise over stacked norms too)."""
    return torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))


def _spread(trust: torch.Tensor, like: list[torch.Tensor], numels_on_device: dict) -> list[torch.Tensor]:
    """``trust[i]`` at every element of a view with the sizes and strides of ``like[i]`` (dense tensors), for all i:
    a foreach op pairing these views with tensors of that layout fuses, where 0-dim tensors would not. The views
    split one flat tensor made by ``repeat_interleave`` on the device; its repeats (the numels) are uploaded once,
    on the first step, and kept in ``numels_on_device``."""
    numels = tuple(t.numel() for t in like)
    key = (trust.device, numels)
    if key not in numels_on_device:  # int32 when it fits: repeat_interleave's index is as long as the output
        dtype = torch.int32 if sum(numels) < 2**31 else torch.int64
        numels_on_device[key] = torch.tensor(numels, dtype=dtype, device=trust.device)
    flat = torch.repeat_interleave(trust, numels_on_device[key], output_size=sum(numels))  # (sum of numels,)
    return [part.as_strided(t.size(), t.stride()) for part, t in zip(flat.split(numels), like)]


def _update(params: list[torch.Tensor], bufs: list[torch.Tensor], group: dict, numels_on_device: dict) -> None:
    """The update of the module docstring with multi-tensor ops, one device and dtype per call."""
    by_kind: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        by_kind.setdefault((p.device, p.dtype), []).append(i)
    lr, m, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["trust_coefficient"]
    adapt = group["adapt"]
    for idx in by_kind.values():
        ps, vs = [params[i] for i in idx], [bufs[i] for i in idx]
        gs = [p.grad for p in ps]
        if wd != 0:
            gs = torch._foreach_add(gs, ps, alpha=wd)
        if adapt:
            trust = _trust(torch.stack(torch._foreach_norm(ps)), torch.stack(torch._foreach_norm(gs)), eta)
            gs = torch._foreach_mul(gs, _spread(trust, vs, numels_on_device))  # views laid out as the buffers
        torch._foreach_mul_(vs, m)
        torch._foreach_add_(vs, gs, alpha=lr)
        torch._foreach_sub_(ps, vs)
