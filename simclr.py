"""SimCLR pretraining (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

    python simclr.py --dataset cifar10 --arch resnet18 --num-epochs 1000 --filename output.pth
    torchrun --nproc_per_node=8 simclr.py --dataset imagenet --batch-size 4096 ...

The parser, the recipe and the wiring. Writes checkpoint/<filename> (model, optimizer, step, args, commit), a CSV log.
"""
from __future__ import annotations

import argparse
import os


from data.datasets import dataset_arg, input_info, native_size
from data.loaders import pretrain_input
from data.sampler import BATCHINGS
from evaluation.knn import KNNMonitor
from models.resnet import ARCHS, STEMS
from optim.schedules import lr_schedule, warmup_steps
from training.build import build_pretraining
from training.config import PretrainConfig, resolve_pretrain
from training.recipe import folder_note
from training.loop import BatchError, NonFiniteLoss, train_one_epoch
from training.run_files import claim_run, continued
from utils.allocator import tune_cpu_allocator
from utils.checkpoint import Saver, checkpoint_path, git_commit, save_checkpoint
from utils.cli import Parser, nonneg_float, nonneg_int, number, positive_float, positive_int
from utils.csvlog import CSVLog, NullLog
from utils.device import default_workers
from utils.distributed import DistInfo, any_rank, barrier, cleanup_distributed, init_distributed
from utils.errors import UserError, run_cli
from utils.files import check_output
from utils.interrupt import StopRequest
from utils.precision import configure_backends, resolve_precision
from utils.tensorboard import Logs, open_tensorboard, remove_events, view_pairs_grid

