"""The two pretraining input paths of data/loaders.py (in memory on the device; image trees through DataLoader
workers): a view is a function of (seed, epoch, image, view) alone, whatever the batching, the process or the
worker; resumable mid-epoch; the same crops for image trees as for in-memory data."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data import batched_augment
from data.batched_augment import BatchedSimCLRAugment, ViewKeys, sample_crop_params
from data.datasets import ArrayImages
from data.loaders import ImageTreeTwoViews, InMemoryTwoViews, TwoCrops
from data.sampler import EpochSampler, StepSampler

CPU = torch.device("cpu")
IMAGES = np.random.default_rng(0).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)


def views(skip=0, epoch=0, seed=0, batch_size=4, num_replicas=1, rank=0):
    sampler = EpochSampler(12, seed=1, num_replicas=num_replicas, rank=rank)
    sampler.set_epoch(epoch, skip=skip)
    return list(InMemoryTwoViews(IMAGES, BatchedSimCLRAugment(8, 0.5), batch_size, sampler, CPU, seed))


def by_image(batches, sampler_keys):
    """{image index: (view 0, view 1)} from the batches of a sampler's keys, in order."""
    x1, x2 = (torch.cat([b[v] for b in batches]) for v in (0, 1))
    return {i: (x1[k], x2[k]) for k, i in enumerate(sampler_keys[:len(x1)])}


def keys(epoch=0, num_replicas=1, rank=0):
    s = EpochSampler(12, seed=1, num_replicas=num_replicas, rank=rank)
    return s.order(epoch)


def test_reproducible_and_resumable_mid_epoch():
    a, b = views(), views()
    assert len(a) == 3 and a[0][0].shape == (4, 3, 8, 8)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], a[0][1])  # two different views of the same images
    resumed = views(skip=4)  # the first batch was done before the stop
    assert len(resumed) == 2 and all(torch.equal(x[0], y[0]) for x, y in zip(a[1:], resumed))


def test_an_image_has_the_same_views_in_any_batching_and_process():
    """Image i's two views: the same in batches of 4, of 3 and of 6, and in 2 or 3 processes
    (EpochSampler ranks: other batches, other neighbours, other positions)."""
    ref = by_image(views(), keys())
    assert len(ref) == 12
    others = [by_image(views(batch_size=3), keys()), by_image(views(batch_size=6), keys())]
    for world in (2, 3):
        for rank in range(world):
            others.append(by_image(views(batch_size=2, num_replicas=world, rank=rank), keys(0, world, rank)))
    seen = set()
    for other in others:
        for i, (v1, v2) in other.items():
            torch.testing.assert_close(v1, ref[i][0], rtol=0, atol=1e-6)
            torch.testing.assert_close(v2, ref[i][1], rtol=0, atol=1e-6)
            seen.add(i)
    assert seen == set(range(12))


def test_other_epoch_and_seed_draw_other_views():
    ref = by_image(views(), keys())
    for other in (by_image(views(epoch=1), keys(1)), by_image(views(seed=5), keys())):
        for i, (v1, _) in other.items():
            assert (v1 - ref[i][0]).abs().mean() > 0.05, i


# ---- image trees: crops in the workers, the rest on the device ---------------------------------

TREE = np.random.default_rng(1).integers(0, 256, size=(8, 12, 10, 3), dtype=np.uint8)  # (N, H, W, 3), not square


def tree_views(skip=0, batch_size=4, num_workers=0, seed=3):
    images = ArrayImages(TREE, np.zeros(8), ["x"])  # read through .image(i) as a file tree would be
    sampler = EpochSampler(8, seed=2)
    sampler.set_epoch(0, skip=skip)
    loader = DataLoader(TwoCrops(images, BatchedSimCLRAugment(6), seed=seed), batch_size=batch_size, sampler=sampler,
                        num_workers=num_workers)
    return list(ImageTreeTwoViews(loader, BatchedSimCLRAugment(6, blur=True), CPU, seed=seed)), loader


