"""Fine-tuning on a fraction of the labels: semi-supervised evaluation (Chen et al. 2020, Sec. 4.2, Table 7).

    python finetune.py --load-from output.pth --label-fraction 0.01      # 1% of the labels, 60 epochs
    python finetune.py --load-from output.pth --label-fraction 0.1       # 10%, 30 epochs
    python finetune.py --load-from output.pth --label-fraction 0.1 --from-scratch   # baseline, same recipe

The encoder, the first ``--from-head-layer`` layers of its head and a new zero-initialised classifier
(models/finetune.py) are trained on a class-balanced labelled subset (data/subsets.py) with the official
fine-tuning recipe (README, "Fine-tuning on few labels"); writes the subset and a JSON result beside the checkpoint.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import DataLoader

from data.augment import eval_transform, train_linear_transform
from data.datasets import DATASETS, ArrayImages, load_train_test
from data.paths import DEFAULT_PATHS_FILE
from data.sampler import EpochSampler
from data.subsets import IndexedImages, check_subset, draw_subset, holdout_split, requested_subset
from data.views import SeededTransformed, Transformed
from evaluation.load import evaluation_target, finetune_encoder, state_equal
from evaluation.outputs import prepare_outputs
from evaluation.supervised import evaluate, fit
from models.finetune import FROZEN_BN, STAGES, FineTuneNet
from models.resnet import ARCHS, STEMS
from optim.groups import build_optimizer
from optim.schedules import lr_schedule, scaled_lr
from training.recipe import FINETUNE_BASE_LR
from utils.allocator import tune_cpu_allocator
from utils.checkpoint import checkpoint_path, find_checkpoint, git_commit
from utils.cli import Parser, nonneg_float, nonneg_int, number, positive_float, positive_int
from utils.distributed import select_device
from utils.errors import UserError, run_cli
from utils.files import save_json, save_torch
from utils.precision import resolve_precision


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description="Fine-tune a SimCLR encoder on a fraction of the labels",
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--load-from", default=None, help="simclr.py checkpoint or backbone state_dict (or --from-scratch)")
    p.add_argument("--from-scratch", action="store_true",
                   help="the same network, recipe and subset from random init: the baseline for pretraining")
    p.add_argument("--dataset", default=None, choices=list(DATASETS),
                   help="(default: the one the checkpoint was trained on)")
    p.add_argument("--dataset-paths", default=DEFAULT_PATHS_FILE, help="(default: the repository's dataset-paths.json)")
    p.add_argument("--arch", default=None, choices=list(ARCHS), help="(default: the checkpoint's)")
    p.add_argument("--stem", default=None, choices=STEMS, help="(default: the checkpoint's, else the dataset's)")
    p.add_argument("--width-multiplier", type=positive_int, default=None,
                   help="ResNet width multiplier (default: the checkpoint's, else 1)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="(default: the checkpoint's, else the dataset's)")
    g = p.add_argument_group("labels")
    g.add_argument("--label-fraction", type=number(float, 0, 1, low_open=True), default=None,
                   help="fraction of the training labels, in (0, 1]: 0.01 and 0.1 are the paper's Table 7;\n"
                        "the same number of images from every class, at least one (required unless --subset-file)")
    g.add_argument("--subset-file", default=None,
                   help="JSON subset of an earlier run or `python -m data.subsets`: train on exactly those images\n"
                        "(refused for another dataset); without it one is drawn and written as <result>.subset.json")
    g.add_argument("--subset-seed", type=int, default=0, help="seed of the subset and validation split (default: 0)")
    g.add_argument("--val-fraction", type=number(float, 0, 1, high_open=True), default=0.0,
                   help="part of every class of the subset held out to choose the epoch by top-1; at 1%% of CIFAR-10,\n"
                        "0.1 chooses on 5 images per class (default: 0: the whole subset, the last epoch, as official)")
    g.add_argument("--val-freq", type=positive_int, default=1,
                   help="with --val-fraction: validate every N epochs and after the last (default: 1)")
    g = p.add_argument_group("model")
    g.add_argument("--finetune-from", default="conv1", choices=STAGES,
                   help="first trained part, the earlier ones frozen (--frozen-bn): conv1 (the paper) trains all,\n"
                        "head only the kept head layers and the classifier (default: conv1)")
    g.add_argument("--frozen-bn", default="train", choices=FROZEN_BN,
                   help="BN of the frozen stages. train: batch statistics, running ones updated, as the official\n"
                        "code; eval: running statistics, frozen. Their weights never change (default: train)")
    g.add_argument("--from-head-layer", type=nonneg_int, default=0,
                   help="keep the first K layers of the checkpoint's projection head between encoder and\n"
                        "classifier, and fine-tune them; SimCLRv2: 1 with its 3-layer head (default: 0, none)")
    g = p.add_argument_group("optimisation (defaults: the official code's fine-tuning on ImageNet 1%/10%)")
    g.add_argument("--num-epochs", type=positive_int, default=None,
                   help="(default: 60 for fractions <= 1%%, else 30: the paper's 1%% and 10%% settings)")
    g.add_argument("--batch-size", type=number(int, 2), default=None,
                   help="(default: min(1024, training images): the official command's 1024)")
    g.add_argument("--optimizer", default="lars", choices=["lars", "sgd"],
                   help="lars: trust 1e-3, classifier without adaptation; sgd: momentum SGD (default: lars)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum with --optimizer sgd (App. B.5)")
    g.add_argument("--momentum", type=nonneg_float, default=0.9, help="(default: 0.9)")
    g.add_argument("--trust-coefficient", type=positive_float, default=1e-3, help="LARS eta (default: 1e-3)")
    g.add_argument("--lr-scaling", default="sqrt", choices=["sqrt", "linear", "none"],
                   help="sqrt: lr = base_lr*sqrt(B); linear: base_lr*B/256; none: base_lr (default: sqrt)")
    g.add_argument("--base-lr", type=positive_float, default=None,
                   help="(default: training/recipe.FINETUNE_BASE_LR: 0.005 with sqrt scaling, the official\n"
                        "fine-tuning; 0.05 with linear, the paper's App. B.5; 0.16 with none)")
    g.add_argument("--schedule", default="cosine", choices=["cosine", "constant"], help="no warmup (default: cosine)")
    g.add_argument("--weight-decay", type=nonneg_float, default=0.0,
                   help="on weights, ndim > 1 (default: 0, the paper)")
    g = p.add_argument_group("run")
    g.add_argument("--num-workers", type=nonneg_int, default=2, help="(default: 2)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast (loss in fp32); auto: as simclr.py (default: auto)")
    g.add_argument("--output", default=None,
                   help="JSON result (default: <checkpoint>.finetune-<dataset>-<N>pct[-scratch].json)")
    g.add_argument("--save-model", default=None, help="also write the reported fine-tuned weights to this file")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    g.add_argument("--seed", type=int, default=0, help="seed of data order, augmentations, new weights (default: 0)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """The checks that relate two options (each option's range is checked at parsing)."""
    if args.val_freq != 1 and args.val_fraction == 0:
        raise UserError("--val-freq goes with --val-fraction (e.g. 0.1)")
    if args.nesterov and args.optimizer != "sgd":
        raise UserError("--nesterov goes with --optimizer sgd")


def build_model(args: argparse.Namespace):
    """(backbone, head, saved args, checkpoint path or None), pretrained or at random init."""
    ckpt = find_checkpoint(args.load_from) if args.load_from else None
    backbone, head, saved = finetune_encoder(ckpt, args.from_scratch, args.arch, args.stem, args.width_multiplier,
                                             args.dataset, args.from_head_layer, args.seed)
    return backbone, head, saved, ckpt


def plan_outputs(args: argparse.Namespace, dataset: str, ckpt: str | None, name: str):
    """(``--subset-file``'s record or None, subset file, result file), every output checked before any compute:
    not an input nor another output, not existing unless ``--overwrite``, writable (evaluation/outputs.py)."""
    record = requested_subset(args.subset_file, args.label_fraction)
    fraction = record["fraction"] if record is not None else args.label_fraction
    tag = f"finetune-{dataset}-{100 * fraction:.6g}pct{'-scratch' if args.from_scratch else ''}"
    output = args.output or (f"{os.path.splitext(ckpt)[0]}.{tag}.json" if ckpt
                             else checkpoint_path(f"scratch-{name}.{tag}.json"))
    subset_file = args.subset_file or f"{os.path.splitext(output)[0]}.subset.json"
    drawn = subset_file if record is None else None
    prepare_outputs({"--output": output, "--save-model": args.save_model, "the subset file of --output": drawn},
                    {"--load-from": ckpt, "--subset-file": args.subset_file, "--dataset-paths": args.dataset_paths},
                    args.overwrite, hints={"the subset file of --output": f"pass --subset-file {drawn} to train on "
                                                                          f"it, or choose another --output"})
    return record, subset_file, output


def loaders(args: argparse.Namespace, train_full, test, fit_idx, val_idx, size: int, info, batch_size: int,
            device: torch.device) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    """Augmented, seeded training batches (a new order each epoch); validation and test without augmentation."""
    native = train_full.images.shape[1] if isinstance(train_full, ArrayImages) else None
    test_tf, eval_batch = eval_transform(size, info.mean, info.std, native), min(max(batch_size, 256), 1024)
    train_tf = train_linear_transform(size, info.mean, info.std)
    train = DataLoader(SeededTransformed(IndexedImages(train_full, fit_idx), train_tf, args.seed),
                       batch_size=batch_size, sampler=EpochSampler(len(fit_idx), seed=args.seed), drop_last=True,
                       num_workers=args.num_workers, pin_memory=device.type == "cuda",
                       persistent_workers=args.num_workers > 0)
    val = (DataLoader(Transformed(IndexedImages(train_full, val_idx), test_tf), batch_size=eval_batch,
                      num_workers=args.num_workers) if len(val_idx) else None)
    return train, val, DataLoader(Transformed(test, test_tf), batch_size=eval_batch, num_workers=args.num_workers)


def write_results(summary: dict, output: str, model: FineTuneNet, args: argparse.Namespace, classes) -> None:
    """The JSON result, and with ``--save-model`` the reported weights with the run's args and result."""
    save_json(output, summary)
    print(f"wrote {output}")
    if args.save_model:
        save_torch(args.save_model, {"model": model.state_dict(), "args": vars(args), "summary": summary,
                                     "classes": list(classes)})
        print(f"wrote {args.save_model}")


def train(model: FineTuneNet, args: argparse.Namespace, lr: float, total_steps: int, epochs: int, train_loader,
          val_loader, precision, device: torch.device) -> tuple[dict, list, float]:
    """Fine-tune (models/finetune.py's frozen parts checked unmoved after); (reported epoch, history, seconds)."""
    frozen_before, start = model.frozen_state(), time.perf_counter()
    optimizer = build_optimizer(model, args.optimizer, lr, args.weight_decay, args.momentum, args.trust_coefficient,
                                plain=model.classifier, nesterov=args.nesterov)  # classifier: official head_supervised
    best, history = fit(model, optimizer, lr_schedule(lr, total_steps, 0, args.schedule == "cosine"), train_loader,
                        epochs, precision, device, val_loader, args.val_freq)
    seconds = time.perf_counter() - start
    if not state_equal(model.frozen_state(), frozen_before):
        raise RuntimeError("a frozen part of the encoder changed during fine-tuning: this is a bug, please report it")
    return best, history, seconds


def main(args: argparse.Namespace) -> dict:
    check_args(args)
    device = select_device(args.device)
    tune_cpu_allocator(device)  # on CPU: keep freed tensors' memory for reuse (utils/allocator.py)
    precision = resolve_precision(args.precision, device)
    backbone, head, saved, ckpt = build_model(args)
    arch = args.arch or saved.get("arch")
    dataset, info, size = evaluation_target(ckpt, saved, args.dataset, args.image_size)
    name = f"{arch}{f'-{backbone.width_multiplier}x' if backbone.width_multiplier != 1 else ''}"
    record, subset_file, output = plan_outputs(args, dataset, ckpt, name)
    train_full, test = load_train_test(dataset, args.dataset_paths)
    record = (check_subset(record, subset_file, dataset, train_full.labels) if record is not None
              else draw_subset(subset_file, dataset, train_full.labels, args.label_fraction, args.subset_seed))
    fit_idx, val_idx = holdout_split(record["indices"], train_full.labels, args.val_fraction, args.subset_seed)
    if args.val_fraction > 0 and len(val_idx) == 0:
        print("no validation images (every class has a single labelled image): the last epoch is kept")
    batch_size = args.batch_size or min(1024, len(fit_idx))
    if batch_size > len(fit_idx):
        raise UserError(f"--batch-size {batch_size} is larger than the labelled training images ({len(fit_idx)} "
                        f"after holding out {len(val_idx)} for validation): use --batch-size {len(fit_idx)} or less")
    epochs = args.num_epochs or (60 if record["fraction"] <= 0.01 else 30)
    base_lr = args.base_lr or FINETUNE_BASE_LR[args.lr_scaling]
    lr = scaled_lr(base_lr, batch_size, args.lr_scaling)
    train_loader, val_loader, test_loader = loaders(args, train_full, test, fit_idx, val_idx, size, info,
                                                    batch_size, device)
    torch.manual_seed(args.seed)
    model = FineTuneNet(backbone, head, len(train_full.classes), args.finetune_from, args.frozen_bn)
    model = model.to(device, memory_format=precision.memory_format)
    total_steps = epochs * (len(fit_idx) // batch_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kind = "random-init" if args.from_scratch else "pretrained"
    frozen = f" (frozen BN: {args.frozen_bn} mode)" if model.num_frozen else ""
    reported = ("the epoch of the best validation top-1" if val_loader is not None
                else "the last epoch (the whole subset trained on)")
    print(f"{dataset}: {len(record['indices'])} labelled ({record['per_class']} per class, {subset_file}): "
          f"{len(fit_idx)} train / {len(val_idx)} validation / {len(test)} test. {kind} {name} ({backbone.stem} "
          f"stem) + {len(head.layers)} head layer(s) from {args.finetune_from}{frozen}: {trainable / 1e6:.2f}M trained "
          f"parameters; {epochs} epochs of {total_steps // epochs} steps of {batch_size}, {args.optimizer} lr "
          f"{lr:.4g} ({args.lr_scaling} of {base_lr}), {args.schedule}; {device}, {precision.label}. Reports "
          f"{reported} on the test set")
    best, history, seconds = train(model, args, lr, total_steps, epochs, train_loader, val_loader, precision, device)
    top1, top5, test_loss = evaluate(model, test_loader, device, precision, desc="test")  # the only test evaluation
    chosen = best["state"] is not None  # an epoch chosen on validation, else the last
    summary = {
        "checkpoint": ckpt, "dataset": dataset, "arch": arch, "stem": backbone.stem,
        "width_multiplier": backbone.width_multiplier, "image_size": size, "label_fraction": record["fraction"],
        "subset_file": subset_file, "subset_seed": record["seed"], "num_labelled": len(record["indices"]),
        "num_train": len(fit_idx), "num_val": len(val_idx), "num_test": len(test), "epochs": epochs,
        "batch_size": batch_size, "base_lr": base_lr, "lr": lr, "precision": precision.name,
        **{k: vars(args)[k] for k in ("val_fraction", "from_scratch", "finetune_from", "frozen_bn",
                                      "from_head_layer", "optimizer", "nesterov", "lr_scaling", "schedule",
                                      "weight_decay", "seed")},
        "reported_epoch": best["epoch"], "reported_by": "best validation top-1" if chosen else "last epoch",
        "reported_val_top1": best["val_top1"], "top1": top1, "top5": top5,
        "test_loss": test_loss, "train_seconds": seconds, "history": history, "git_commit": git_commit(),
    }
    print(f"test top-1 {top1:.2f}%, top-5 {top5:.2f}% ({len(test)} images) with the weights of epoch "
          f"{best['epoch']} ({'best validation top-1' if chosen else 'the last'})")
    write_results(summary, output, model, args, train_full.classes)
    return {**summary, "model": model, "output": output}


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
