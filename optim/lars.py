"""LARS (You et al. 2017) as in the official SimCLR TF code (``lars_optimizer.py``).

For every parameter w with ``w.ndim > 1`` (convolution and linear weights)::

    g     <- g + weight_decay * w
    trust <- eta * ||w|| / ||g||        (1 where either norm is 0)
    v     <- momentum * v + lr * trust * g
    w     <- w - v

Parameters with ``w.ndim == 1`` (BN scales and shifts, biases) get neither weight decay nor
the trust ratio: ``v <- momentum * v + lr * g``. One rule, by shape, no name matching. A param
group with ``adapt=False`` gets that plain momentum update for all its parameters (the official
fine-tuning code excludes its supervised head from LARS this way).
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
            lr, m, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1 and group["adapt"]:
                    if wd != 0:
                        g = g.add(p, alpha=wd)
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"]
                v.mul_(m).add_(g, alpha=lr)
                p.sub_(v)
        return loss