LOG_FIELDS = ["epoch", "step", "lr", "loss", "images_per_s", "knn_top1", "run_id"]
MODEL_KEYS = ["arch", "stem", "width_multiplier", "proj_dim", "proj_hidden_dim", "proj_layers"]


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description="SimCLR pretraining. 'recipe': the dataset's row of training/recipe.py; every default is\n"
                           "training/config.py's", formatter_class=argparse.RawTextHelpFormatter,
               argument_default=argparse.SUPPRESS)  # options not given stay out: resolve_pretrain fills them
    p.add_argument("--dataset", "-d", type=dataset_arg,
                   help="a dataset name, resolved through --dataset-paths, or a folder of images: class folders,\n"
                        "train/ and test/ folders of classes, or images without classes (README, Your own images)\n"
                        "(default: cifar10)")
    p.add_argument("--test-fraction", type=number(float, 0, 1, low_open=True, high_open=True),
                   help="of a --dataset folder of class folders without train/ and test/: the share of its images\n"
                        "held out as the test split, by path hash (default: 0.2)")
    p.add_argument("--dataset-paths",
                   help="JSON file mapping dataset names to folders (default: the repository's dataset-paths.json)")
    p.add_argument("--arch", choices=list(ARCHS), help="encoder (default: resnet50)")
    p.add_argument("--stem", choices=STEMS, help="ResNet stem (default: recipe)")
    p.add_argument("--width-multiplier", type=positive_int, help="every ResNet width times N (default: 1)")
    p.add_argument("--image-size", type=positive_int, help="crop side in pixels (default: recipe)")
    p.add_argument("--batch-size", type=number(int, 2),
                   help="images per step over all torchrun processes (B/W each), 2 views each (default: 512)")
    p.add_argument("--num-epochs", type=positive_int, help="total epochs of the run (default: 100)")
    p.add_argument("--base-lr", type=positive_float, help="lr before --lr-scaling (default: recipe)")
    p.add_argument("--lr-scaling", choices=["linear", "sqrt", "none"],
                   help="linear: lr = base_lr*B/256; sqrt: lr = base_lr*sqrt(B); none: lr = base_lr\n"
                        "(default: recipe: sqrt for ImageNet and Imagenette below batch 4096, else linear)")
    p.add_argument("--optimizer", choices=["lars", "sgd"], help="(default: lars)")
    p.add_argument("--momentum", type=nonneg_float, help="(default: 0.9)")
    p.add_argument("--weight-decay", type=nonneg_float,
                   help="on weights (ndim > 1) only (default: recipe)")
    p.add_argument("--trust-coefficient", type=positive_float, help="LARS eta (default: 1e-3)")
    p.add_argument("--temperature", type=positive_float, help="NT-Xent temperature (default: recipe)")
    p.add_argument("--loss-scale", choices=["official", "paper"],
                   help="official: loss_a + loss_b over the N pairs, the scale the official lr and weight decay\n"
                        "were tuned at; paper: Algorithm 1's mean over the 2N anchors, half of it (default: official)")
    p.add_argument("--cosine-anneal", action=argparse.BooleanOptionalAction,
                   help="cosine decay to 0 after warmup, the paper's; --no-cosine-anneal: constant (default: on)")
    p.add_argument("--warmup-epochs", type=nonneg_float,
                   help="linear warmup length in epochs (default: 10)")
    p.add_argument("--batching", choices=list(BATCHINGS),
                   help="stream: the official code's batches, running on across epochs (N*epochs//B + 1 steps,\n"
                        "warmup int(warmup_epochs*N/B)); epochs: N//B batches an epoch, its last N %% B images left\n"
                        "out, as the PyTorch reproductions (data/sampler.py) (default: stream)")
    p.add_argument("--jitter-strength", type=nonneg_float,
                   help="colour distortion strength s (default: recipe)")
    p.add_argument("--blur", action=argparse.BooleanOptionalAction, help="blur, p=0.5 (default: recipe)")
    p.add_argument("--augment", choices=["torchvision", "official"],
                   help="the ops' semantics: torchvision's (as the PyTorch reproductions), or the official TF2 "
                        "code's (its crop sampler, HSV saturation, per-channel contrast, zero-padded blur, bicubic "
                        "without antialiasing, [0, 1] inputs; README, What differs) (default: torchvision)")
    p.add_argument("--proj-dim", type=positive_int, help="projection output size (default: 128)")
    p.add_argument("--proj-hidden-dim", type=positive_int, help="(default: the encoder's feature size)")
    p.add_argument("--proj-layers", type=positive_int,
                   help="linear layers in the head; 3 is SimCLRv2 (default: 2)")
    p.add_argument("--decode", choices=["auto", "gpu", "workers"],
                   help="image trees read from disk: workers decode with PIL and cut the crops; gpu: workers read\n"
                        "the files' bytes and the training device decodes each batch (torchvision.io.decode_jpeg,\n"
                        "nvJPEG on CUDA; data/jpeg_decode.py); auto: gpu on CUDA where nvJPEG works, else workers\n"
                        "(default: auto)")
    p.add_argument("--num-workers", type=nonneg_int,
                   help="DataLoader worker processes for image trees and the kNN monitor\n"
                        "(default: the CPU cores of this process's affinity per process, less one, 2 to 16)")
    p.add_argument("--test-freq", type=nonneg_int,
                   help="kNN top-1 every N epochs, 0: off (default: recipe)")
    p.add_argument("--knn-k", type=positive_int, help="neighbours of the kNN monitor (default: 200)")
    p.add_argument("--filename", help="bare names go in ./checkpoint/ (default: ckpt.pth)")
    p.add_argument("--save-freq", type=positive_int,
                   help="write the checkpoint every N epochs, at the end, and on SIGINT/SIGTERM (default: after\n"
                        "any epoch that ends 100 times the last write's duration after it: < 1%% of the time)")
    p.add_argument("--resume", "-r", nargs="?", const=True,
                   help="continue the run in --filename, or in the file given (its options must be this run's)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint and log at --filename (without it an existing run is refused)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: apply options that differ from the checkpoint's from here on, recorded in\n"
                        "its history (without it such a resume is refused with the list of differences)")
    p.add_argument("--seed", type=int, help="seed of weights, data order and augmentations (default: 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="auto: all visible GPUs (DataParallel when several), else the CPU; under torchrun one GPU\n"
                        "per process (DistributedDataParallel, nccl), or CPU processes with gloo (default: auto)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction,
                   help="synchronise BatchNorm statistics over all torchrun processes (the paper's global BN)\n"
                        "(default: on under torchrun with several processes; no effect without torchrun)")
    p.add_argument("--chunk-size", type=nonneg_int,
                   help="gradient caching: the loss over the whole batch with the activation memory of N images\n"
                        "per process; BN statistics per chunk and view (README). 0: off (default: 0)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast for the network, loss in fp32; auto: bf16 where it is fast (GPUs of\n"
                        "compute capability 8.0 or newer, CPUs with AMX or AVX512-BF16), fp32 elsewhere\n"
                        "(default: auto)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last memory format (default: on with bf16, off with fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (not under DataParallel)")
    p.add_argument("--log-freq", type=positive_int,
                   help="read the loss back from the device every N steps; a CSV row each time (default: 10)")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="also write the log's rows, and once the first batch's view pairs, as TensorBoard events\n"
                        "into DIR (needs the tensorboard package) (default: off)")
    return p


