"""(image, label) datasets for evaluation and fine-tuning, for DataLoader workers.

Transformed applies a fixed transform; SeededTransformed a random one seeded per (seed, epoch, image) by
``seeded``, so its augmentations do not depend on the number of workers. Pretraining's inputs are
data/loaders.py.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils.data import Dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct, reproducible RNG seed for (run seed, epoch, image index)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


@contextmanager
def seeded(seed: int, epoch: int, index: int):
    """Run the block with the CPU RNG seeded by (seed, epoch, index); the global RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(seed, epoch, index))
        yield


class Transformed(Dataset):
    """(transform(image), label) pairs."""

    def __init__(self, images, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images.image(i)), int(self.images.labels[i])


class SeededTransformed(Dataset):
    """(transform(image), label) for keys ``(epoch, index)`` (data.sampler.EpochSampler), each seeded by
    (seed, epoch, index): random augmentations that do not depend on the number of workers."""

    def __init__(self, images, transform, seed: int) -> None:
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, i = key
        with seeded(self.seed, epoch, i):
            return self.transform(self.images.image(i)), int(self.images.labels[i])
