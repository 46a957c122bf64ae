"""The pretraining input: batches of two augmented views of the images of one process.

One augmentation pipeline serves every dataset: data.batched_augment.BatchedSimCLRAugment on the
training device, each view drawn from its key (seed, epoch, image index, view). In-memory datasets
live on the device as uint8; image trees are decoded and cropped in DataLoader workers with the
same keys, and the device finishes the views.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from data.batched_augment import BatchedSimCLRAugment
from data.datasets import ArrayImages, dataset_info, load_split
from data.device_views import DeviceFinish, DeviceTwoViews
from data.sampler import EpochSampler
from data.views import TwoCrops
from utils.errors import UserError


def two_view_batches(images, sampler: EpochSampler, batch_size: int, *, image_size: int, jitter_strength: float,
                     blur: bool, mean, std, device: torch.device, seed: int, num_workers: int):
    """An iterable of (x1, x2) batches of ``batch_size`` images each, (B, 3, S, S) float32 normalised on ``device``,
    over the keys of ``sampler`` (one process's share of each epoch); ``len()`` is the number of batches."""
    augment = BatchedSimCLRAugment(image_size, jitter_strength, blur, mean=mean, std=std).to(device)
    if isinstance(images, ArrayImages):
        return DeviceTwoViews(images.images, augment, batch_size, sampler, device, seed=seed)
    loader = DataLoader(TwoCrops(images, image_size, seed=seed), batch_size=batch_size, sampler=sampler,
                        num_workers=num_workers, drop_last=True, pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0)
    return DeviceFinish(loader, augment, sampler, device, seed=seed)


def pretrain_input(dataset: str, paths_file: str, batch_size: int, *, world: int, rank: int, seed: int,
                   device: torch.device, **views):
    """The pretraining split of ``dataset``, this process's EpochSampler (every ``world``-th image of each epoch's
    permutation) and its ``two_view_batches`` (``views``: their keyword options but mean and std, which are the
    dataset's). ``batch_size`` is the global batch, split evenly among the ``world`` processes."""
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size} is the global batch and must be divisible by the number of "
                        f"processes ({world}): use --batch-size {batch_size // world * world or world}")
    images = load_split(dataset, "pretrain", paths_file)
    if len(images) < batch_size:
        raise UserError(f"--batch-size {batch_size} is larger than the dataset ({len(images)} images): "
                        f"use --batch-size {len(images)} or less")
    info = dataset_info(dataset)
    sampler = EpochSampler(len(images), seed=seed, num_replicas=world, rank=rank)
    batches = two_view_batches(images, sampler, batch_size // world, mean=info.mean, std=info.std, device=device,
                               seed=seed, **views)
    return images, sampler, batches
