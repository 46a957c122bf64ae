"""The pretraining input of an image tree (ImageNet layout, e.g. Imagenette), path by path, in one run.

    python bench/tree_loader.py                                    # Imagenette, 128 px, batch 128, 2 workers
    python bench/tree_loader.py --dataset imagenet --device cuda --num-workers 16 --batch-size 512
    python bench/tree_loader.py --generate 4096 --arch resnet50 --device cuda --num-workers 16 --batch-size 256

--generate N reads a generated tree instead of --dataset: N random JPEGs of ImageNet's sizes (each side drawn from
224 to 500 px; smooth colour gradients, texture and noise, quality 90, so the files weigh about what photos do), in
a few class folders under the bench's temporary folder, seeded, deleted at the end; as a folder given as the
dataset it takes Imagenette's recipe at 224 px (training.recipe.folder_recipe).

Views per second (two per image) of:
  (a) torchvision per image in DataLoader workers: decode + the whole SimCLR pipeline
      (data.reference_augment.TwoViews);
  (b) simclr.py's image-tree path, for trees that do not fit in memory or mix image sizes (ImageNet): workers
      decode + cut both crops (data.loaders.TwoCrops), the device finishes the views in batches
      (data.loaders.ImageTreeTwoViews);
  (c) decoding alone in the same workers (PIL), the floor under (a) and (b);
  (d) torchvision.io.decode_jpeg alone in the same workers, the other decoder;
  (e) simclr.py's in-memory path, for trees of one image size that fit (data.datasets.fits_in_memory, e.g. Imagenette at
      128 px): a decoded uint8 copy (data.datasets.decode_all, cached on disk, as CIFAR), batches gathered and
      augmented on the device, no workers (data.loaders.InMemoryTwoViews); its one-off decode is timed;
  (f) the decode path (data.jpeg_decode): workers read the files' bytes and draw the crop boxes (TreeBytes,
      collate_bytes), the device decodes the batch in one torchvision.io.decode_jpeg call (nvJPEG on CUDA), cuts the
      crops and finishes the views (DecodedTwoViews); on a CPU device that decode runs torchvision's CPU decoder in
      the main process, a stand-in: the GPU figure needs a GPU;
and the training step alone on random tensors (simclr.py's model, loss and LARS step at --precision), so that
each path's share of a step, input time / (input time + step time), reads as what it costs when the two do not
overlap (on a CPU, workers and the step share the cores). Paths alternate over --rounds; medians are printed,
with the mean file size and what one batch of (b) and of (f) puts in /dev/shm.
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, default_collate  # noqa: E402
from torchvision.io import ImageReadMode, decode_jpeg, read_file  # noqa: E402
from torchvision.transforms import functional as TF  # noqa: E402

from data.batched_augment import BatchedSimCLRAugment  # noqa: E402
from data import datasets  # noqa: E402
from data.datasets import dataset_info, decode_all, load_split  # noqa: E402
from data.jpeg_decode import DecodedTwoViews, TreeBytes, batch_bytes, collate_bytes  # noqa: E402
from data.loaders import (ImageTreeTwoViews, InMemoryTwoViews, TwoCrops, crop_batch_bytes,  # noqa: E402
                          mean_file_bytes)
from data.paths import DEFAULT_PATHS_FILE  # noqa: E402
from data.reference_augment import TwoViews, simclr_augmentation  # noqa: E402
from data.sampler import EpochSampler  # noqa: E402
from training.build import build_pretraining, step_config  # noqa: E402
from training.loop import train_step  # noqa: E402
from training.recipe import recipe  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402
from utils.precision import configure_backends, resolve_precision  # noqa: E402


class DecodePIL(Dataset):
    """Keys (epoch, index) -> the decoded image as a uint8 (3, H, W) tensor, as the workers of (a) and (b) decode."""

    def __init__(self, images) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        return TF.pil_to_tensor(self.images.image(key[1]))


class DecodeTorchvision(DecodePIL):
    """The same with torchvision.io: file bytes -> decode_jpeg (libjpeg-turbo), RGB."""

    def __getitem__(self, key):
        return decode_jpeg(read_file(self.images.samples[key[1]][0]), mode=ImageReadMode.RGB)


def collate_images(batch):
    """``collate_fn`` of (c) and (d): the decoded images stacked (``default_collate``) where they are of one size,
    else the list of them (a tree of mixed sizes, as ImageNet)."""
    return default_collate(batch) if len({x.shape for x in batch}) == 1 else batch


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Views/s of the image-tree input paths and their share of a step")
    tree = p.add_mutually_exclusive_group()
    tree.add_argument("--dataset", default="imagenette", help="an image-tree dataset (default: imagenette)")
    tree.add_argument("--generate", type=int, metavar="N",
                      help="instead of --dataset: a generated tree of N JPEGs of ImageNet's sizes (224-500 px)")
    p.add_argument("--dataset-paths", default=DEFAULT_PATHS_FILE, help="(default: the repository's dataset-paths.json)")
    p.add_argument("--arch", default="resnet18", help="(default: resnet18)")
    p.add_argument("--batch-size", type=int, default=128, help="(default: 128)")
    p.add_argument("--batches", type=int, default=6, help="timed batches per path and round (default: 6)")
    p.add_argument("--rounds", type=int, default=2, help="(default: 2)")
    p.add_argument("--num-workers", type=int, default=2, help="(default: 2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="of the step (default: auto)")
    return p


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def views_per_s(batches, n: int, views_per_batch: int, device: torch.device, finish=lambda b: b) -> float:
    """Views/s over ``n`` batches of the iterable, after one untimed batch (workers started, caches warm)."""
    it = iter(batches)
    finish(next(it))
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        finish(next(it))
    sync(device)
    return n * views_per_batch / (time.perf_counter() - t)


def generate_tree(root: str, n: int, classes: int = 4, seed: int = 0) -> str:
    """``root``: ``n`` random JPEGs in ``classes`` class folders, each side drawn from 224 to 500 px (ImageNet's
    usual range), quality 90; smooth colour gradients plus texture and noise, so that their files weigh about what
    photos of that size do. The same files for the same (n, classes, seed)."""
    for c in range(classes):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)

    def field(rng, h: int, w: int, cell: int, sigma: float) -> np.ndarray:
        """(h, w, 3) float32: Gaussian values every ``cell`` px, bicubically interpolated."""
        grid = rng.normal(0, sigma, (3, h // cell + 2, w // cell + 2)).astype(np.float32)
        return np.stack([np.asarray(Image.fromarray(g, "F").resize((w, h), Image.BICUBIC)) for g in grid], -1)

    def write(i: int) -> None:
        rng = np.random.default_rng((seed, i))
        h, w = (int(v) for v in rng.integers(224, 501, 2))
        corners = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
        img = np.asarray(corners.resize((w, h), Image.BICUBIC), dtype=np.float32)                 # gradients
        img = img + field(rng, h, w, 24, 30) + field(rng, h, w, 3, 32) + rng.normal(0, 32, (h, w, 1))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            os.path.join(root, f"class{i % classes}", f"{i:07d}.JPEG"), quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, range(n)))
    return root


def training_steps(args: argparse.Namespace, precision, device: torch.device, batch: int, size: int):
    """A function returning an endless iterator of simclr.py's training step on one random batch."""
    cfg = step_config(args.dataset, batch, arch=args.arch)
    pretraining = build_pretraining(cfg, DistInfo(device=device), precision, batch)  # simclr.py's step
    pretraining.net.train()
    x = torch.randn(batch, 3, size, size, device=device)

    def steps():
        while True:
            train_step(pretraining, x, x, cfg.lr)
            yield
    return steps


