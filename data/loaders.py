"""The pretraining input: batches of two augmented views of the images of one process, by one of two paths.

Both paths make each view with data.batched_augment.BatchedSimCLRAugment on the training device, drawn from
the view's key (seed, epoch, image index, view; data/keyed_random.py) alone, so an image's views do not depend
on the batch size, the number of processes or of workers, and a resumed run sees exactly the views it would
have seen, even on another number of processes.

- In-memory path, ``InMemoryTwoViews`` (CIFAR, STL-10, the sample, an image tree of one size that fits): the
  uint8 images live on the device as one (N, 3, H, W) tensor; each step gathers its batch and augments it
  there for view 0 and view 1; no DataLoader workers at all.
- Image-tree path, ``ImageTreeTwoViews`` (ImageNet: images read from disk): DataLoader workers decode each
  image and cut its two random resized crops (``TwoCrops``, the boxes of the views' keys); the device
  finishes the views (the rest of the pipeline, without the crop). The workers' batches pass through /dev/shm:
  their number and prefetch are lowered to fit it, or the run is refused (utils.device.fit_workers_to_shm).

``pretrain_input`` loads the pretraining split and ``two_view_batches`` picks the path.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.batched_augment import BatchedSimCLRAugment
from data.datasets import ArrayImages, evenly_spaced, input_info, load_split
from data.keyed_random import ViewKeys
from data.official_augment import PIPELINES
from data.jpeg_decode import DecodedTwoViews, TreeBytes, batch_bytes, collate_bytes, quiet_codecs
from data.sampler import EpochSampler, StepSampler
from utils.device import fit_workers_to_shm
from utils.errors import UserError


# ---- in-memory path: the whole view on the device --------------------------------------------------------

class InMemoryTwoViews:
    """Iterable of (x1, x2) batches, each (B, 3, size, size) float32 normalised, on ``device``."""

    def __init__(self, images: np.ndarray, augment: BatchedSimCLRAugment, batch_size: int, sampler,
                 device: torch.device, seed: int = 0) -> None:
        # images: (N, H, W, 3) uint8 -> (N, 3, H, W) uint8 on the device, once
        self.data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
        self.augment, self.batch_size, self.sampler = augment, batch_size, sampler
        self.device, self.seed = device, seed

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # drop_last, as the image-tree path

    def __iter__(self):
        keys = torch.tensor(list(self.sampler), dtype=torch.long).to(self.device)  # (n, 2) (epoch, index), once
        for b in range(len(self)):
            epoch, idx = keys[b * self.batch_size:(b + 1) * self.batch_size].unbind(1)  # (B,) each
            batch = self.data[idx]  # (B, 3, H, W) uint8
            yield tuple(self.augment(batch, ViewKeys(idx, self.seed, epoch, view)) for view in (0, 1))


# ---- image-tree path: crops in DataLoader workers, the rest on the device ---------------------------------

class TwoCrops(Dataset):
    """The workers' share: keys ``(epoch, index)`` (data/sampler.py) -> (crop0, crop1, epoch, index), the
    random resized crops of views 0 and 1 of the image, uint8 (3, size, size), cut by the pipeline's crop op
    (``cut``: bicubic as the reference pipeline for torchvision's semantics).

    Each box is ``augment.crop_params`` of the view's key (seed, epoch, index, view): the box the
    in-memory path draws for the same image, whatever the worker, batch or process.
    """

    def __init__(self, images, augment: BatchedSimCLRAugment, seed: int = 0) -> None:
        self.images, self.augment, self.seed = images, copy.deepcopy(augment).cpu(), seed  # workers use no GPU
        self.crop = augment.pipeline[0]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, i = key
        img = self.images.image(i)
        index = torch.tensor([i])
        crops = []
        for view in (0, 1):
            box = self.augment.crop_params(ViewKeys(index, self.seed, epoch, view), img.height, img.width)
            crops.append(self.crop.cut(img, tuple(int(box[k]) for k in ("top", "left", "h", "w")), self.augment.size))
        return crops[0], crops[1], epoch, i


def crop_batch_bytes(batch_size: int, size: int) -> int:
    """Bytes of one batch of ``TwoCrops`` (what a worker puts in shared memory): two uint8 (B, 3, size, size) crops
    and the int64 (B,) epochs and indices."""
    return batch_size * (2 * 3 * size * size + 16)


class ImageTreeTwoViews:
    """Wraps a DataLoader of (crop0, crop1, epoch, index) batches (``TwoCrops``: uint8 crops at the output size) and
    yields (x1, x2) float32 normalised views finished on ``device`` by ``augment`` with the crops' own keys
    (the crop itself is not redone)."""

    def __init__(self, loader: DataLoader, augment: BatchedSimCLRAugment, device: torch.device,
                 seed: int = 0) -> None:
        self.loader, self.augment, self.device, self.seed = loader, augment, device, seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for c1, c2, epoch, idx in self.loader:
            epoch, idx = epoch.to(self.device, non_blocking=True), idx.to(self.device, non_blocking=True)  # (B,)
            yield tuple(self.augment(c.to(self.device, non_blocking=True), ViewKeys(idx, self.seed, epoch, view),
                                     crop=False) for view, c in enumerate((c1, c2)))


# ---- the pretraining input ---------------------------------------------------------------------------------

def decode_path(choice: str, images, device: torch.device, augment: str = "torchvision") -> str:
    """Where the pretraining images are decoded (``--decode``): ``memory`` (decoded once: in-memory images),
    ``workers`` (PIL, in the DataLoader workers: the image-tree path) or ``gpu`` (data/jpeg_decode.py: the workers
    read bytes, the training device decodes each batch; on a CPU device torchvision's CPU decoder stands in).
    ``auto``: ``gpu`` on CUDA when torchvision's nvJPEG decodes there, else ``workers``."""
    if isinstance(images, ArrayImages):
        return "memory"
    if choice == "gpu" and augment != "torchvision":
        raise UserError(f"--decode gpu cuts torchvision's crops; --augment {augment} crops as the official code "
                        f"does: use --decode workers (or auto)")
    if choice == "auto":
        return "gpu" if device.type == "cuda" and augment == "torchvision" and device_decodes_jpeg(device) \
            else "workers"
    if choice == "gpu" and not device_decodes_jpeg(device):
        raise UserError(f"--decode gpu: this torchvision's decode_jpeg does not decode on {device} (no nvJPEG, or "
                        f"the decoder removed in favour of TorchCodec): use --decode workers (or auto)")
    return choice


def device_decodes_jpeg(device: torch.device) -> bool:
    """Whether torchvision.io.decode_jpeg decodes on ``device`` (nvJPEG on CUDA): one 8x8 image tried."""
    try:
        from torchvision.io import decode_jpeg, encode_jpeg
        with quiet_codecs():
            return decode_jpeg(encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8)), device=device).shape == (3, 8, 8)
    except (ImportError, RuntimeError, NotImplementedError):
        return False


