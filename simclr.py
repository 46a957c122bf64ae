"""SimCLR pretraining (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

    python simclr.py --dataset cifar10 --arch resnet18 --num-epochs 1000 --cosine-anneal --filename output.pth
    python simclr.py --dataset imagenet --num-epochs 1000 --cosine-anneal --filename output.pth \\
        --test-freq 0 --num-workers 32

Writes ``checkpoint/<filename>`` (model, optimizer, epoch/step, args, git commit) after every
``--save-freq`` epochs, and a CSV log of loss, learning rate, throughput and kNN accuracy beside it.

Several GPUs, one or several machines: launch with torchrun (one process per GPU)::

    torchrun --nproc_per_node=8 simclr.py --dataset imagenet --batch-size 4096 ...
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 simclr.py ...

Then the model is wrapped in DistributedDataParallel, ``--batch-size`` is the global batch (each of
the W processes takes B/W images of it, a different slice of the same seeded permutation), the
learning rate is scaled by the global batch, BatchNorm is synchronised across processes
(``--sync-bn``, the paper's global BN) and NT-Xent is computed on the embeddings gathered from all
processes with ``utils.distributed.gather_with_grad``, so a step is the step of one process on the
global batch (and a run can resume with another number of processes). Only rank 0 prints, logs,
writes checkpoints and runs the kNN monitor. Without torchrun, all visible GPUs of the machine are
used through DataParallel (BN statistics per GPU).

``--chunk-size N`` (gradient caching, Gao et al. 2021; ``training/gradcache.py``) computes the
loss over the full batch with the activation memory of N pairs per process, for a second forward
pass. BN statistics are then those of each chunk (as per-device BN without synchronisation, or
per-GPU BN under DataParallel); DDP + SyncBN over several GPUs is the exact alternative when
they exist.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data.augment import eval_transform
from data.datasets import DATASETS, ArrayImages, dataset_info, load_split
from data.loaders import two_view_batches
from data.paths import DEFAULT_PATHS_FILE
from data.sampler import EpochSampler
from data.views import Transformed
from evaluation.features import extract_features
from evaluation.knn import knn_accuracy
from models.loss import NTXentLoss
from models.resnet import ARCHS, STEMS
from models.simclr import SimCLR
from optim.groups import param_groups
from optim.lars import LARS
from optim.schedules import scaled_lr, warmup_constant, warmup_cosine
from training.gradcache import gradcache_step
from training.recipe import recipe
from utils.allocator import tune_cpu_allocator
from utils.checkpoint import (
    checkpoint_path,
    find_checkpoint,
    git_commit,
    load_checkpoint,
    save_checkpoint,
)
from utils.csvlog import CSVLog
from utils.distributed import (
    DistInfo,
    barrier,
    cleanup_distributed,
    convert_sync_batchnorm,
    gather_pairs,
    gather_with_grad,
    init_distributed,
)
from utils.errors import UserError, run_cli
from utils.interrupt import StopRequest

LOG_FIELDS = ["epoch", "step", "lr", "loss", "images_per_s", "knn_top1"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="SimCLR pretraining", formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", "-d", default="cifar10", choices=list(DATASETS),
                   help="dataset name, resolved through --dataset-paths (default: cifar10)")
    p.add_argument("--dataset-paths", default=DEFAULT_PATHS_FILE,
                   help="JSON file mapping dataset names to folders (default: the repository's dataset-paths.json)")
    p.add_argument("--arch", default="resnet50", choices=list(ARCHS), help="encoder (default: resnet50)")
    p.add_argument("--stem", default=None, choices=STEMS,
                   help="ResNet stem (default: cifar for CIFAR, stl for STL-10, imagenet for ImageNet)")
    p.add_argument("--width-multiplier", type=int, default=1,
                   help="scale every ResNet width, e.g. 2 for ResNet-50 (2x) (default: 1)")
    p.add_argument("--image-size", type=int, default=None,
                   help="crop side in pixels (default: 32 CIFAR, 96 STL-10, 224 ImageNet)")
    p.add_argument("--batch-size", type=int, default=512,
                   help="images per step, over all processes under torchrun (each takes B/W); each gives 2 views\n"
                        "(default: 512)")
    p.add_argument("--num-epochs", type=int, default=100, help="total epochs of the run (default: 100)")
    p.add_argument("--base-lr", type=float, default=None,
                   help="learning rate before scaling by --lr-scaling\n(default: 1.0 CIFAR/STL, 0.3 ImageNet)")
    p.add_argument("--lr-scaling", default="linear", choices=["linear", "sqrt", "none"],
                   help="linear: lr = base_lr*B/256; sqrt: lr = base_lr*sqrt(B); none: lr = base_lr (default: linear)")
    p.add_argument("--optimizer", default="lars", choices=["lars", "sgd"], help="(default: lars)")
    p.add_argument("--momentum", type=float, default=0.9, help="(default: 0.9)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="on weights with ndim > 1 only (default: 1e-4 CIFAR/STL, 1e-6 ImageNet)")
    p.add_argument("--trust-coefficient", type=float, default=1e-3, help="LARS eta (default: 1e-3)")
    p.add_argument("--temperature", type=float, default=None,
                   help="NT-Xent temperature (default: 0.5 CIFAR/STL, 0.1 ImageNet)")
    p.add_argument("--cosine-anneal", action="store_true",
                   help="cosine decay to 0 after warmup (default: off, constant lr after warmup)")
    p.add_argument("--warmup-epochs", type=float, default=10, help="linear warmup length in epochs (default: 10)")
    p.add_argument("--jitter-strength", type=float, default=None,
                   help="colour distortion strength s (default: 0.5 CIFAR, 1.0 STL-10/ImageNet)")
    p.add_argument("--blur", action=argparse.BooleanOptionalAction, default=None,
                   help="Gaussian blur with p=0.5 (default: off CIFAR, on STL-10/ImageNet)")
    p.add_argument("--proj-dim", type=int, default=128, help="projection output size (default: 128)")
    p.add_argument("--proj-hidden-dim", type=int, default=None,
                   help="projection hidden size (default: the encoder's feature size, 2048 for ResNet-50)")
    p.add_argument("--proj-layers", type=int, default=2, help="linear layers in the head; 3 is SimCLRv2 (default: 2)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes (default: 2)")
    p.add_argument("--test-freq", type=int, default=10,
                   help="kNN accuracy (k=200, t=0.1) on the test set every N epochs; 0 disables (default: 10)")
    p.add_argument("--knn-k", type=int, default=200, help="neighbours of the kNN monitor (default: 200)")
    p.add_argument("--filename", default="ckpt.pth",
                   help="checkpoint file; a bare name goes into ./checkpoint/ (default: ckpt.pth)")
    p.add_argument("--save-freq", type=int, default=1,
                   help="write the checkpoint every N epochs, at the end, and on SIGINT/SIGTERM (default: 1)")
    p.add_argument("--resume", "-r", nargs="?", const=True, default=None,
                   help="resume from --filename, or from the checkpoint given here")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order and augmentations (default: 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: all visible GPUs (DataParallel when several), else the CPU; under torchrun one GPU\n"
                        "per process (DistributedDataParallel, nccl), or CPU processes with gloo (default: auto)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="synchronise BatchNorm statistics over all torchrun processes (the paper's global BN)\n"
                        "(default: on under torchrun with several processes; no effect without torchrun)")
    p.add_argument("--chunk-size", type=int, default=0,
                   help="gradient caching: embed, then back-propagate, N pairs at a time per process (2N images\n"
                        "per forward), with the loss still over the whole batch; memory of N pairs, ~1.3x compute.\n"
                        "BN statistics are per chunk (like per-device BN without sync); DDP + SyncBN over\n"
                        "several GPUs is the exact alternative when they exist. 0: off (default: 0)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast for the network, loss in fp32; auto: bf16 on GPU, fp32 on CPU (on our\n"
                        "2-core CPU bf16 was slower: see README, Results) (default: auto)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on with bf16, off with fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model's forward (Inductor; the first steps take a minute or more to\n"
                        "compile). No gain on our 2-core CPU: meant for GPUs")
    p.add_argument("--log-freq", type=int, default=10,
                   help="read the loss back from the device every N steps; a CSV row each time (default: 10)")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill dataset-dependent defaults and reject values that cannot train."""
    dataset_info(args.dataset)  # a clear error for an unknown name
    for key, value in recipe(args.dataset).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    checks = [
        (args.num_epochs >= 1, f"--num-epochs must be at least 1, got {args.num_epochs}"),
        (args.batch_size >= 2, f"--batch-size must be at least 2 (NT-Xent needs negatives), got {args.batch_size}"),
        (args.base_lr > 0, f"--base-lr must be > 0, got {args.base_lr}"),
        (args.temperature > 0, f"--temperature must be > 0, got {args.temperature}"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}"),
        (args.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {args.warmup_epochs}"),
        (args.save_freq >= 1 and args.log_freq >= 1, "--save-freq and --log-freq must be at least 1"),
        (args.test_freq >= 0, "--test-freq must be >= 0 (0 disables the kNN monitor)"),
        (args.chunk_size >= 0, f"--chunk-size must be >= 0 (0 disables gradient caching), got {args.chunk_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    args.lr = scaled_lr(args.base_lr, args.batch_size, args.lr_scaling)
    return args


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """LARS (or SGD) over optim.groups.param_groups: weight decay (and LARS adaptation) on weights only."""
    groups = param_groups(model, args.weight_decay)
    if args.optimizer == "lars":
        return LARS(groups, lr=args.lr, momentum=args.momentum, trust_coefficient=args.trust_coefficient)
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)


def model_signature(args) -> dict:
    """What a checkpoint's weights depend on; a resumed run must match it."""
    keys = ["arch", "stem", "width_multiplier", "proj_dim", "proj_hidden_dim", "proj_layers"]
    return {k: (args[k] if isinstance(args, dict) else getattr(args, k)) for k in keys}


def compute_gradients(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, criterion: nn.Module,
                      args: argparse.Namespace, device: torch.device, gather=None) -> torch.Tensor:
    """Accumulate the gradient of NT-Xent on one batch (x1, x2: (N, 3, H, W) views of this process);
    return the loss, detached. ``gather`` (under DDP) collects the embeddings of all processes first;
    with ``--chunk-size`` smaller than N, gradient caching (training.gradcache)."""
    autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    if 0 < args.chunk_size < x1.shape[0]:
        return gradcache_step(model, x1, x2, criterion, args.chunk_size, autocast_dtype=autocast_dtype,
                              gather=gather, device=device, memory_format=memory_format)
    x = torch.cat([x1.to(device, non_blocking=True), x2.to(device, non_blocking=True)])  # (2N, 3, H, W)
    x = x.contiguous(memory_format=memory_format)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        z1, z2 = model(x).chunk(2)  # z: (N, proj_dim) each
    if gather is not None:
        z1, z2 = gather_pairs(z1, z2, gather)  # (W*N, proj_dim) each: the global batch's negatives
    loss = criterion(z1, z2)
    loss.backward()
    return loss.detach()


def train_one_epoch(model: nn.Module, loader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    lr_at, epoch: int, step: int, args: argparse.Namespace, dist_info: DistInfo,
                    log: CSVLog, stop: StopRequest | None = None) -> tuple[int, float, bool]:
    """One pass over ``loader``; returns the global step after it, the epoch's mean loss, and whether
    it stopped early on a stop request (SIGINT/SIGTERM), after finishing the step in progress."""
    model.train()
    gather = gather_with_grad if dist_info.world_size > 1 else None
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.num_epochs}", dynamic_ncols=True, leave=False,
               disable=not dist_info.is_main)
    pending, pending_n, total, count = None, 0, 0.0, 0
    tick = time.perf_counter()
    stopped = False
    for x1, x2 in bar:
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = compute_gradients(model, x1, x2, criterion, args, dist_info.device, gather)
        optimizer.step()
        step += 1
        pending = loss if pending is None else pending + loss
        pending_n += 1
        if pending_n == args.log_freq:
            total, count = _flush(pending, pending_n, total, count, epoch, step, lr, tick, args.batch_size, log, bar)
            pending, pending_n, tick = None, 0, time.perf_counter()
        if stop is not None and stop_agreed(stop, dist_info):
            stopped = True
            break
    if pending_n:
        total, count = _flush(pending, pending_n, total, count, epoch, step, lr, tick, args.batch_size, log, bar)
    bar.close()
    return step, total / max(count, 1), stopped