def resolve_args(args: argparse.Namespace) -> PretrainConfig:
    """The options given, over the dataset's recipe and the defaults (training/config.py), checked."""
    return resolve_pretrain(vars(args))


def main(args: argparse.Namespace) -> dict:
    """Pretrain; under torchrun every process runs this, in its process group (destroyed at the end)."""
    cfg = resolve_args(args)
    dist_info = init_distributed(device=cfg.device)
    try:
        return train(cfg, dist_info)
    finally:
        cleanup_distributed()  # a no-op without a process group


def setup(cfg: PretrainConfig, dist_info: DistInfo):
    """Data, model, optimizer, and the configuration with the values this machine decides (saved with checkpoints)."""
    device, world = dist_info.device, dist_info.world_size
    precision = resolve_precision(cfg.precision, device, cfg.channels_last)
    cfg = cfg.with_(precision=precision.name, channels_last=precision.channels_last, world_size=world,
                    sync_bn=dist_info.distributed and world > 1 if cfg.sync_bn is None else cfg.sync_bn,
                    num_workers=default_workers() if cfg.num_workers is None else cfg.num_workers)
    pretrain, sampler, batches, decode = pretrain_input(
        cfg.dataset, cfg.dataset_paths, cfg.batch_size, num_epochs=cfg.num_epochs, batching=cfg.batching,
        world=world, rank=dist_info.rank, seed=cfg.seed, device=device, decode=cfg.decode,
        image_size=cfg.image_size, jitter_strength=cfg.jitter_strength, blur=cfg.blur, augment=cfg.augment,
        num_workers=cfg.num_workers)
    cfg = cfg.with_(native_size=native_size(pretrain), decode=decode)
    run = build_pretraining(cfg, dist_info, precision, cfg.batch_size // world)
    return cfg, pretrain, sampler, batches, run


def train(cfg: PretrainConfig, dist_info: DistInfo) -> dict:
    """Pretrain into checkpoint_path(--filename) and the CSV log beside it, holding the run's lock throughout."""
    path = checkpoint_path(cfg.filename)
    log_path = os.path.splitext(path)[0] + ".csv"
    lock = claim_run(cfg, path, log_path, dist_info)
    try:
        return fit(cfg, dist_info, path, log_path)
    finally:
        if lock is not None:
            lock.release()


def fit(cfg: PretrainConfig, dist_info: DistInfo, path: str, log_path: str) -> dict:
    device = dist_info.device
    print0 = print if dist_info.is_main else lambda *a, **k: None  # rank 0 speaks for all
    tune_cpu_allocator(device)  # on CPU: reuse freed tensors' memory (utils/allocator.py)
    configure_backends(device)
    cfg, pretrain, sampler, batches, run = setup(cfg, dist_info)
    unscored = cfg.test_freq and not pretrain.classes  # a folder of images without classes: no kNN monitor
    cfg = cfg.with_(test_freq=0) if unscored else cfg
    model, optimizer, precision = run.model, run.optimizer, run.precision
    if dist_info.is_main:  # room for one more checkpoint (model and momentum) beside the old one
        check_output(path, "--filename", 2 * sum(t.numel() * t.element_size() for t in model.state_dict().values()))
    starts = sampler.starts  # each epoch's first step, then the run's number of steps (data/sampler.py)
    start_epoch, step, run_id, history = continued(cfg, dist_info, run, path, starts, MODEL_KEYS)
    warmup = warmup_steps(cfg.warmup_epochs, len(pretrain), cfg.batch_size, cfg.batching)
    lr_at = lr_schedule(cfg.lr, starts[-1], warmup, cfg.cosine_anneal)
    keep = step if cfg.resume and not cfg.overwrite else None
    if cfg.tensorboard is not None and cfg.overwrite and not cfg.resume and dist_info.is_main:
        remove_events(cfg.tensorboard)  # another run's, replaced as its checkpoint is (claim_run checked)
    board = open_tensorboard(cfg.tensorboard, dist_info.is_main, purge_step=None if keep is None else keep + 1)
    log = Logs(CSVLog(log_path, LOG_FIELDS, run_id, keep), board) if dist_info.is_main else NullLog()
    monitor = knn_monitor(cfg, device, precision) if cfg.test_freq > 0 and dist_info.is_main else None
    print0(startup_line(cfg, dist_info, run, len(pretrain), starts[-1], path, log_path))
    print0(f"options {cfg.origin()}; the others: training/config.py's defaults")
    if unscored:
        print0(f"kNN monitor off: {cfg.dataset} has no classes to score it with")

    def save(epoch: int) -> None:  # epoch: epochs completed; step may be further on after a mid-epoch stop
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "step": step, "args": cfg.as_dict(), "git_commit": git_commit(), "run_id": run_id,
                         "history": history, "classes": list(pretrain.classes)}, path)

    result = {"checkpoint": path, "log": log_path, "losses": [], "knn": []}
    if board is not None and start_epoch < cfg.num_epochs:
        show_view_pairs(board, cfg, sampler, batches, start_epoch, step - starts[start_epoch], step)
    saver = Saver(save, cfg.save_freq, cfg.num_epochs)
    with StopRequest() as stop:
        for epoch in range(start_epoch, cfg.num_epochs):
            sampler.set_epoch(epoch, skip=step - starts[epoch] if epoch == start_epoch else 0)  # mid-epoch resume
            try:
                step, stopped, mean_loss = run_epoch(cfg, dist_info, run, batches, lr_at, epoch, step, log, stop)
            except BatchError as e:  # e.g. an unreadable image: the steps done are kept
                step = e.step
                leave_unread(e, saver, epoch, dist_info, path)
            stopped = any_rank(stopped or stop.requested, dist_info)
            done = epoch + (step == starts[epoch + 1])  # a stop after an epoch's last step completes it
            if dist_info.is_main:  # saved before the kNN monitor, so that a bad test image costs no epoch
                saver(done, force=stopped)
            if done > epoch:  # the epoch is complete: its line and, when due, its kNN row (after a stop too)
                due = end_epoch(cfg, dist_info, epoch, step, lr_at, log, result, mean_loss, monitor, model)
                if due and not stopped:
                    stopped = any_rank(stop.requested, dist_info)  # a signal during the kNN monitor
                    if stopped and dist_info.is_main:
                        saver(epoch + 1, force=True)
            if stopped:
                leave_stopped(stop, log, dist_info, step, epoch, path)
    log.close()
    barrier(dist_info)  # no rank leaves before rank 0 has written the last checkpoint
    return result