def mean_file_bytes(paths: list[str], sample: int = 256) -> int:
    """The mean size of the files, from at most ``sample`` of them evenly spaced."""
    picked = evenly_spaced(paths, sample)
    return int(np.mean([os.path.getsize(p) for p in picked])) if picked else 0


def two_view_batches(images, sampler: EpochSampler | StepSampler, batch_size: int, *, image_size: int,
                     jitter_strength: float, blur: bool, mean, std, device: torch.device, seed: int, num_workers: int,
                     augment: str = "torchvision", decode: str = "workers"):
    """An iterable of (x1, x2) batches of ``batch_size`` images each, (B, 3, S, S) float32 normalised on ``device``,
    over the keys of ``sampler`` (one process's share of each epoch); ``len()`` is the number of batches.
    In-memory images (ArrayImages) take the in-memory path, the others the image-tree path (``decode``: ``workers``
    or ``gpu``, ``decode_path``), with ``num_workers`` workers or fewer (what fits in /dev/shm:
    ``fit_workers_to_shm``)."""
    augment = BatchedSimCLRAugment(image_size, jitter_strength, blur, mean=mean, std=std,
                                   pipeline=PIPELINES[augment]).to(device)
    if isinstance(images, ArrayImages):
        return InMemoryTwoViews(images.images, augment, batch_size, sampler, device, seed=seed)
    if decode == "gpu":  # the workers read bytes; the device decodes (data/jpeg_decode.py)
        workers, prefetch = fit_workers_to_shm(batch_bytes(batch_size, mean_file_bytes(images.paths)), num_workers)
        loader = DataLoader(TreeBytes(images, augment, seed=seed), batch_size=batch_size, sampler=sampler,
                            collate_fn=collate_bytes, num_workers=workers, drop_last=True,
                            prefetch_factor=prefetch if workers else None, persistent_workers=workers > 0)
        return DecodedTwoViews(loader, augment, images, device, seed=seed)
    workers, prefetch = fit_workers_to_shm(crop_batch_bytes(batch_size, image_size), num_workers)
    loader = DataLoader(TwoCrops(images, augment, seed=seed), batch_size=batch_size, sampler=sampler,
                        num_workers=workers, prefetch_factor=prefetch if workers else None, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    return ImageTreeTwoViews(loader, augment, device, seed=seed)


def pretrain_input(dataset: str, paths_file: str, batch_size: int, *, num_epochs: int, batching: str, world: int,
                   rank: int, seed: int, device: torch.device, decode: str = "auto", **views):
    """The pretraining split of ``dataset``, this process's StepSampler (every ``world``-th image of each global
    batch; ``batching``: data/sampler.py), its ``two_view_batches`` (``views``: their keyword options but mean
    and std, which are the dataset's) and where it is decoded (``decode_path`` of ``decode``). ``batch_size`` is
    the global batch, split evenly among the ``world`` processes."""
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size} is the global batch and must be divisible by the number of "
                        f"processes ({world}): use --batch-size {batch_size // world * world or world}")
    images = load_split(dataset, "pretrain", paths_file)
    if len(images) < batch_size:
        raise UserError(f"--batch-size {batch_size} is larger than the dataset ({len(images)} images): "
                        f"use --batch-size {len(images)} or less")
    info = input_info(dataset, views.get("augment", "torchvision"))  # the inputs' normalisation
    sampler = StepSampler(len(images), batch_size, num_epochs, batching, seed=seed, num_replicas=world, rank=rank)
    decode = decode_path(decode, images, device, views.get("augment", "torchvision"))
    batches = two_view_batches(images, sampler, batch_size // world, mean=info.mean, std=info.std, device=device,
                               seed=seed, decode=decode, **views)
    return images, sampler, batches, decode
