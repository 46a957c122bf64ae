"""A seeded shuffling sampler that yields ``(epoch, index)`` keys.

The order of epoch e is a permutation drawn from (seed, e) alone, so a resumed run replays it;
the epoch travels with each key, so the per-image augmentation seed is right even in persistent
DataLoader workers. With ``num_replicas > 1`` each rank takes every num_replicas-th index of
the same permutation (truncated to equal length), as DistributedSampler does.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        self.n, self.seed, self.shuffle, self.num_replicas, self.rank = n, seed, shuffle, num_replicas, rank
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate epoch ``epoch``, leaving out its first ``skip`` keys of this rank (mid-epoch resume)."""
        self.epoch, self.skip = epoch, skip

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            perm = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.n // self.num_replicas
        return perm[self.rank::self.num_replicas][:per_rank]

    def __iter__(self):
        for i in self.order(self.epoch)[self.skip:]:
            yield (self.epoch, i)

    def __len__(self) -> int:
        return self.n // self.num_replicas - self.skip