def knn_monitor(cfg: PretrainConfig, device, precision) -> KNNMonitor:
    """The kNN monitor of the run's dataset (rank 0's)."""
    return KNNMonitor(cfg.dataset, cfg.dataset_paths, cfg.image_size, cfg.native_size, device, precision,
                      cfg.num_workers, cfg.knn_k, cfg.augment, cfg.test_fraction)


def show_view_pairs(board, cfg: PretrainConfig, sampler, batches, epoch: int, skip: int, step: int) -> None:
    """Once, in TensorBoard: the two views of the first batch this run trains on, side by side (the picture that
    shows a wrong augmentation); the views are keyed, so drawing them changes nothing in the run."""
    sampler.set_epoch(epoch, skip=skip)
    info = input_info(cfg.dataset, cfg.augment)
    board.image("view_pairs", view_pairs_grid(*next(iter(batches)), info.mean, info.std), step)


def startup_line(cfg: PretrainConfig, dist_info: DistInfo, run, images: int, steps: int, path: str,
                 log_path: str) -> str:
    epochs = f"{cfg.num_epochs} epoch" + "s" * (cfg.num_epochs > 1)
    return (f"{cfg.dataset}{folder_note(cfg.dataset)}: {images} images, {steps} steps of {cfg.batch_size} in "
            f"{epochs} ({cfg.batching} batching); {cfg.arch} ({cfg.stem} stem) at {cfg.image_size} px "
            f"on {dist_info.device}, {run.precision.label}, {run.parallel}, SyncBN {cfg.sync_bn}"
            + (" (--sync-bn has no effect without torchrun)" if cfg.sync_bn and not dist_info.distributed else "")
            + (f", gradient caching in chunks of {cfg.chunk_size} pairs" if cfg.chunk_size else "")
            + {"memory": "", "workers": "; images decoded by the DataLoader workers (PIL)",
               "gpu": f"; images decoded on {dist_info.device} in batches (torchvision.io.decode_jpeg)"}[cfg.decode]
            + f"; lr {cfg.lr:.4g} ({cfg.lr_scaling} scaling of {cfg.base_lr}); checkpoint {path}, log {log_path}")


