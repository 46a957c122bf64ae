"""Batches of two augmented views per image, made on the training device.

- DeviceTwoViews, for datasets held in memory (CIFAR, STL-10, the sample): the uint8 images live on
  the device as one (N, 3, H, W) tensor; each step gathers its batch and runs
  data.batched_augment.BatchedSimCLRAugment for view 0 and view 1; no DataLoader workers at all.
- DeviceFinish, for image trees read from disk (ImageNet): DataLoader workers decode each image and
  cut its two random resized crops (data.views.TwoCrops), the device does the rest of the views.
Either way a view is drawn from the key (seed, epoch, image index, view) alone, so an image's views
do not depend on the batch size, the number of processes or of workers, and a resumed run sees
exactly the views it would have seen, even on another number of processes.
"""
from __future__ import annotations

import numpy as np
import torch

from data.batched_augment import BatchedSimCLRAugment
from data.keyed_random import ViewKeys
from data.sampler import EpochSampler


class DeviceTwoViews:
    """Iterable of (x1, x2) batches, each (B, 3, size, size) float32 normalised, on ``device``."""

    def __init__(self, images: np.ndarray, augment: BatchedSimCLRAugment, batch_size: int, sampler: EpochSampler,
                 device: torch.device, seed: int = 0) -> None:
        # images: (N, H, W, 3) uint8 -> (N, 3, H, W) uint8 on the device, once
        self.data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
        self.augment, self.batch_size, self.sampler = augment, batch_size, sampler
        self.device, self.seed = device, seed

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # drop_last, as the DataLoader path

    def __iter__(self):
        keys = torch.tensor([i for _, i in self.sampler], dtype=torch.long).to(self.device)  # once an epoch
        epoch = self.sampler.epoch
        for b in range(len(self)):
            idx = keys[b * self.batch_size:(b + 1) * self.batch_size]  # (B,)
            batch = self.data[idx]  # (B, 3, H, W) uint8
            yield tuple(self.augment(batch, ViewKeys(idx, self.seed, epoch, view)) for view in (0, 1))


class DeviceFinish:
    """Wraps a DataLoader of (crop1, crop2, index) batches (data.views.TwoCrops: uint8 crops at the output
    size) and yields (x1, x2) float32 normalised views finished on ``device`` by ``augment`` with the
    crops' own keys (the crop itself is not redone)."""

    def __init__(self, loader, augment: BatchedSimCLRAugment, sampler: EpochSampler, device: torch.device,
                 seed: int = 0) -> None:
        self.loader, self.augment, self.sampler = loader, augment, sampler
        self.device, self.seed = device, seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        epoch = self.sampler.epoch
        for c1, c2, idx in self.loader:
            idx = idx.to(self.device, non_blocking=True)  # (B,)
            yield tuple(self.augment(c.to(self.device, non_blocking=True), ViewKeys(idx, self.seed, epoch, view),
                                     crop=False) for view, c in enumerate((c1, c2)))
