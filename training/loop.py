"""The SimCLR update and the pretraining epoch, top to bottom.

``train_step`` is one optimizer update: the lr for this step, both views embedded at the run's precision, the
embeddings of every process gathered (the global batch's negatives), NT-Xent, backward, the optimizer step.
``train_one_epoch`` runs it over an epoch's batches with a loss meter that reads the device back only every
``log_every`` steps (one host synchronisation, so the GPU never waits) and asks after every step whether to stop.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from tqdm import tqdm

from training.build import Pretraining
from utils.distributed import DistInfo, any_rank, failing_rank, gather_pairs
from utils.errors import UserError, one_line


class NonFiniteLoss(UserError):
    pass


class BatchError(UserError):
    """A step that could not run (e.g. an unreadable image in a worker) after ``step`` completed steps."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def train_step(run: Pretraining, x1: torch.Tensor, x2: torch.Tensor, lr: float) -> torch.Tensor:
    """One optimizer update on this process's pairs ``x1``, ``x2`` (N, 3, H, W), row i of both the same image;
    returns the loss, detached (not read back)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    z1, z2 = run.embed.forward(x1, x2)  # (N, d) each, float32; the network at the run's precision
    if run.gather is not None:
        z1, z2 = gather_pairs(z1, z2, run.gather)  # (W*N, d) each: every process's pairs, with gradients
    loss = run.criterion(z1, z2)  # NT-Xent over the global batch
    run.embed.backward(loss)  # through the graph; with --chunk-size, gradient caching's chunked re-forward
    run.optimizer.step()
    return loss.detach()


class LossMeter:
    """Sums the per-step losses on the device; ``read()`` returns the mean since the last read (one sync)."""

    def __init__(self) -> None:
        self.pending, self.n, self.total, self.count = None, 0, 0.0, 0
        self.tick = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.pending = loss if self.pending is None else self.pending + loss
        self.n += 1

    def read(self, step: int) -> tuple[float, int, float]:
        """(mean loss, steps, seconds) since the last read; NonFiniteLoss if the loss is not finite."""
        loss, n, seconds = self.pending.item() / self.n, self.n, time.perf_counter() - self.tick
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss} at step {step}")
        self.total, self.count = self.total + loss * n, self.count + n
        self.pending, self.n, self.tick = None, 0, time.perf_counter()
        return loss, n, seconds

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)


def every_rank_read(batches, dist_info: DistInfo):
    """``batches``, each only once every process has read its own (one CPU all-reduce a step under torchrun): a
    process that cannot read its batch (a UserError such as a corrupt image, or a DataLoader worker's crash) raises
    its error, and the others a UserError that names it, all before the step's collectives, where they would wait
    for it forever (and rank 0 could not save)."""
    if not dist_info.distributed:
        yield from batches
        return
    batches = iter(batches)
    while True:
        batch, error = None, None
        try:
            batch = next(batches)
        except StopIteration:  # every rank has as many batches (data/sampler.py)
            return
        except Exception as e:
            error = e
        rank = failing_rank(error is not None, dist_info)
        if rank is not None:
            raise error or UserError(f"process {rank} could not read its batch (its error line names the file)")
        yield batch


def train_one_epoch(run: Pretraining, batches, lr_at: Callable[[int], float], epoch: int, step: int, *,
                    device: torch.device, images_per_step: int, log=None, stop=None,
                    dist_info: DistInfo = DistInfo(), log_every: int = 10, desc: str = "",
                    show: bool = True) -> tuple[int, float, bool]:
    """One pass over ``batches`` of (x1, x2) from global step ``step``; returns the step after it, the epoch's mean
    loss, and whether it stopped early: ``stop.requested`` (utils.interrupt.StopRequest) on any rank, asked after
    every step. Every ``log_every`` steps and after the last, a row ``epoch, step, lr, loss, images_per_s`` goes to
    ``log.write`` (utils.csvlog.CSVLog). A non-finite loss raises NonFiniteLoss; an error while reading a batch,
    BatchError with the steps done. ``images_per_step``: over all processes, for images/s."""
    run.net.train()
    meter = LossMeter()
    bar = tqdm(batches, desc=desc, dynamic_ncols=True, leave=False, disable=not show)
    lr, stopped = 0.0, False

    def report() -> None:
        loss, n, seconds = meter.read(step)
        if log is not None:
            log.write(epoch=epoch + 1, step=step, lr=lr, loss=loss, images_per_s=n * images_per_step / seconds)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{n * images_per_step / seconds:.0f}")

    try:
        for x1, x2 in every_rank_read(bar, dist_info):
            lr = lr_at(step)
            x1, x2 = x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)
            meter.add(train_step(run, x1, x2, lr))
            step += 1
            if meter.n == log_every:
                report()
            if stop is not None and any_rank(stop.requested, dist_info):
                stopped = True
                break
    except NonFiniteLoss:
        raise
    except UserError as e:  # the steps done so far stand: logged here, saved by the caller
        if meter.n:
            report()
        raise BatchError(one_line(e), step) from None
    if meter.n:
        report()
    bar.close()
    return step, meter.mean, stopped
