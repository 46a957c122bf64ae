"""Learning-rate schedules as pure functions of the step (Chen et al. 2020, Sec. B.1: linear warmup
for 10 epochs, then cosine decay without restarts), following the official TF code: during warmup
``lr = base * step / warmup_steps`` (so step 0 has lr 0), then ``base * 0.5 * (1 + cos(pi * t))``
with t the fraction of the post-warmup steps done."""
from __future__ import annotations

import math
from typing import Callable


def warmup_cosine(step: int, base_lr: float, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup from 0 to ``base_lr`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_constant(step: int, base_lr: float, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to ``base_lr``, then constant."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return base_lr


def warmup_steps(warmup_epochs: float, n: int, batch_size: int, batching: str) -> int:
    """The warmup's steps for ``n`` images in batches of ``batch_size`` (data/sampler.py's batchings): the
    official code's ``int(warmup_epochs * n // batch_size)`` for ``stream``, whole epochs' steps for ``epochs``."""
    if batching == "stream":
        return int(warmup_epochs * n // batch_size)
    return round(warmup_epochs * (n // batch_size))


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """The learning-rate scaling rule of Sec. B.1: linear ``base*B/256``, square root ``base*sqrt(B)``, or none."""
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling rule {rule!r}: use linear, sqrt or none")


def lr_schedule(lr: float, total_steps: int, warmup_steps: int, cosine: bool) -> Callable[[int], float]:
    """step -> learning rate: linear warmup, then cosine decay to 0 (``cosine``) or constant."""
    schedule = warmup_cosine if cosine else warmup_constant
    return lambda step: schedule(step, lr, total_steps, warmup_steps)
