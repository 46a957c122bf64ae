"""Throughput of the SimCLR augmentation (Chen et al. 2020, Appendix A): torchvision per image vs batched.

(a) the per-image torchvision pipeline on PIL images (``data.reference_augment.simclr_augmentation``:
    RandomResizedCrop, flip, colour jitter, grayscale, optional blur, ToTensor, Normalize), in a loop in this
    process;
(b) ``data.batched_augment.BatchedSimCLRAugment`` on one (B, 3, H, W) uint8 batch on ``--device``.

    python bench/augment_speed.py --batch-size 256 --size 32 --steps 5 --device cpu

On a machine shared with other jobs, multi-threaded (OpenMP) eager ops can stall badly; pass
``--threads 1`` for stable CPU figures (the PIL pipeline is single-threaded anyway).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.batched_augment import BatchedSimCLRAugment, ViewKeys  # noqa: E402
from data.datasets import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from data.reference_augment import simclr_augmentation  # noqa: E402
from utils.precision import configure_backends  # noqa: E402

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_torchvision(images: list[Image.Image], pipeline, steps: int) -> float:
    """Views per second of the per-image pipeline (one view per image per step)."""
    for im in images[:8]:  # warm-up
        pipeline(im)
    start = time.perf_counter()
    for _ in range(steps):
        torch.stack([pipeline(im) for im in images])
    return steps * len(images) / (time.perf_counter() - start)


def bench_batched(batch: torch.Tensor, aug: BatchedSimCLRAugment, steps: int) -> float:
    """Views per second of the batched augmentation (one view per image per step)."""
    keys = ViewKeys(torch.arange(batch.shape[0], device=batch.device))
    with torch.no_grad():
        for _ in range(2):  # warm-up
            aug(batch, keys)
        _sync(batch.device)
        start = time.perf_counter()
        for _ in range(steps):
            aug(batch, keys)
        _sync(batch.device)
    return steps * batch.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=32, help="output side")
    parser.add_argument("--input-size", type=int, default=None, help="input side (default: --size)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jitter-strength", type=float, default=0.5)
    parser.add_argument("--blur", action="store_true", help="include the Gaussian blur (ImageNet setting)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    in_size = args.input_size or args.size
    device = torch.device(args.device)
    configure_backends(device)  # simclr.py's
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(args.batch_size, in_size, in_size, 3), dtype=np.uint8)  # (B, H, W, 3)
    pil_images = [Image.fromarray(a) for a in array]
    batch = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(device)                # (B, 3, H, W) uint8

    pipeline = simclr_augmentation(args.size, args.jitter_strength, args.blur, MEAN, STD)  # the reference
    tv = bench_torchvision(pil_images, pipeline, args.steps)
    aug = BatchedSimCLRAugment(args.size, jitter_strength=args.jitter_strength, blur=args.blur).to(device)
    bt = bench_batched(batch, aug, args.steps)

    print(f"SimCLR augmentation, batch {args.batch_size}, {in_size}px -> {args.size}px, "
          f"jitter strength {args.jitter_strength}, blur {args.blur}, torch threads {torch.get_num_threads()}")
    print(f"{'torchvision per-image (PIL, 1 process, cpu)':<48s} {tv:10.0f} views/s")
    print(f"{'BatchedSimCLRAugment (' + str(device) + ')':<48s} {bt:10.0f} views/s")
    print(f"{'ratio batched / torchvision':<48s} {bt / tv:10.1f}x")


if __name__ == "__main__":
    main()