def run_epoch(cfg, dist_info, run, batches, lr_at, epoch, step, log, stop) -> tuple[int, bool, float]:
    """One epoch (training/loop.py); returns the step, whether a stop was asked for, and the mean loss."""
    try:
        step, mean_loss, stopped = train_one_epoch(
            run, batches, lr_at, epoch, step, device=dist_info.device, images_per_step=cfg.batch_size, log=log,
            stop=stop, dist_info=dist_info, log_every=cfg.log_freq, desc=f"epoch {epoch + 1}/{cfg.num_epochs}",
            show=dist_info.is_main)
    except NonFiniteLoss as e:
        raise UserError(f"{e} (epoch {epoch + 1}); stopped without saving, the last good checkpoint "
                        f"{checkpoint_path(cfg.filename)} is untouched (try a lower --base-lr or --precision fp32)"
                        ) from None
    return step, stopped, mean_loss


def leave_unread(e: BatchError, saver, epoch: int, dist_info, path: str) -> None:
    """After a batch that could not be read: the steps done saved by rank 0, every rank out with the error."""
    if dist_info.is_main:
        saver(epoch, force=True)
    barrier(dist_info)  # under torchrun: no rank exits (and gets the others killed) before the save
    raise UserError(f"{e}; the {e.step} steps done are saved in {path}: replace the file, then resume with "
                    f"--resume") from None


def leave_stopped(stop, log, dist_info, step: int, epoch: int, path: str) -> None:
    """After a stop's checkpoint: the log closed, every rank out together, the exit code of the signal."""
    log.close()
    barrier(dist_info)
    if dist_info.is_main:
        print(f"stopped by {stop.signal_name or 'a signal'} after step {step} (epoch {epoch + 1}); checkpoint "
              f"{path} written. Resume with the same command plus --resume", flush=True)
    raise SystemExit(130 if stop.signal_name == "SIGINT" else 143)


def end_epoch(cfg, dist_info, epoch, step, lr_at, log, result, mean_loss, monitor, model) -> bool:
    """A completed epoch's mean loss in ``result``, its line, with the kNN top-1 when due (rank 0 alone; the
    others wait); whether the kNN monitor was due."""
    done = epoch + 1
    result["losses"].append(mean_loss)
    message = f"epoch {done}/{cfg.num_epochs}: loss {mean_loss:.4f}, lr {lr_at(step):.4g}"
    due = cfg.test_freq > 0 and (done % cfg.test_freq == 0 or done == cfg.num_epochs)
    if due:
        if dist_info.is_main:
            acc = monitor(model.backbone)
            log.write(epoch=done, step=step, knn_top1=acc)
            result["knn"].append(acc)
            message += f", kNN top-1 {acc:.2f}%"
        barrier(dist_info)  # the other ranks wait for rank 0's kNN monitor
    if dist_info.is_main:
        print(message, flush=True)
    return due


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