def test_workers_cut_the_crop_box_of_the_in_memory_path():
    images = ArrayImages(TREE, np.zeros(8), ["x"])
    c1, c2, epoch, i = TwoCrops(images, BatchedSimCLRAugment(6), seed=3)[(4, 5)]
    assert c1.dtype == torch.uint8 and c1.shape == (3, 6, 6) and (epoch, i) == (4, 5) and not torch.equal(c1, c2)
    for view, crop in enumerate((c1, c2)):
        top, left, h, w = (int(v) for v in sample_crop_params(ViewKeys(torch.tensor([5]), 3, 4, view), 12, 10))
        assert (top, left, h, w) != (0, 0, 12, 10)
        ref = batched_augment.resized_crop(torch.from_numpy(TREE[5:6]).permute(0, 3, 1, 2).float() / 255,
                                           *(torch.tensor([v]) for v in (top, left, h, w)), 6)[0]
        # PIL's uint8 bicubic against the float one: the same box, up to rounding.
        assert (crop.float() / 255 - ref).abs().mean() < 0.02


def test_tree_views_depend_on_the_image_alone_and_resume():
    a, _ = tree_views()
    assert len(a) == 2 and a[0][0].shape == (4, 3, 6, 6)
    assert torch.equal(tree_views(skip=4)[0][0][1], a[1][1])  # resumes with the same views
    order = EpochSampler(8, seed=2).order(0)
    ref = by_image(a, order)
    others = (by_image(tree_views(batch_size=2, num_workers=2)[0], order), by_image(tree_views(batch_size=8)[0], order))
    for other in others:
        assert other.keys() == ref.keys()
        for i, (v1, v2) in other.items():
            torch.testing.assert_close(v1, ref[i][0], rtol=0, atol=1e-6)
            torch.testing.assert_close(v2, ref[i][1], rtol=0, atol=1e-6)


def test_tree_views_are_the_device_pipeline_on_the_workers_crops_without_resizing(monkeypatch):
    """The device step equals BatchedSimCLRAugment.apply with the crop's keys on the crop, and never resizes
    (crop + resize at the output size would be two dense matmuls per view for nothing)."""
    expected, loader = tree_views()
    c1, c2, _, idx = next(iter(loader))
    aug = BatchedSimCLRAugment(6, blur=True)
    for view, c in enumerate((c1, c2)):
        params = aug.sample_params(ViewKeys(idx, 3, 0, view), 6, 6)
        torch.testing.assert_close(expected[0][view], aug.apply(c, params, crop=False), rtol=0, atol=0)

    def no_resize(*args, **kwargs):
        raise AssertionError("resized_crop called on the image-tree path")
    monkeypatch.setattr(batched_augment, "resized_crop", no_resize)
    got, _ = tree_views()
    assert all(torch.equal(x, y) for a, b in zip(got, expected) for x, y in zip(a, b))
    with pytest.raises(AssertionError, match="resized_crop called"):  # the patch does catch a resize
        BatchedSimCLRAugment(6)(c1, ViewKeys(idx))


def test_a_batch_across_two_epochs_keys_each_image_by_its_own_epoch():
    """Stream batching (data/sampler.StepSampler): 12 images in batches of 5, so step 2 holds the last 2 images of
    epoch 0's order and the first 3 of epoch 1's. Each view equals the one drawn with its own epoch alone, and a
    per-image epoch tensor draws what the scalar does."""
    keys = ViewKeys(torch.arange(6), 7, 3, 1)
    assert torch.equal(keys.uniform(0, 9), ViewKeys(torch.arange(6), 7, torch.full((6,), 3), 1).uniform(0, 9))
    sampler = StepSampler(12, 5, 2, "stream", seed=1)
    sampler.set_epoch(0)
    batches = list(InMemoryTwoViews(IMAGES, BatchedSimCLRAugment(8, 0.5), 5, sampler, CPU, seed=4))
    crossing = list(sampler)[10:15]
    assert len(batches) == 3 and [e for e, _ in crossing] == [0, 0, 1, 1, 1]
    aug = BatchedSimCLRAugment(8, 0.5)
    images = torch.from_numpy(IMAGES).permute(0, 3, 1, 2)
    for k, (epoch, i) in enumerate(crossing):
        for view in (0, 1):
            alone = aug(images[i:i + 1], ViewKeys(torch.tensor([i]), 4, epoch, view))[0]
            torch.testing.assert_close(batches[2][view][k], alone, rtol=0, atol=1e-6)
