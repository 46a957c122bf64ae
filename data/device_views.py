"""Two augmented views per image made in batches on the training device.

- DeviceTwoViews, for datasets held in memory (CIFAR, STL-10, the sample): the uint8 images live on
  the device as one (N, 3, H, W) tensor; each step gathers its batch and runs
  data.batched_augment.BatchedSimCLRAugment twice, no DataLoader workers at all.
- DeviceFinish, for image trees read from disk (ImageNet): DataLoader workers decode and take the two
  random resized crops (data.views.TwoViews with a crop-only transform, uint8), the device does flip,
  colour jitter, grayscale, blur and normalisation in batches.
The device's random draws use a generator seeded by (seed, rank, epoch, batch), so views are
reproducible and a resumed run sees exactly the views it would have seen.
"""
from __future__ import annotations

import numpy as np
import torch

from data.batched_augment import BatchedSimCLRAugment
from data.sampler import EpochSampler
from data.views import sample_seed


def batch_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    """The device generator's seed for one batch of one rank: each rank draws its own views."""
    return sample_seed(seed + 7919 * rank, epoch, batch)


class DeviceTwoViews:
    """Iterable of (x1, x2) batches, each (B, 3, size, size) float32 normalised, on ``device``."""

    def __init__(self, images: np.ndarray, augment: BatchedSimCLRAugment, batch_size: int, sampler: EpochSampler,
                 device: torch.device, seed: int = 0, rank: int = 0) -> None:
        # images: (N, H, W, 3) uint8 -> (N, 3, H, W) uint8 on the device, once
        self.data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
        self.augment, self.batch_size, self.sampler = augment, batch_size, sampler
        self.device, self.seed, self.rank = device, seed, rank

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # drop_last, as the DataLoader path

    def __iter__(self):
        keys = torch.tensor([i for _, i in self.sampler], dtype=torch.long)
        first = self.sampler.skip // self.batch_size  # batches already done this epoch (mid-epoch resume)
        generator = torch.Generator(device=self.device)
        for b in range(len(self)):
            idx = keys[b * self.batch_size:(b + 1) * self.batch_size].to(self.device, non_blocking=True)
            batch = self.data[idx]  # (B, 3, H, W) uint8
            generator.manual_seed(batch_seed(self.seed, self.rank, self.sampler.epoch, first + b))
            yield self.augment(batch, generator), self.augment(batch, generator)


class DeviceFinish:
    """Wraps a DataLoader of (crop1, crop2) uint8 batches (data.views.TwoViews with crop + PILToTensor);
    yields (x1, x2) float32 normalised views made on ``device`` by ``augment`` (built with scale=(1, 1),
    ratio=(1, 1): no crop)."""

    def __init__(self, loader, augment: BatchedSimCLRAugment, sampler: EpochSampler, device: torch.device,
                 seed: int = 0, rank: int = 0) -> None:
        self.loader, self.augment, self.sampler = loader, augment, sampler
        self.device, self.seed, self.rank = device, seed, rank

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        first = self.sampler.skip // self.loader.batch_size
        generator = torch.Generator(device=self.device)
        for b, (c1, c2) in enumerate(self.loader):
            generator.manual_seed(batch_seed(self.seed, self.rank, self.sampler.epoch, first + b))
            yield (self.augment(c1.to(self.device, non_blocking=True), generator),
                   self.augment(c2.to(self.device, non_blocking=True), generator))
