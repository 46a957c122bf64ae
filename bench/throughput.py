"""Views per second of a full SimCLR training step (augment + forward + NT-Xent + backward + LARS).

    python bench/throughput.py                                  # CPU: ResNet-18, CIFAR stem, batch 256
    python bench/throughput.py --device cuda --batch-size 512 --steps 30 --memory

Measured side by side in one run, alternating rounds (the machine's noise hits both alike):
  (a) workers: the per-image torchvision PIL pipeline in DataLoader workers (the usual PyTorch SimCLR),
  (b) device:  uint8 images on the device, batched augmentation there (data.device_views),
and printed as the ratio b/a; the same for augmentation alone; on a GPU also the compute ceiling
(the same step on random tensors already on the GPU) and, with --memory, peak memory per batch size.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import simclr  # noqa: E402
from data.augment import simclr_augmentation  # noqa: E402
from data.batched_augment import BatchedSimCLRAugment  # noqa: E402
from data.datasets import ArrayImages, dataset_info, load_split  # noqa: E402
from data.device_views import DeviceTwoViews  # noqa: E402
from data.sampler import EpochSampler  # noqa: E402
from data.views import TwoViews  # noqa: E402
from models.loss import NTXentLoss  # noqa: E402
from models.simclr import SimCLR  # noqa: E402
from utils.distributed import select_device  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Training-step throughput: per-image workers vs batched on-device views")
    p.add_argument("--dataset", default="cifar10-sample", help="images to use, tiled as needed (default: cifar10-sample)")
    p.add_argument("--arch", default="resnet18", help="(default: resnet18)")
    p.add_argument("--batch-size", type=int, default=256, help="(default: 256)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and path (default: 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the median is reported (default: 2)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of path (a) (default: 2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="as simclr.py (default: auto)")
    p.add_argument("--memory", action="store_true", help="GPU only: peak memory for batch 256/512/1024/4096")
    return p


def step_args(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """simclr.py's own options for this model, so the timed step is the training script's step."""
    a = simclr.get_args_parser().parse_args(["--dataset", args.dataset, "--arch", args.arch, "--batch-size",
                                             str(args.batch_size), "--precision", args.precision,
                                             "--device", device.type])
    a = simclr.resolve_args(a)
    if a.precision == "auto":
        a.precision = "bf16" if device.type == "cuda" else "fp32"
    a.channels_last = a.precision == "bf16" if a.channels_last is None else a.channels_last
    return a


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls after one warm-up call."""
    it = fn()
    next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(args: argparse.Namespace) -> dict:
    device = select_device(args.device)
    sargs = step_args(args, device)
    info = dataset_info(args.dataset)
    base = load_split(args.dataset, "pretrain")
    need = (args.steps + 1) * args.batch_size * 2
    reps = -(-need // len(base))
    images = ArrayImages(np.concatenate([base.images] * reps), np.concatenate([base.labels] * reps), base.classes)
    size = sargs.image_size

    model = SimCLR(args.arch, sargs.stem).to(device)
    if sargs.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = simclr.build_optimizer(model, sargs)
    criterion = NTXentLoss(sargs.temperature)

    def step(x1, x2):
        optimizer.zero_grad(set_to_none=True)
        simclr.compute_gradients(model, x1, x2, criterion, sargs, device)
        optimizer.step()

    sampler = EpochSampler(len(images), seed=0)
    per_image = DataLoader(TwoViews(images, simclr_augmentation(size, sargs.jitter_strength, sargs.blur, info.mean,
                                                                info.std)),
                           batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers, drop_last=True,
                           pin_memory=device.type == "cuda", persistent_workers=args.num_workers > 0)
    augment = BatchedSimCLRAugment(size, sargs.jitter_strength, sargs.blur, mean=info.mean, std=info.std).to(device)
    on_device = DeviceTwoViews(images.images, augment, args.batch_size, sampler, device)

    def loop(batches, train: bool):
        def gen():
            epoch = 0
            while True:
                sampler.set_epoch(epoch)
                for x1, x2 in batches:
                    if train:
                        step(x1.to(device, non_blocking=True), x2.to(device, non_blocking=True))
                    yield
                epoch += 1
        return gen

    model.train()
    results = {k: [] for k in ("aug_workers", "aug_device", "step_workers", "step_device", "step_ceiling")}
    views = 2 * args.batch_size * args.steps
    x_rand = torch.randn(args.batch_size, 3, size, size, device=device)
    for r in range(args.rounds):
        results["aug_workers"].append(views / timed(loop(per_image, False), args.steps, device))
        results["aug_device"].append(views / timed(loop(on_device, False), args.steps, device))
        results["step_workers"].append(views / timed(loop(per_image, True), args.steps, device))
        results["step_device"].append(views / timed(loop(on_device, True), args.steps, device))
        if device.type == "cuda":
            def ceiling():
                while True:
                    step(x_rand, x_rand)
                    yield
            results["step_ceiling"].append(views / timed(ceiling, args.steps, device))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in results.items() if v), flush=True)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"\n{args.arch} ({sargs.stem} stem), batch {args.batch_size} ({2 * args.batch_size} views/step), "
          f"{sargs.precision}{' channels_last' if sargs.channels_last else ''}, {name}; views/s, median of "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"{'':28}{'(a) workers':>14}{'(b) device':>14}{'b/a':>8}")
    print(f"{'augmentation alone':28}{med['aug_workers']:14.0f}{med['aug_device']:14.0f}"
          f"{med['aug_device'] / med['aug_workers']:8.2f}")
    print(f"{'full training step':28}{med['step_workers']:14.0f}{med['step_device']:14.0f}"
          f"{med['step_device'] / med['step_workers']:8.2f}")
    if "step_ceiling" in med:
        print(f"{'compute ceiling (random x)':28}{med['step_ceiling']:14.0f}   device path at "
              f"{100 * med['step_device'] / med['step_ceiling']:.0f}% of it")
    if args.memory and device.type == "cuda":
        print("\npeak GPU memory of a full step (device path):")
        for b in (256, 512, 1024, 4096):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                x = torch.randint(0, 256, (b, 3, images.images.shape[1], images.images.shape[2]), dtype=torch.uint8,
                                  device=device)
                step(augment(x), augment(x))
                torch.cuda.synchronize()
                print(f"  batch {b:5d}: {torch.cuda.max_memory_allocated() / 2**30:6.2f} GiB")
            except torch.cuda.OutOfMemoryError:
                print(f"  batch {b:5d}: out of memory")
    return med


if __name__ == "__main__":
    main(get_args_parser().parse_args())
