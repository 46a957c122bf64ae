"""Parameter groups: the one weight-decay split of every optimiser here (LARS, SGD, fine-tuning)."""
from __future__ import annotations

import torch
from torch import nn

from optim.lars import LARS


def param_groups(model: nn.Module, weight_decay: float, unadapted: nn.Module | None = None) -> list[dict]:
    """Weights (ndim > 1) get ``weight_decay`` and LARS adaptation; BN parameters and biases (ndim <= 1)
    get neither, as the official code's exclusion of 'batch_normalization' and 'bias'. Parameters of
    ``unadapted`` (the fine-tuning classifier: the official ``head_supervised``) are not adapted, and its weight
    decays (the official code adds ``weight_decay * l2_loss`` of that kernel to the fine-tuning loss).
    Frozen parameters (requires_grad False) are left out; empty groups are dropped."""
    excluded = {id(p) for p in unadapted.parameters()} if unadapted is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in excluded]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "adapt": True},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "adapt": False}]
    if unadapted is not None:
        head = [p for p in unadapted.parameters() if p.requires_grad]
        groups += [{"params": [p for p in head if p.ndim > 1], "weight_decay": weight_decay, "adapt": False},
                   {"params": [p for p in head if p.ndim <= 1], "weight_decay": 0.0, "adapt": False}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    trust_coefficient: float = 1e-3, unadapted: nn.Module | None = None,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """``lars`` or ``sgd`` (momentum, optionally Nesterov) over ``param_groups(model, weight_decay, unadapted)``."""
    groups = param_groups(model, weight_decay, unadapted)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}: use lars or sgd")
