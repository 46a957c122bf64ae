"""The pretraining epoch: steps over the batches, the learning-rate schedule, and a loss meter that reads
the device back only every ``log_every`` steps (one host synchronisation, so the GPU never waits)."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from tqdm import tqdm

from training.step import simclr_step
from utils.errors import UserError, one_line


class NonFiniteLoss(UserError):
    pass


class BatchError(UserError):
    """A step that could not run (e.g. an unreadable image in a worker) after ``step`` completed steps."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class LossMeter:
    """Sums the per-step losses on the device; ``read()`` returns the mean since the last read (one sync)."""

    def __init__(self) -> None:
        self.pending, self.n, self.total, self.count = None, 0, 0.0, 0
        self.tick = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.pending = loss if self.pending is None else self.pending + loss
        self.n += 1

    def read(self) -> tuple[float, int, float]:
        """(mean loss, steps, seconds) since the last read."""
        loss, n, seconds = self.pending.item() / self.n, self.n, time.perf_counter() - self.tick
        self.total, self.count = self.total + loss * n, self.count + n
        self.pending, self.n, self.tick = None, 0, time.perf_counter()
        return loss, n, seconds

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


def train_epoch(net, batches, loss_fn: Callable, optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float],
                step: int, *, device: torch.device, batch_size: int, chunk_size: int = 0,
                gather: Callable | None = None, log_every: int = 10, log: Callable[..., None] = lambda **row: None,
                stop: Callable[[], bool] = lambda: False, stop_every: int | None = None, desc: str = "",
                show: bool = True) -> tuple[int, float, bool]:
    """One pass over ``batches`` of (x1, x2); returns the global step after it, the epoch's mean loss, and
    whether ``stop()``, asked every ``stop_every`` steps (default ``log_every``: under DDP asking is a
    collective, so it waits for the loss read), ended it early. Each read of the loss, every ``log_every``
    steps and after the last, calls ``log(step=, lr=, loss=, images_per_s=)``; a non-finite loss raises
    NonFiniteLoss. ``batch_size``: images per step over all processes (for images/s)."""
    net.train()
    meter = LossMeter()
    bar = tqdm(batches, desc=desc, dynamic_ncols=True, leave=False, disable=not show)
    lr, stopped, stop_every = 0.0, False, stop_every or log_every
    try:
        for done, (x1, x2) in enumerate(bar, 1):
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
            meter.add(simclr_step(net, x1, x2, loss_fn, chunk_size, gather))
            optimizer.step()
            step += 1
            if meter.n == log_every:
                _report(meter, step, lr, batch_size, log, bar)
            if done % stop_every == 0 and stop():
                stopped = True
                break
    except NonFiniteLoss:
        raise
    except UserError as e:  # the steps done so far stand: logged here, saved by the caller
        if meter.n:
            _report(meter, step, lr, batch_size, log, bar)
        raise BatchError(one_line(e), step) from None
    if meter.n:
        _report(meter, step, lr, batch_size, log, bar)
    bar.close()
    return step, meter.mean, stopped


def _report(meter: LossMeter, step: int, lr: float, batch_size: int, log: Callable, bar) -> None:
    loss, n, seconds = meter.read()
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss} at step {step}")
    images_per_s = n * batch_size / seconds
    log(step=step, lr=lr, loss=loss, images_per_s=images_per_s)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.0f}")
