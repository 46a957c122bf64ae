"""Views per second of a full SimCLR training step (augment + forward + NT-Xent + backward + LARS).

    python bench/throughput.py                                  # CPU: ResNet-18, CIFAR stem, batch 256
    python bench/throughput.py --device cuda --batch-size 512 --steps 30 --memory

Measured side by side in one run, in alternating rounds (the machine's noise hits all alike), each
measurement in a fresh process so that no path inherits another's worker processes or heap:
  (a) workers: the per-image torchvision PIL pipeline in DataLoader workers (the usual PyTorch SimCLR),
      with glibc's default malloc settings, as other repositories run;
  (b) device:  uint8 images on the device, batched augmentation there (data.loaders.InMemoryTwoViews), same malloc;
  (c) CPU only: (b) plus the malloc tuning that simclr.py applies on CPU (utils/allocator.py),
and printed as ratios to (a); the same for augmentation alone; and the compute ceiling of (b) and (c):
the same step on random tensors already on the device, so no data path can beat it. On CPU it says
which targets are reachable at all (a 2x over (a) above the ceiling is not); with --memory (GPU), peak
memory per batch size. The full step of simclr.py's path (the last column) is also measured at the
other precision, so that fp32, bf16 and the one --precision auto picks show side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from data.batched_augment import BatchedSimCLRAugment  # noqa: E402
from data.datasets import ArrayImages, dataset_info, load_split  # noqa: E402
from data.loaders import InMemoryTwoViews  # noqa: E402
from data.keyed_random import ViewKeys  # noqa: E402
from data.sampler import EpochSampler  # noqa: E402
from data.reference_augment import TwoViews, simclr_augmentation  # noqa: E402
from training.build import build_pretraining, step_config  # noqa: E402
from training.loop import train_step  # noqa: E402
from training.recipe import recipe  # noqa: E402
from utils.allocator import tune_cpu_allocator  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402
from utils.precision import configure_backends, resolve_precision  # noqa: E402

# (name, path, malloc tuning) of each column
CONFIGS = {"a": ("workers", False), "b": ("device", False), "c": ("device", True)}
LABELS = {"a": "(a) workers", "b": "(b) device", "c": "(c) b+malloc"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Training-step throughput: per-image workers vs batched on-device views")
    p.add_argument("--dataset", default="cifar10-sample",
                   help="images to use, tiled as needed (default: cifar10-sample)")
    p.add_argument("--arch", default="resnet18", help="(default: resnet18)")
    p.add_argument("--batch-size", type=int, default=256, help="(default: 256)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and path (default: 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the median is reported (default: 2)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of path (a) (default: 2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="as simclr.py (default: auto)")
    p.add_argument("--compile", action="store_true", help="as simclr.py --compile (the warm-up step compiles)")
    p.add_argument("--memory", action="store_true", help="GPU only: peak memory for batch 256/512/1024/4096")
    p.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)  # measure one column, print JSON
    return p


def settings(args: argparse.Namespace, device: torch.device) -> tuple[dict, object]:
    """The dataset's recipe (as simclr.py's defaults) and the precision simclr.py would run at."""
    return recipe(args.dataset), resolve_precision(args.precision, device)


def timed(fn, steps: int, device: torch.device, warmup: int = 1) -> float:
    """Seconds for ``steps`` calls after ``warmup`` calls."""
    it = fn()
    for _ in range(warmup):
        next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def process_setup(choice: str, tuned: bool) -> torch.device:
    """This column's process: its device, simclr.py's backend setup, and glibc malloc's tuning where ``tuned``."""
    device = select_device(choice)
    if tuned:
        tune_cpu_allocator(device)
    configure_backends(device)
    return device


