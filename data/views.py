"""Datasets that turn images into training inputs: two augmented views, or (image, label) pairs."""
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


class TwoViews(Dataset):
    """Two independently augmented views of each image, for contrastive pretraining.

    Keys are ``(epoch, index)`` (see data.sampler.EpochSampler); each key seeds its own RNG, so the
    views are the same whatever the number of workers, and a resumed run sees exactly the views
    it would have seen.
    """

    def __init__(self, images, transform, seed: int = 0) -> None:
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        img = self.images.image(i)
        with seeded(self.seed, epoch, i):
            return self.transform(img), self.transform(img)


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
    (seed, epoch, index) as TwoViews: random augmentations that do not depend on the number of workers."""

    def __init__(self, images, transform, seed: int) -> None:
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, i = key
        with seeded(self.seed, epoch, i):
            return self.transform(self.images.image(i)), int(self.images.labels[i])
