"""LARS (You et al. 2017) as in the official SimCLR TF code (``lars_optimizer.py``).

For every parameter w of a group with ``adapt=True`` (the default)::

    g     <- g + weight_decay * w
    trust <- eta * ||w|| / ||g||        (1 where either norm is 0)
    v     <- momentum * v + lr * trust * g
    w     <- w - v

A group with ``adapt=False`` gets neither weight decay nor the trust ratio:
``v <- momentum * v + lr * g``. Which parameters adapt is decided once, by ``optim.groups.param_groups``
(weights with ndim > 1 adapt; BN parameters, biases and the fine-tuning classifier do not, as the
official code's exclusions).

All the parameters of a group are updated with ``torch._foreach_*`` ops (a few multi-tensor kernels on a
GPU instead of about ten small kernels per parameter, and no host synchronisation); the tests compare it with
the per-parameter loop and with the formula above.
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
            _update(params, [self.state[p]["momentum_buffer"] for p in params], group)
        return loss


def _trust(w_norm: torch.Tensor, g_norm: torch.Tensor, eta: float) -> torch.Tensor:
    """eta * ||w|| / ||g||, and 1 where either norm is 0 (elementwise over stacked norms too)."""
    return torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))


def _update(params: list[torch.Tensor], bufs: list[torch.Tensor], group: dict) -> None:
    """The update of the module docstring with multi-tensor ops, one device and dtype per call."""
    by_kind: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        by_kind.setdefault((p.device, p.dtype), []).append(i)
    lr, m, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["trust_coefficient"]
    adapt = group["adapt"]
    for idx in by_kind.values():
        ps, vs = [params[i] for i in idx], [bufs[i] for i in idx]
        gs = [p.grad for p in ps]
        if adapt:
            if wd != 0:
                gs = torch._foreach_add(gs, ps, alpha=wd)
            trust = _trust(torch.stack(torch._foreach_norm(ps)), torch.stack(torch._foreach_norm(gs)), eta)
            gs = torch._foreach_mul(gs, list(trust.unbind(0)))  # each gradient times its own 0-dim trust
        torch._foreach_mul_(vs, m)
        torch._foreach_add_(vs, gs, alpha=lr)
        torch._foreach_sub_(ps, vs)