def measure(args: argparse.Namespace) -> dict:
    """One column in this process: views/s of augmentation alone and of the full step (and the ceiling)."""
    path, tuned = CONFIGS[args.one]
    device = process_setup(args.device, tuned)
    torch.manual_seed(0)
    r, precision = settings(args, device)
    info = dataset_info(args.dataset)
    base = load_split(args.dataset, "pretrain")
    need = (args.steps + 1) * args.batch_size * 2
    reps = -(-need // len(base))
    images = ArrayImages(np.concatenate([base.images] * reps), np.concatenate([base.labels] * reps), base.classes)
    size = r["image_size"]
    cfg = step_config(args.dataset, args.batch_size, arch=args.arch, compile=args.compile)
    run = build_pretraining(cfg, DistInfo(device=device), precision, args.batch_size)  # simclr.py's step
    run.net.train()

    def step(x1, x2):
        train_step(run, x1, x2, cfg.lr)

    sampler = EpochSampler(len(images), seed=0)
    augment = BatchedSimCLRAugment(size, r["jitter_strength"], r["blur"], mean=info.mean, std=info.std).to(device)
    if path == "workers":
        batches = DataLoader(TwoViews(images, simclr_augmentation(size, r["jitter_strength"], r["blur"], info.mean,
                                                                  info.std)),
                             batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers, drop_last=True,
                             pin_memory=device.type == "cuda", persistent_workers=args.num_workers > 0)
    else:
        batches = InMemoryTwoViews(images.images, augment, args.batch_size, sampler, device)

    def loop(train: bool):
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

    views = 2 * args.batch_size * args.steps
    # Augmentation alone: first take the batches the workers prefetched during the warm-up (2 per worker),
    # so that the timed ones are made while timed.
    prefetched = 2 * args.num_workers if path == "workers" else 0
    out = {"aug": views / timed(loop(False), args.steps, device, warmup=1 + prefetched),
           "step": views / timed(loop(True), args.steps, device)}
    if path == "device":
        x_rand = torch.randn(args.batch_size, 3, size, size, device=device)

        def ceiling():
            while True:
                step(x_rand, x_rand)
                yield
        out["ceiling"] = views / timed(ceiling, args.steps, device)
        if args.memory and device.type == "cuda":
            out["memory"] = peak_memory(step, augment, images.images.shape[1:3], device)
    return out


def peak_memory(step, augment, hw, device) -> dict:
    """GPU: peak allocated memory (GiB, or None when out of memory) of one device-path step per batch size."""
    peaks = {}
    for b in (256, 512, 1024, 4096):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            x = torch.randint(0, 256, (b, 3, *hw), dtype=torch.uint8, device=device)
            index = torch.arange(b, device=device)
            step(augment(x, ViewKeys(index, view=0)), augment(x, ViewKeys(index, view=1)))
            torch.cuda.synchronize()
            peaks[b] = torch.cuda.max_memory_allocated() / 2**30
        except torch.cuda.OutOfMemoryError:
            peaks[b] = None
    return peaks


def run_column(args: argparse.Namespace, column: str, memory: bool = False, precision: str | None = None) -> dict:
    """``measure`` for one column in a fresh process (no tuned heap, no worker processes carried over);
    ``memory``: also the peak memory per batch size (GPU); ``precision``: instead of ``args.precision``."""
    argv = [sys.executable, os.path.abspath(__file__), "--one", column, "--dataset", args.dataset, "--arch", args.arch,
            "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--num-workers", str(args.num_workers),
            "--device", args.device, "--precision", precision or args.precision] + (["--memory"] if memory else [])
    argv += ["--compile"] if args.compile else []
    env = dict(os.environ, SIMCLR_MALLOC_TUNING="1" if CONFIGS[column][1] else "0")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.exit(f"column {column} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> dict:
    device = select_device(args.device)
    columns = ["a", "b", "c"] if device.type == "cpu" else ["a", "b"]
    other = "fp32" if resolve_precision(args.precision, device).name == "bf16" else "bf16"
    results: dict[str, list[dict]] = {c: [] for c in columns + [other]}
    for r in range(args.rounds):
        for c in columns:  # peak memory once: in the last round's column b, the one printed
            results[c].append(run_column(args, c, memory=args.memory and c == "b" and r == args.rounds - 1))
        results[other].append(run_column(args, columns[-1], precision=other))  # simclr.py's path, other precision
        print(f"round {r + 1}: " + ", ".join(f"{LABELS[c]} aug {results[c][-1]['aug']:.0f} step "
                                             f"{results[c][-1]['step']:.1f}" for c in columns)
              + f"; {LABELS[columns[-1]]} at {other} step {results[other][-1]['step']:.1f}", flush=True)
    device_columns = [c for c in columns if CONFIGS[c][0] == "device"]
    keys = {c: ("aug", "step", "ceiling") if c in device_columns else ("aug", "step") for c in columns}
    med = {c: {k: statistics.median(res[k] for res in results[c]) for k in keys[c]} for c in columns}
    r, precision = settings(args, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"\n{args.arch} ({r['stem']} stem), batch {args.batch_size} ({2 * args.batch_size} views/step), "
          f"{precision.name}{' channels_last' if precision.channels_last else ''}, {name}; views/s, median of "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"{'':22}" + "".join(f"{LABELS[c]:>14}" for c in columns) + "".join(f"{c + '/a':>8}" for c in columns[1:]))
    for key, label in (("aug", "augmentation alone"), ("step", "full training step")):
        print(f"{label:22}" + "".join(f"{med[c][key]:14.1f}" for c in columns)
              + "".join(f"{med[c][key] / med['a'][key]:8.2f}" for c in columns[1:]))
    print(f"{'compute ceiling':22}{'':14}" + "".join(f"{med[c]['ceiling']:14.1f}" for c in device_columns))
    print(f"{'step / its ceiling':22}{'':14}"
          + "".join(f"{100 * med[c]['step'] / med[c]['ceiling']:13.0f}%" for c in device_columns))
    best = max(med[c]["ceiling"] for c in device_columns)
    print(f"\nThe best ceiling is {best / med['a']['step']:.2f}x the full step of (a): no data path can make a "
          f"step faster than that on this machine.")
    step = {precision.name: med[columns[-1]]["step"], other: statistics.median(x["step"] for x in results[other])}
    auto = resolve_precision("auto", device)
    print(f"\nfull step of {LABELS[columns[-1]]}: fp32 {step['fp32']:.1f}, bf16 {step['bf16']:.1f} views/s; "
          f"auto picks {auto.label}: {100 * step[auto.name] / max(step.values()):.0f}% of the faster")
    if device.type == "cuda" and args.memory:
        print("\npeak GPU memory of a full step (device path):")
        for b, gib in results["b"][-1]["memory"].items():
            print(f"  batch {int(b):5d}: " + ("out of memory" if gib is None else f"{gib:6.2f} GiB"))
    return med


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    if parsed.one:
        print(json.dumps(measure(parsed)))
    else:
        main(parsed)
