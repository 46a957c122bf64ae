"""Batched on-device views: reproducible, resumable mid-epoch, different per rank."""
import numpy as np
import torch

from data.batched_augment import BatchedSimCLRAugment
from data.device_views import DeviceTwoViews
from data.sampler import EpochSampler


def views(rank=0, skip=0, epoch=0, seed=0):
    images = np.random.default_rng(0).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    sampler = EpochSampler(12, seed=1)
    sampler.set_epoch(epoch, skip=skip)
    return list(DeviceTwoViews(images, BatchedSimCLRAugment(8, 0.5), 4, sampler, torch.device("cpu"), seed, rank))


def test_reproducible_and_resumable_mid_epoch():
    a, b = views(), views()
    assert len(a) == 3 and a[0][0].shape == (4, 3, 8, 8)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], a[0][1])  # two different views of the same images
    resumed = views(skip=4)  # the first batch was done before the stop
    assert len(resumed) == 2 and all(torch.equal(x[0], y[0]) for x, y in zip(a[1:], resumed))


def test_other_epoch_rank_and_seed_draw_other_views():
    a = views()[0][0]
    assert not torch.equal(a, views(epoch=1)[0][0])
    assert not torch.equal(a, views(rank=1)[0][0])
    assert not torch.equal(a, views(seed=5)[0][0])
