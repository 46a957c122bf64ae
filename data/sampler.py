"""Seeded shuffling samplers that yield ``(epoch, index)`` keys.

The order of epoch e is a permutation drawn from (seed, e) alone, so a resumed run replays it; the epoch travels
with each key, so the per-image augmentation seed is right even in persistent DataLoader workers.

``EpochSampler`` (evaluation): one epoch's permutation; with ``num_replicas > 1`` each rank takes every
num_replicas-th index of it (truncated to equal length), as DistributedSampler does.

``StepSampler`` (pretraining): the keys of each optimizer step. Global batch s holds the images at positions
``s*B .. s*B + B - 1`` of the run's stream of images, and each rank every num_replicas-th of them. Two streams:
- ``stream`` batching, the official code's: the epochs' permutations one after the other (its ``repeat()``), so
  the batch that finishes an epoch's order may start the next one's; the run has ``N*epochs // B + 1`` steps,
  and epoch e ends with the step that holds the last image of its order;
- ``epochs`` batching, the PyTorch reproductions': N // B batches of each epoch's permutation, its last N % B
  images left out.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler

BATCHINGS = ("stream", "epochs")


def permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of epoch ``epoch``: a permutation of range(n) drawn from (seed, epoch) alone."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def epoch_starts(n: int, batch_size: int, num_epochs: int, batching: str) -> list[int]:
    """The first step of each epoch, then the run's number of steps: ``num_epochs + 1`` values, for ``n`` images
    in global batches of ``batch_size`` (module docstring)."""
    if batching == "epochs":
        return [e * (n // batch_size) for e in range(num_epochs + 1)]
    return [-(-e * n // batch_size) for e in range(num_epochs)] + [n * num_epochs // batch_size + 1]


class EpochSampler(Sampler):
    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        self.n, self.seed, self.shuffle, self.num_replicas, self.rank = n, seed, shuffle, num_replicas, rank
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch ``epoch``, leaving out its first ``skip`` keys of this rank (mid-epoch resume)."""
        self.epoch, self.skip = epoch, skip

    def order(self, epoch: int) -> list[int]:
        per_rank = self.n // self.num_replicas
        return permutation(self.n, self.seed, epoch, self.shuffle)[self.rank::self.num_replicas][:per_rank]

    def __iter__(self):
        for i in self.order(self.epoch)[self.skip:]:
            yield (self.epoch, i)

    def __len__(self) -> int:
        return self.n // self.num_replicas - self.skip


class StepSampler(Sampler):
    """Pretraining's keys, ``batch_size // num_replicas`` per step and rank (module docstring); ``starts``:
    ``epoch_starts`` of the run."""

    def __init__(self, n: int, batch_size: int, num_epochs: int, batching: str, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        self.n, self.batch_size, self.batching, self.seed = n, batch_size, batching, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.starts = epoch_starts(n, batch_size, num_epochs, batching)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate the steps of epoch ``epoch`` from its ``skip``-th on (mid-epoch resume)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return (self.starts[self.epoch + 1] - self.starts[self.epoch] - self.skip) * (self.batch_size //
                                                                                       self.num_replicas)

    def __iter__(self):
        first, end = self.starts[self.epoch] + self.skip, self.starts[self.epoch + 1]
        orders = {}
        for step in range(first, end):
            # the stream's position of the step's first image, as (epoch of its order, place in it)
            order_epoch, start = divmod(step * self.batch_size, self.n) if self.batching == "stream" else \
                (self.epoch, (step - self.starts[self.epoch]) * self.batch_size)
            for p in range(start + self.rank, start + self.batch_size, self.num_replicas):
                e, j = order_epoch + p // self.n, p % self.n
                if e not in orders:
                    orders[e] = permutation(self.n, self.seed, e)
                yield (e, orders[e][j])