def stop_agreed(stop: StopRequest, dist_info: DistInfo) -> bool:
    """Whether to stop after this step; under DDP every rank stops at the same step (any rank's signal)."""
    if not dist_info.distributed:
        return stop.requested
    flag = torch.tensor([float(stop.requested)], device=dist_info.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def _flush(pending, n, total, count, epoch, step, lr, tick, batch, log, bar):
    """Read the summed loss of the last n steps back from the device (one sync), log it, stop if not finite."""
    loss = pending.item() / n
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss} at epoch {epoch + 1}, step {step}")
    images_per_s = n * batch / (time.perf_counter() - tick)
    log.write(epoch=epoch + 1, step=step, lr=lr, loss=loss, images_per_s=images_per_s)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.0f}")
    return total + loss * n, count + n


class NonFiniteLoss(UserError):
    pass


class NullLog:
    """The CSV log of the ranks other than 0: writes nothing."""

    def write(self, **row) -> None:
        pass

    def close(self) -> None:
        pass


def knn_monitor(backbone: nn.Module, train_set, test_set, device: torch.device, args) -> float:
    """kNN top-1 (%) of the test set against the training set, on features without augmentation."""
    def features(images, desc):
        data = Transformed(images, eval_transform(args.image_size, args.mean, args.std, args.native_size))
        return extract_features(backbone, data, device, batch_size=512, num_workers=args.num_workers,
                                autocast_dtype=torch.bfloat16 if args.precision == "bf16" else None, desc=desc)
    x_train, y_train = features(train_set, "kNN: train features")
    x_test, y_test = features(test_set, "kNN: test features")
    return knn_accuracy(x_train.to(device), y_train, x_test, y_test, len(train_set.classes), k=args.knn_k)