def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="tree_loader-") as tmp:
        if args.generate:
            t = time.perf_counter()
            tree = generate_tree(os.path.join(tmp, "tree"), args.generate)
            print(f"generated {args.generate} JPEGs (224-500 px, quality 90) in {tree} in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
            args = argparse.Namespace(**{**vars(args), "dataset": tree})
        return measure(args)


def measure(args: argparse.Namespace) -> dict:
    device = select_device(args.device)
    configure_backends(device)  # simclr.py's
    r, info = recipe(args.dataset), dataset_info(args.dataset)
    size, b, w = r["image_size"], args.batch_size, args.num_workers
    limit, datasets.DECODED_LIMIT = datasets.DECODED_LIMIT, 0  # the files themselves, as (a)-(d)'s workers read them
    files = load_split(args.dataset, "pretrain", args.dataset_paths)
    datasets.DECODED_LIMIT = limit
    sampler = EpochSampler(len(files), seed=0)
    augment = BatchedSimCLRAugment(size, r["jitter_strength"], r["blur"], mean=info.mean, std=info.std).to(device)

    def loader(dataset, **kw):
        return DataLoader(dataset, batch_size=b, sampler=sampler, num_workers=w, drop_last=True,
                          **{"pin_memory": device.type == "cuda", **kw})

    def to_device(batch):
        return [x.to(device, non_blocking=True) for x in batch[:2]]

    def images_to_device(images):  # (c), (d): a stacked batch, or a list of images of mixed sizes
        return images.to(device) if isinstance(images, torch.Tensor) else [x.to(device) for x in images]

    decoded, decode_s = decoded_copy(files)
    pipeline = simclr_augmentation(size, r["jitter_strength"], r["blur"], info.mean, info.std)
    paths = {
        "(a) torchvision per image, workers": lambda: views_per_s(loader(TwoViews(files, pipeline)), args.batches,
                                                                  2 * b, device, to_device),
        "(b) workers crop + batched finish": lambda: views_per_s(
            ImageTreeTwoViews(loader(TwoCrops(files, augment)), augment, device), args.batches, 2 * b, device),
        "(c) PIL decode alone, workers": lambda: views_per_s(loader(DecodePIL(files), collate_fn=collate_images),
                                                             args.batches, 2 * b, device, images_to_device),
        "(d) torchvision.io decode, workers": lambda: views_per_s(
            loader(DecodeTorchvision(files), collate_fn=collate_images), args.batches, 2 * b, device,
            images_to_device),
    }
    if decoded is not None:
        paths["(e) decoded uint8 copy, device"] = lambda: views_per_s(
            InMemoryTwoViews(decoded.images, augment, b, sampler, device), args.batches, 2 * b, device)
    paths["(f) workers bytes + batched decode"] = lambda: views_per_s(  # DecodedTwoViews needs no pinned bytes
        DecodedTwoViews(loader(TreeBytes(files, augment, seed=0), collate_fn=collate_bytes, pin_memory=False),
                        augment, files, device), args.batches, 2 * b, device)

    precision = resolve_precision(args.precision, device)
    steps = training_steps(args, precision, device, b, size)
    results: dict[str, list[float]] = {name: [] for name in list(paths) + ["training step alone"]}
    for rnd in range(args.rounds):
        for epoch, (name, run) in enumerate(paths.items()):
            sampler.set_epoch(rnd * len(paths) + epoch)  # a fresh order each time: no page-cache favourite
            results[name].append(run())
        results["training step alone"].append(views_per_s(steps(), max(2, args.batches // 3), 2 * b, device))
        print(f"round {rnd + 1}: " + ", ".join(f"{name.split(')')[0] + ')' if name.startswith('(') else 'step'} "
                                               f"{v[-1]:.0f}" for name, v in results.items()), flush=True)
    return report(args, files, results, size, device, precision, decoded, decode_s)


def report(args: argparse.Namespace, files, results: dict[str, list[float]], size: int, device: torch.device,
           precision, decoded, decode_s: float) -> dict[str, float]:
    """Print the median views/s of each path, its share of input + step, and the batches' /dev/shm bytes; returns
    the medians."""
    b, w = args.batch_size, args.num_workers
    med = {name: statistics.median(v) for name, v in results.items()}
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    name = f"generated tree ({args.generate} JPEGs)" if args.generate else args.dataset
    print(f"\n{name}: {len(files)} images, {size} px, batch {b} ({2 * b} views), {w} workers, {where}; "
          f"{args.arch} step at {precision.label}; views/s, median of {args.rounds} rounds of {args.batches} batches")
    step_s = 1 / med["training step alone"]
    for name, v in med.items():
        share = "" if name.startswith("training") else f"   {100 * (1 / v) / (1 / v + step_s):5.1f}% of input + step"
        print(f"{name:38s} {v:10.0f}{share}")
    print(f"(e)'s one-off decode of all {len(files)} images: {decode_s:.1f} s "
          f"({decoded.images.nbytes / 2**30:.2f} GiB, {decode_all.__module__}.decode_all's threads; "
          f"simclr.py would keep it in .cache/decoded, read back in about a second)" if decoded is not None else
          "(e) not measured: the tree mixes image sizes or does not fit in memory (fits_in_memory), as ImageNet")
    mean_file = mean_file_bytes(files.paths)  # simclr.py's estimate, from which it plans (f)'s /dev/shm
    print(f"mean file size {mean_file / 1e3:.1f} kB; one batch in /dev/shm: "
          f"(b) {crop_batch_bytes(b, size) / 2**20:.1f} MiB (two uint8 {size} px crops per image), "
          f"(f) {batch_bytes(b, mean_file) / 2**20:.1f} MiB (the files' bytes and boxes)")
    if device.type == "cpu":
        print("(f) here runs torchvision's CPU decoder (libjpeg-turbo) in the main process, a stand-in for the device "
              "decode: the GPU (nvJPEG) figure needs a GPU (--device cuda)")
    return med



def decoded_copy(files):
    """(the decoded uint8 copy of (e), seconds it took), decoded afresh; (None, 0) for a tree that simclr.py would
    not decode (data.datasets.fits_in_memory: one image size, within the memory limit)."""
    if not datasets.fits_in_memory(files.samples):
        return None, 0.0
    with tempfile.TemporaryDirectory() as tmp:  # a fresh decode, not the cache of an earlier run
        cache, datasets.CACHE_DIR = datasets.CACHE_DIR, tmp
        t = time.perf_counter()
        decoded = decode_all(files.samples, files.classes)
        datasets.CACHE_DIR = cache
        return decoded, time.perf_counter() - t


if __name__ == "__main__":
    main(get_args_parser().parse_args())
