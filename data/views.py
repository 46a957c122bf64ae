"""Datasets that turn images into training inputs, for DataLoader workers.

TwoCrops is the workers' share of pretraining on image trees: decode, then cut each view's random
resized crop with the box drawn from the view's key, as the batched augmentation would; the device
finishes the views (data.device_views.DeviceFinish). TwoViews runs a whole per-image transform (the
torchvision reference pipeline, for tests and benchmarks) and Transformed / SeededTransformed give
(image, label) pairs for evaluation and fine-tuning; random transforms there are seeded per image.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from data.batched_augment import ViewKeys, sample_crop_params


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


class TwoCrops(Dataset):
    """Keys ``(epoch, index)`` (data.sampler.EpochSampler) -> (crop0, crop1, index): the random resized
    crops of views 0 and 1 of the image, uint8 (3, size, size), bicubic as the reference pipeline.

    Each box is ``sample_crop_params`` of the view's key (seed, epoch, index, view): the box the
    in-memory path draws for the same image, whatever the worker, batch or process.
    """

    def __init__(self, images, size: int, seed: int = 0) -> None:
        self.images, self.size, self.seed = images, size, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, i = key
        img = self.images.image(i)
        index = torch.tensor([i])
        crops = []
        for view in (0, 1):
            box = sample_crop_params(ViewKeys(index, self.seed, epoch, view), img.height, img.width)
            top, left, h, w = (int(v) for v in box)
            crop = TF.resized_crop(img, top, left, h, w, [self.size, self.size], InterpolationMode.BICUBIC)
            crops.append(TF.pil_to_tensor(crop))
        return crops[0], crops[1], i


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
