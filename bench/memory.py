"""Peak memory and views/s of a SimCLR training step versus batch size, with and without gradient caching.

Gradient caching (Gao et al. 2021; ``training/gradcache.py``, ``simclr.py --chunk-size``) keeps the
activations of one chunk at a time, so peak memory should stay flat in the batch size while a plain
step grows linearly; the price is a second forward pass.

    python bench/memory.py --batch-sizes 64 128 256 --chunk-size 32 --steps 2 --device cpu

The step is ``training.loop.train_step`` (the training loop's, LARS included), built by training.build, on random
images, for a ResNet (default resnet18, CIFAR stem, 32x32). Memory: on GPU the growth of
``torch.cuda.max_memory_allocated`` over the step (weights, gradients and optimizer state already
allocated); on CPU the growth of the peak resident set size (``ru_maxrss``) over the resident size
before the steps, each configuration in a fresh process since the peak cannot be reset. views/s
counts 2 views per image over the steps after the first (the first is a warm-up, timed alone when
``--steps 1``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.build import build_pretraining, step_config  # noqa: E402
from training.loop import train_step  # noqa: E402
from utils.allocator import tune_cpu_allocator  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402
from utils.precision import configure_backends, resolve_precision  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256], help="images per step")
    p.add_argument("--chunk-size", type=int, default=32, help="pairs per chunk of the gradient-caching runs")
    p.add_argument("--steps", type=int, default=2, help="steps per configuration (the first is a warm-up)")
    p.add_argument("--arch", default="resnet18", help="encoder")
    p.add_argument("--stem", default="cifar", help="ResNet stem")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="as simclr.py (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--plain-up-to", type=int, default=None, metavar="BATCH",
                   help="run without chunking only up to this batch (None: every batch)")
    p.add_argument("--one", type=int, nargs=2, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    return p


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(batch: int, chunk: int, args: argparse.Namespace, device: torch.device) -> dict:
    """One configuration in this process: peak memory growth (bytes) and views/s."""
    tune_cpu_allocator(device)  # as simclr.py does on CPU
    torch.manual_seed(0)
    precision = resolve_precision(args.precision, device)
    cfg = step_config("cifar10", batch, arch=args.arch, stem=args.stem, chunk_size=chunk, temperature=0.5,
                      base_lr=0.1, lr_scaling="none", weight_decay=1e-6)
    run = build_pretraining(cfg, DistInfo(device=device), precision, batch)  # simclr.py's step
    run.net.train()

    def step(n: int) -> None:
        x1 = torch.randn(n, 3, args.image_size, args.image_size, device=device)
        train_step(run, x1, torch.randn_like(x1), cfg.lr)

    step(2)  # gradients and optimizer state exist from here on
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    total = (torch.cuda.max_memory_allocated() if device.type == "cuda"
             else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # ru_maxrss: KiB on Linux
    timed = times[1:] or times
    views_per_s = 2 * batch * len(timed) / sum(timed)
    return {"batch": batch, "chunk": chunk, "peak_bytes": max(total - base, 0), "total_bytes": total,
            "views_per_s": views_per_s, "precision": precision.name}


def measure_or_oom(batch: int, chunk: int, args: argparse.Namespace, device: torch.device) -> dict:
    """GPU: ``measure``, or a row marked ``oom`` when the step does not fit (the next configurations
    still run: that is how the table finds the largest batch that fits)."""
    try:
        row = measure(batch, chunk, args, device)
    except RuntimeError as e:  # OutOfMemoryError is one; near the limit cuDNN and cuBLAS fail with their own
        if not out_of_memory(e):
            raise
        row = {"batch": batch, "chunk": chunk, "oom": True}
    gc.collect()  # out of the except block, the failed step's tensors are no longer held by its traceback
    torch.cuda.empty_cache()
    return row


def out_of_memory(e: RuntimeError) -> bool:
    """Whether ``e`` says the GPU ran out of memory: torch's OutOfMemoryError, or a cuDNN/cuBLAS failure to
    allocate its workspace."""
    text = str(e)
    return isinstance(e, torch.cuda.OutOfMemoryError) or any(
        s in text for s in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED"))


def run_isolated(batch: int, chunk: int, argv: list[str]) -> dict:
    """``measure`` in a fresh process (for the CPU peak RSS); returns its result."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--one", str(batch), str(chunk)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict], device: torch.device, args: argparse.Namespace) -> str:
    precision = next((r["precision"] for r in rows if "precision" in r), args.precision)
    lines = [f"{args.arch} ({args.stem} stem), {args.image_size}px, {precision}, {device}, "
             f"peak = {'max_memory_allocated' if device.type == 'cuda' else 'peak RSS'} growth over the step",
             "| batch | chunk | peak growth MiB | peak total MiB | views/s |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        chunk = r["chunk"] if r["chunk"] and r["chunk"] < r["batch"] else "off"
        if r.get("oom"):
            lines.append(f"| {r['batch']} | {chunk} | out of memory | | |")
            continue
        lines.append(f"| {r['batch']} | {chunk} | {r['peak_bytes'] / 2**20:.0f} | {r['total_bytes'] / 2**20:.0f} "
                     f"| {r['views_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    configure_backends(device)  # simclr.py's
    if args.one:
        print(json.dumps(measure(*args.one, args, device)))
        return []
    rows = []
    for batch in args.batch_sizes:
        plain = args.plain_up_to is None or batch <= args.plain_up_to
        for chunk in ((0,) if plain else ()) + ((args.chunk_size,) if args.chunk_size < batch else ()):
            if device.type == "cuda":
                rows.append(measure_or_oom(batch, chunk, args, device))
            else:
                rows.append(run_isolated(batch, chunk, argv))
            print(f"batch {batch}, chunk {chunk or 'off'}: " + ("out of memory" if rows[-1].get("oom") else
                  f"{rows[-1]['peak_bytes'] / 2**20:.0f} MiB, {rows[-1]['views_per_s']:.1f} views/s"),
                  file=sys.stderr, flush=True)
    print(format_table(rows, device, args))
    return rows


if __name__ == "__main__":
    main()
