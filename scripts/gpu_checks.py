"""The Python steps of scripts/gpu_checks.sh: CUDA against the CPU, host syncs, speed against the compute ceiling
and the GPU's peak, --compile against eager, and the data the checks make when none is carried.

    python scripts/gpu_checks.py data DIR [--paths FILE]   # 50,000 CIFAR-shaped images, a 224 px JPEG tree
    python scripts/gpu_checks.py equal --device cuda       # CUDA = CPU: draws, boxes, pixels, a step; bf16; syncs
    python scripts/gpu_checks.py speed --device cuda       # step vs ceiling, TFLOP/s vs the measured bf16 peak
    python scripts/gpu_checks.py compile --device cuda     # --compile against eager: equality and speed
    python scripts/gpu_checks.py same A.pth B.pth          # two checkpoints' weights (a resume against a straight run)

Each check prints its figures and one summary row per result, ``ROW|check|ok or FAIL or info|figures``, that
gpu_checks.sh gathers into its table. With ``--device cpu`` (the dry run) the device side is the CPU itself: the
comparisons exercise the code and prove nothing; what the CPU cannot do fast is skipped with a row saying so.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from data.batched_augment import BatchedSimCLRAugment, sample_crop_params  # noqa: E402
from data.keyed_random import ViewKeys  # noqa: E402
from data.official_augment import PIPELINES  # noqa: E402
from data.paths import load_paths  # noqa: E402
from training.build import build_pretraining, step_config  # noqa: E402
from training.loop import train_step  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402
from utils.precision import configure_backends, resolve_precision  # noqa: E402

CPU = torch.device("cpu")


def row(check: str, ok: bool | None, figures: str) -> None:
    """One line of the summary table: ok / FAIL, or info (None) for a figure without a pass mark."""
    print(f"ROW|{check}|{'info' if ok is None else 'ok' if ok else 'FAIL'}|{figures}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, n: int, device: torch.device) -> float:
    """Seconds for ``n`` calls of ``fn`` after one warm-up call, the device drained at both ends."""
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------------ data
def make_data(root: str, paths_file: str | None) -> None:
    """root/paths.json naming: the folders of ``paths_file`` that exist (a carried cifar10 among them); else for
    cifar10 root/cifar10/cifar-10-batches-py (50,000 + 10,000 random 32x32 images in torchvision's pickles); for
    imagenet root/tree/{train,val}/<class>/*.jpg (smooth random 224x224 JPEGs). And root/tiny.json, whose
    cifar10-sample is 64 + 32 of those JPEGs at 32 px: the dry run's pretraining runs."""
    rng = np.random.default_rng(0)
    mapping = {k: v for k, v in (load_paths(paths_file) if paths_file else {}).items() if os.path.isdir(v)}
    if "cifar10" not in mapping:
        folder = os.path.join(root, "cifar10", "cifar-10-batches-py")
        os.makedirs(folder, exist_ok=True)
        for name, n in [(f"data_batch_{i}", 10000) for i in range(1, 6)] + [("test_batch", 10000)]:
            with open(os.path.join(folder, name), "wb") as f:
                pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                             b"labels": rng.integers(0, 10, n).tolist()}, f)
        with open(os.path.join(folder, "batches.meta"), "wb") as f:
            pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
        mapping["cifar10"] = os.path.dirname(folder)
    for split, per_class in (("train", 150), ("val", 10)):
        for c in range(10):
            folder = os.path.join(root, "tree", split, f"n{c:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):  # low frequencies plus noise: a JPEG of a photograph's size, not of noise
                small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((224, 224),
                                                                                               Image.BICUBIC)
                pixels = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (224, 224, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.jpg"),
                                                                           quality=90)
    mapping["imagenet"] = os.path.join(root, "tree")
    for split, n in (("train", 64), ("test", 32)):
        for i in range(n):
            folder = os.path.join(root, "tiny", split, f"n{i % 4:08d}")
            os.makedirs(folder, exist_ok=True)
            Image.open(os.path.join(root, "tree", "train", f"n{i % 4:08d}", f"{i}.jpg")).resize((32, 32)).save(
                os.path.join(folder, f"{i}.png"))
    with open(os.path.join(root, "paths.json"), "w") as f:
        json.dump(mapping, f)
    with open(os.path.join(root, "tiny.json"), "w") as f:
        json.dump({"cifar10-sample": os.path.join(root, "tiny")}, f)
    print(f"data in {root}: {mapping}")


# ------------------------------------------------------------------------------------------------ CUDA = CPU
def one_step(device: torch.device, precision: str, x1: torch.Tensor, x2: torch.Tensor, **given) -> tuple:
    """simclr.py's CIFAR-10 ResNet-18 step from the seed's weights: (loss, gradients, weights after), on the CPU."""
    cfg = step_config("cifar10", x1.shape[0], arch="resnet18", **given)
    run = build_pretraining(cfg, DistInfo(device=device), resolve_precision(precision, device), x1.shape[0])
    loss = train_step(run, x1.to(device), x2.to(device), cfg.lr)
    params = [p for p in run.model.parameters() if p.grad is not None]
    return (float(loss), [p.grad.detach().double().cpu() for p in params],
            [p.detach().double().cpu() for p in params], run)


def worst_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest ||a_i - b_i|| / ||a_i|| over the tensors."""
    return max(float((x - y).norm() / x.norm().clamp_min(1e-30)) for x, y in zip(a, b))


def cosines(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """The cosine of the whole gradients and the smallest per-tensor cosine."""
    cos = [float(torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0)) for x, y in zip(a, b)]
    whole = torch.nn.functional.cosine_similarity(torch.cat([x.flatten() for x in a]),
                                                  torch.cat([y.flatten() for y in b]), dim=0)
    return float(whole), min(cos)


def check_equal(args: argparse.Namespace, device: torch.device) -> None:
    side = "CUDA" if device.type == "cuda" else "CPU (dry run)"
    keys = torch.arange(args.keys)
    u_cpu = ViewKeys(keys, 7, 3, 1).uniform(0, 35)
    u_dev = ViewKeys(keys.to(device), 7, 3, 1).uniform(0, 35).cpu()
    row("keyed draws", torch.equal(u_cpu, u_dev), f"{int((u_cpu != u_dev).sum())} of {args.keys:,} x 35 differ "
        f"({side} vs CPU)")
    del u_cpu, u_dev
    differ = {}
    for h, w in ((32, 32), (224, 224), (375, 500)):
        a = torch.stack(sample_crop_params(ViewKeys(keys, 7, 3, 1), h, w))
        b = torch.stack(sample_crop_params(ViewKeys(keys.to(device), 7, 3, 1), h, w)).cpu()
        differ[f"{h}x{w}"] = int((a != b).any(0).sum())
    row("crop boxes", not any(differ.values()), f"boxes that differ of {args.keys:,}: {differ}")
    n = min(args.keys, 100_000)  # the official sampler takes 400 draws a view
    aug = BatchedSimCLRAugment(224, pipeline=PIPELINES["official"])
    a = aug.crop_params(ViewKeys(keys[:n], 7, 3, 1), 375, 500)
    b = aug.to(device).crop_params(ViewKeys(keys[:n].to(device), 7, 3, 1), 375, 500)
    differ = int(torch.stack([(a[k] != b[k].cpu()) for k in a]).any(0).sum())
    row("official crop boxes", differ == 0, f"{differ} of {n:,} differ at 375x500 (--augment official's sampler)")

    g = torch.Generator().manual_seed(0)
    diffs = {}
    cases = [(augment, 32, 0.5, False, 32) for augment in PIPELINES] + [(augment, 224, 1.0, True, 256)
                                                                         for augment in PIPELINES]
    for augment, size, jitter, blur, side_in in cases:
        images = torch.randint(0, 256, (args.pixels, 3, side_in, side_in), dtype=torch.uint8, generator=g)
        idx = torch.arange(args.pixels)

        def make():
            return BatchedSimCLRAugment(size, jitter, blur, pipeline=PIPELINES[augment])
        a = make()(images, ViewKeys(idx, 0, 0, 0))
        b = make().to(device)(images.to(device), ViewKeys(idx.to(device), 0, 0, 0))
        diffs[f"{augment} {size}px{' blur' if blur else ''}"] = float((a - b.cpu()).abs().max())
    row("augmentation pixels", max(diffs.values()) < 1e-4, "max abs(CPU - device) in normalised units: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + " (TF32 off)")
    check_decode(args, device)

    aug = BatchedSimCLRAugment(32, 0.5, False)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    idx = torch.arange(args.batch)
    x1, x2 = aug(images, ViewKeys(idx, 0, 0, 0)), aug(images, ViewKeys(idx, 0, 0, 1))
    loss_c, grad_c, w_c, _ = one_step(CPU, "fp32", x1, x2)
    loss_d, grad_d, w_d, _ = one_step(device, "fp32", x1, x2)
    rel_g, rel_w = worst_rel(grad_c, grad_d), worst_rel(w_c, w_d)
    row("fp32 step", abs(loss_c - loss_d) <= 1e-5 * abs(loss_c) and rel_g < 1e-3,
        f"ResNet-18 batch {args.batch}: loss {loss_c:.6f} vs {loss_d:.6f}; worst per-tensor relative error of "
        f"the gradients {rel_g:.1e}, of the weights after LARS {rel_w:.1e}")
    if device.type == "cuda":
        loss_b, grad_b, _, _ = one_step(device, "bf16", x1, x2)
        whole, least = cosines(grad_d, grad_b)
        row("bf16 vs fp32", abs(loss_b - loss_d) < 1e-2 * abs(loss_d) and whole > 0.99,
            f"loss {loss_b:.5f} vs {loss_d:.5f}; gradient cosine {whole:.4f} (smallest per tensor {least:.4f})")
        check_syncs(device, args.batch)
    else:
        row("bf16 vs fp32", None, "skipped on the CPU (a check of the GPU's bf16; bench/throughput.py times both)")
        row("host syncs", None, "skipped on the CPU (torch.cuda.set_sync_debug_mode is a CUDA check)")


def check_decode(args: argparse.Namespace, device: torch.device) -> None:
    """--decode gpu's pixels: photograph-like JPEGs of 224-500 px decoded in one batched call on the device
    (data/jpeg_decode.decode_batch: nvJPEG on CUDA) against PIL's decode, the worker path's."""
    import io

    import numpy as np
    from PIL import Image

    from data.jpeg_decode import decode_batch
    rng = np.random.default_rng(0)
    files, ref = [], []
    for _ in range(min(args.pixels, 64)):
        h, w = (int(v) for v in rng.integers(224, 501, 2))
        low = rng.normal(128, 60, (h // 16 + 1, w // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
        buf = io.BytesIO()
        Image.fromarray((low + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)).save(buf, "JPEG",
                                                                                                  quality=90)
        files.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
        ref.append(torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))).permute(2, 0, 1))
    got = decode_batch(files, [f"generated {i}" for i in range(len(files))], device)
    diff = torch.cat([(g.cpu().int() - r.int()).abs().flatten() for g, r in zip(got, ref)]).float()
    p999 = float(diff.quantile(0.999)) if diff.numel() <= 16_000_000 else float(diff[::7].quantile(0.999))
    row("decode = PIL", None, f"{len(files)} JPEGs of 224-500 px decoded on {device.type} in one batch: levels of 255 "
        f"from PIL's, max {int(diff.max())}, 99.9th percentile {p999:.0f}, mean {float(diff.mean()):.3f}")


def check_syncs(device: torch.device, batch: int) -> None:
    """torch.cuda.set_sync_debug_mode("warn") over 5 steps of simclr.py's in-memory path (augmentation of both
    views from the keys on the device, the step at --precision auto): every synchronisation is a warning."""
    from data.loaders import InMemoryTwoViews
    from data.sampler import EpochSampler
    cfg = step_config("cifar10", batch, arch="resnet18")
    run = build_pretraining(cfg, DistInfo(device=device), resolve_precision("auto", device), batch)
    images = np.random.default_rng(0).integers(0, 256, (8 * batch, 32, 32, 3), dtype=np.uint8)
    batches = iter(InMemoryTwoViews(images, BatchedSimCLRAugment(32, 0.5, False).to(device), batch,
                                    EpochSampler(len(images), seed=0), device))
    train_step(run, *next(batches), cfg.lr)  # the epoch's key upload and the optimizer state: before
    sync(device)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(5):
                train_step(run, *next(batches), cfg.lr)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    found = [str(w.message).splitlines()[0] for w in seen if "synchroniz" in str(w.message).lower()]
    row("host syncs", not found, f"{len(found)} in 5 steps ({run.precision.name})"
        + (f"; first: {found[0][:120]}" if found else ""))


# ------------------------------------------------------------------------------------------------ speed
def peak_tflops(device: torch.device, n: int) -> float:
    """The measured peak: a bf16 (CUDA) or fp32 (CPU) n x n matmul, TFLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 2
    return 2 * n**3 * reps / timed(lambda: a @ b, reps, device) / 1e12


def check_speed(args: argparse.Namespace, device: torch.device) -> None:
    peak = peak_tflops(device, 8192 if device.type == "cuda" else 1024)
    row("matmul peak", None, f"{peak:.1f} TFLOP/s ({'bf16' if device.type == 'cuda' else 'fp32'}, measured)")
    configs = [("cifar10", "resnet18", 32, args.batch)]
    if device.type == "cuda":
        configs.append(("imagenet", "resnet50", 224, 256))
    else:
        row("ResNet-50 224 px", None, "skipped on the CPU (minutes a step)")
    for dataset, arch, size, batch in configs:
        cfg = step_config(dataset, batch, arch=arch)
        precision = resolve_precision("auto", device)
        run = build_pretraining(cfg, DistInfo(device=device), precision, batch)
        x = torch.randn(batch, 3, size, size, device=device)
        with FlopCounterMode(display=False) as counter:  # forward and backward of the network and the loss
            train_step(run, x, x, cfg.lr)
        flops = counter.get_total_flops()
        ceiling = timed(lambda: train_step(run, x, x, cfg.lr), args.steps, device)
        augment = BatchedSimCLRAugment(size, cfg.jitter_strength, cfg.blur).to(device)
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
        idx = torch.arange(batch, device=device)
        crop = size == 32  # CIFAR: the in-memory path crops; an image tree's workers have cut the crops already

        def step():
            train_step(run, augment(images, ViewKeys(idx, 0, 0, 0), crop=crop),
                       augment(images, ViewKeys(idx, 0, 0, 1), crop=crop), cfg.lr)
        full = timed(step, args.steps, device)
        views = 2 * batch * args.steps
        achieved = flops * args.steps / ceiling / 1e12
        row(f"{arch} {size}px step", None if device.type == "cpu" else full <= ceiling / 0.8,
            f"batch {batch}, {precision.name}: {views / full:,.0f} views/s with the augmentation, "
            f"{views / ceiling:,.0f} on random tensors (the ceiling): {100 * ceiling / full:.0f}% of it")
        row(f"{arch} {size}px TFLOP/s", None, f"{flops / 1e9:,.0f} GFLOP a step; {achieved:.1f} TFLOP/s at the "
            f"ceiling = {100 * achieved / peak:.0f}% of the measured matmul peak")


def check_compile(args: argparse.Namespace, device: torch.device) -> None:
    """simclr.py's step with --compile against eager, from the same weights on the same batch."""
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(args.batch, 3, 32, 32, generator=g) for _ in range(2))
    t = time.perf_counter()
    loss_c, grad_c, _, run_c = one_step(device, "auto", x1, x2, compile=True)
    first = time.perf_counter() - t
    loss_e, grad_e, _, run_e = one_step(device, "auto", x1, x2)
    whole, least = cosines(grad_e, grad_c)
    row("compile = eager", abs(loss_c - loss_e) < 1e-2 * abs(loss_e) and whole > 0.99,
        f"loss {loss_c:.5f} vs {loss_e:.5f}; gradient cosine {whole:.4f} (smallest per tensor {least:.4f}); "
        f"first compiled step {first:.0f} s")
    x1, x2 = x1.to(device), x2.to(device)
    speed = {name: 2 * args.batch * args.steps / timed(lambda: train_step(run, x1, x2, 0.1), args.steps, device)
             for name, run in (("eager", run_e), ("compiled", run_c))}
    row("compile speed", None, f"ResNet-18 batch {args.batch}: {speed['compiled']:,.0f} views/s compiled, "
        f"{speed['eager']:,.0f} eager ({speed['compiled'] / speed['eager']:.2f}x)")


def check_same(a_path: str, b_path: str) -> None:
    a, b = load_checkpoint(a_path)["model"], load_checkpoint(b_path)["model"]
    floats = [k for k in a if a[k].is_floating_point()]
    equal = sum(torch.equal(a[k], b[k]) for k in a)
    worst = worst_rel([a[k].double() for k in floats], [b[k].double() for k in floats])
    row("resume", worst < 1e-3, f"{equal} of {len(a)} tensors bit-identical to the straight run; worst relative "
        f"error {worst:.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("check", choices=["data", "equal", "speed", "compile", "same"])
    p.add_argument("files", nargs="*", help="data: DIR; same: A.pth B.pth")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--paths", help="data: a dataset-paths file whose cifar10, when it exists, is used")
    p.add_argument("--keys", type=int, default=1_000_000, help="equal: keys of the draws and boxes")
    p.add_argument("--pixels", type=int, default=256, help="equal: images of the pixel comparison")
    p.add_argument("--batch", type=int, default=512, help="images a step (equal, speed, compile)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (speed, compile)")
    args = p.parse_args()
    if args.check == "data":
        return make_data(args.files[0], args.paths)
    if args.check == "same":
        return check_same(*args.files)
    device = select_device(args.device)
    configure_backends(device)  # simclr.py's: cudnn.benchmark, fp32 without TF32
    torch.manual_seed(0)
    {"equal": check_equal, "speed": check_speed, "compile": check_compile}[args.check](args, device)


if __name__ == "__main__":
    main()
