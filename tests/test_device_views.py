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


def test_finish_on_device_after_crops_in_workers():
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from data.datasets import ArrayImages
    from data.device_views import DeviceFinish
    from data.views import TwoViews

    images = ArrayImages(np.random.default_rng(1).integers(0, 256, size=(8, 12, 12, 3), dtype=np.uint8),
                         np.zeros(8), ["x"])
    crop = T.RandomResizedCrop(6, interpolation=T.InterpolationMode.BICUBIC)

    def batches(skip=0, **aug):
        sampler = EpochSampler(8, seed=2)
        sampler.set_epoch(0, skip=skip)
        loader = DataLoader(TwoViews(images, T.Compose([crop, T.PILToTensor()])), batch_size=4, sampler=sampler)
        finish = BatchedSimCLRAugment(6, scale=(1.0, 1.0), ratio=(1.0, 1.0), **aug)
        return list(DeviceFinish(loader, finish, sampler, torch.device("cpu"))), loader

    a, _ = batches()
    assert len(a) == 2 and a[0][0].shape == (4, 3, 6, 6)
    assert torch.equal(batches(skip=4)[0][0][1], a[1][1])  # resumes with the same views
    # with every random op off, the device step is exactly "to float and normalise" of the worker's crop
    plain, loader = batches(jitter_strength=0.0, grayscale_p=0.0, hflip_p=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    c1, c2 = next(iter(loader))
    assert c1.dtype == torch.uint8 and not torch.equal(c1, c2)
    torch.testing.assert_close(plain[0][0], c1.float() / 255, atol=1e-5, rtol=0)