def main(args: argparse.Namespace) -> dict:
    """Pretrain; under torchrun every process runs this, in its process group (destroyed at the end)."""
    args = resolve_args(args)
    dist_info = init_distributed(device=args.device)
    try:
        return train(args, dist_info)
    finally:
        if dist_info.distributed:
            cleanup_distributed()


def train(args: argparse.Namespace, dist_info: DistInfo) -> dict:
    device, world, is_main = dist_info.device, dist_info.world_size, dist_info.is_main
    tune_cpu_allocator(device)  # on CPU: reuse freed tensors' memory (utils/allocator.py), ~1.5x per step
    say = print if is_main else (lambda *a, **k: None)
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} is the global batch and must be divisible by the number of "
                        f"processes ({world}): use --batch-size {args.batch_size // world * world or world}")
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    if args.channels_last is None:
        args.channels_last = args.precision == "bf16"
    ddp = dist_info.distributed
    if args.sync_bn is None:
        args.sync_bn = ddp and world > 1
    args.world_size = world
    info = dataset_info(args.dataset)
    args.mean, args.std = list(info.mean), list(info.std)
    torch.manual_seed(args.seed)

    pretrain = load_split(args.dataset, "pretrain", args.dataset_paths)
    if len(pretrain) < args.batch_size:
        raise UserError(f"--batch-size {args.batch_size} is larger than the dataset ({len(pretrain)} images): "
                        f"use --batch-size {len(pretrain)} or less")
    args.native_size = pretrain.images.shape[1] if isinstance(pretrain, ArrayImages) else None
    # Each rank takes every W-th image of the same seeded permutation (EpochSampler).
    sampler = EpochSampler(len(pretrain), seed=args.seed, num_replicas=world, rank=dist_info.rank)
    loader = two_view_batches(pretrain, sampler, args.batch_size // world, image_size=args.image_size,
                              jitter_strength=args.jitter_strength, blur=args.blur, mean=info.mean, std=info.std,
                              device=device, seed=args.seed, num_workers=args.num_workers)
    steps_per_epoch = len(pretrain) // args.batch_size  # = len(loader) on every rank
    total_steps = steps_per_epoch * args.num_epochs
    warmup_steps = round(args.warmup_epochs * steps_per_epoch)
    schedule = warmup_cosine if args.cosine_anneal else warmup_constant

    def lr_at(step: int) -> float:
        return schedule(step, args.lr, total_steps, warmup_steps)

    model = SimCLR(args.arch, args.stem, args.proj_dim, args.proj_hidden_dim, args.proj_layers,
                   args.width_multiplier)
    if args.sync_bn and ddp:
        model = convert_sync_batchnorm(model, device)  # same parameters and state_dict keys, new module types
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, args)
    criterion = NTXentLoss(args.temperature)
    if args.compile:
        model.compile()  # in place: the state_dict keys and the checkpoints stay those of the plain model

    path = checkpoint_path(args.filename)
    start_epoch, step, skip_steps = 0, 0, 0
    if args.resume:
        resume_from = find_checkpoint(args.filename if args.resume is True else args.resume)
        state = load_checkpoint(resume_from)
        saved = state.get("args", {})
        if model_signature(saved) != model_signature(args):
            raise UserError(f"{resume_from} holds a different model ({model_signature(saved)}) than asked for "
                            f"({model_signature(args)}): pass the same --arch/--stem/--proj-* options")
        if saved.get("optimizer") != args.optimizer:
            raise UserError(f"{resume_from} was trained with --optimizer {saved.get('optimizer')}: resume with it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"], state["step"]
        skip_steps = step - start_epoch * steps_per_epoch  # > 0 when the run was stopped mid-epoch
        if not 0 <= skip_steps < steps_per_epoch:
            raise UserError(f"{resume_from} was written with {state['step'] // max(start_epoch, 1)} steps per epoch, "
                            f"this run has {steps_per_epoch}: resume with the same --batch-size and dataset")
        say(f"resumed from {resume_from}: epoch {start_epoch}, step {step}"
            + (f" ({skip_steps} steps into epoch {start_epoch + 1})" if skip_steps else ""))
        if start_epoch >= args.num_epochs:
            say(f"nothing to do: the checkpoint has {start_epoch} epochs and --num-epochs is {args.num_epochs}")

    log_path = os.path.splitext(path)[0] + ".csv"
    log = CSVLog(log_path, LOG_FIELDS, keep_until_step=step if args.resume else 0) if is_main else NullLog()
    if ddp:
        net = DistributedDataParallel(model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None)
        parallel = f"DDP over {world} processes ({args.batch_size // world} images each), SyncBN {args.sync_bn}"
    elif device.type == "cuda" and torch.cuda.device_count() > 1:
        net, parallel = nn.DataParallel(model), f"DataParallel over {torch.cuda.device_count()} GPUs"
    else:
        net, parallel = model, "1 process"
    if args.sync_bn and not ddp:
        say("note: --sync-bn has no effect without torchrun (BN statistics are per device)")
    if args.chunk_size:
        parallel += f", gradient caching in chunks of {args.chunk_size} pairs"
    knn_sets = None
    if args.test_freq > 0 and is_main:
        knn_sets = (load_split(args.dataset, "train", args.dataset_paths),
                    load_split(args.dataset, "test", args.dataset_paths))

    say(f"{args.dataset}: {len(pretrain)} images, {steps_per_epoch} steps/epoch of {args.batch_size}; "
        f"{args.arch} ({args.stem} stem) on {device}, {args.precision}, {parallel}; lr {args.lr:.4g} "
        f"({args.lr_scaling} scaling of {args.base_lr}); checkpoint {path}, "
        f"log {log_path}")

    def checkpoint(epoch: int) -> None:
        """``epoch``: epochs completed; ``step`` may be further on when a run was stopped mid-epoch."""
        # The unwrapped model: keys stay backbone.*/head.* (SyncBN changes module types, not keys).
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "step": step, "args": vars(args), "git_commit": git_commit(),
                         "classes": list(pretrain.classes)}, path)

    result = {"checkpoint": path, "log": log_path, "losses": [], "knn": []}
    with StopRequest() as stop:
        for epoch in range(start_epoch, args.num_epochs):
            sampler.set_epoch(epoch, skip=skip_steps * (args.batch_size // world) if epoch == start_epoch else 0)
            try:
                step, mean_loss, stopped = train_one_epoch(net, loader, criterion, optimizer, lr_at, epoch, step,
                                                           args, dist_info, log, stop)
            except NonFiniteLoss as e:
                raise UserError(f"{e}; stopped without saving, the last good checkpoint {path} is untouched "
                                f"(try a lower --base-lr or --precision fp32)") from None
            done = epoch + (0 if stopped else 1)  # epochs completed
            if not stopped:
                result["losses"].append(mean_loss)
                message = f"epoch {done}/{args.num_epochs}: loss {mean_loss:.4f}, lr {lr_at(step):.4g}"
                if args.test_freq > 0 and (done % args.test_freq == 0 or done == args.num_epochs):
                    if is_main:
                        acc = knn_monitor(model.backbone, *knn_sets, device, args)
                        log.write(epoch=done, step=step, knn_top1=acc)
                        result["knn"].append(acc)
                        message += f", kNN top-1 {acc:.2f}%"
                    barrier(dist_info)  # the other ranks wait for rank 0's kNN monitor
                say(message, flush=True)
            interrupted = stopped or stop_agreed(stop, dist_info)  # a signal during kNN or between epochs
            if is_main and (interrupted or done % args.save_freq == 0 or done == args.num_epochs):
                checkpoint(done)
            if interrupted:
                log.close()
                barrier(dist_info)
                say(f"stopped by {stop.signal_name or 'a signal'} after step {step} (epoch {epoch + 1}); checkpoint "
                    f"{path} written. Resume with the same command plus --resume", flush=True)
                raise SystemExit(130 if stop.signal_name == "SIGINT" else 143)
    log.close()
    barrier(dist_info)  # no rank leaves before rank 0 has written the last checkpoint
    return result


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
