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

from data.datasets import dataset_arg, load_train_test
from data.subsets import IndexedImages, check_subset, draw_subset, holdout_split, requested_subset
from evaluation.config import FinetuneConfig, print_filled, resolve_finetune, with_dataset, with_subset
from evaluation.harness import (Target, add_precision_option, check_outputs, default_output, eval_loader,
                                eval_transform_for, finetune_network, place, save_result, seeded_train_loader, setup,
                                test_split)
from evaluation.load import state_equal
from evaluation.supervised import evaluate, fit
from models.finetune import FROZEN_BN, STAGES, FineTuneNet
from models.resnet import ARCHS, STEMS
from optim.groups import build_optimizer
from optim.schedules import lr_schedule, scaled_lr
from utils.cli import Parser, nonneg_float, nonneg_int, number, positive_float, positive_int
from utils.errors import UserError, run_cli
from utils.files import save_torch
from utils.precision import Precision
from utils.tensorboard import TensorBoardLog, claim_log_dir, open_tensorboard, remove_events, view_pairs_grid


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description="Fine-tune a SimCLR encoder on a fraction of the labels",
               formatter_class=argparse.RawTextHelpFormatter,
               argument_default=argparse.SUPPRESS)  # options not given stay out: evaluation/config.py fills them
    p.add_argument("--load-from", help="simclr.py checkpoint or backbone state_dict (or --from-scratch)")
    p.add_argument("--from-scratch", action="store_true",
                   help="the same network, recipe and subset from random init: the baseline for pretraining")
    p.add_argument("--dataset", type=dataset_arg,
                   help="(default: the one the checkpoint was trained on)")
    p.add_argument("--test-fraction", type=number(float, 0, 1, low_open=True, high_open=True),
                   help="of a --dataset folder of class folders without train/ and test/: the share of its images\n"
                        "held out as the test split, by path hash (default: 0.2)")
    p.add_argument("--dataset-paths", help="(default: the repository's dataset-paths.json)")
    p.add_argument("--arch", choices=list(ARCHS), help="(default: the checkpoint's)")
    p.add_argument("--stem", choices=STEMS, help="(default: the checkpoint's, else the dataset's)")
    p.add_argument("--width-multiplier", type=positive_int,
                   help="ResNet width multiplier (default: the checkpoint's, else 1)")
    p.add_argument("--image-size", type=positive_int,
                   help="(default: the checkpoint's, else the dataset's)")
    g = p.add_argument_group("labels")
    g.add_argument("--label-fraction", type=number(float, 0, 1, low_open=True),
                   help="fraction of the training labels, in (0, 1]: 0.01 and 0.1 are the paper's Table 7;\n"
                        "the same number of images from every class, at least one (required unless --subset-file)")
    g.add_argument("--subset-file",
                   help="JSON subset of an earlier run or `python -m data.subsets`: train on exactly those images\n"
                        "(refused for another dataset); without it one is drawn and written as <result>.subset.json")
    g.add_argument("--subset-seed", type=int, help="seed of the subset and validation split (default: 0)")
    g.add_argument("--val-fraction", type=number(float, 0, 1, high_open=True),
                   help="part of every class of the subset held out to choose the epoch by top-1; at 1%% of CIFAR-10,\n"
                        "0.1 chooses on 5 images per class (default: 0: the whole subset, the last epoch, as official)")
    g.add_argument("--val-freq", type=positive_int,
                   help="with --val-fraction: validate every N epochs and after the last (default: 1)")
    g = p.add_argument_group("model")
    g.add_argument("--finetune-from", choices=STAGES,
                   help="first trained part, the earlier ones frozen (--frozen-bn): conv1 (the paper) trains all,\n"
                        "head only the kept head layers and the classifier (default: conv1)")
    g.add_argument("--frozen-bn", choices=FROZEN_BN,
                   help="BN of the frozen stages. train: batch statistics, running ones updated, as the official\n"
                        "code; eval: running statistics, frozen. Their weights never change (default: train)")
    g.add_argument("--from-head-layer", type=nonneg_int,
                   help="keep the first K layers of the checkpoint's projection head between encoder and\n"
                        "classifier, and fine-tune them; SimCLRv2: 1 with its 3-layer head (default: 0, none)")
    g = p.add_argument_group("optimisation (defaults: the official code's fine-tuning on ImageNet 1%/10%)")
    g.add_argument("--num-epochs", type=positive_int,
                   help="(default: 60 for fractions <= 1%%, else 30: the paper's 1%% and 10%% settings)")
    g.add_argument("--batch-size", type=number(int, 2),
                   help="(default: min(1024, training images): the official command's 1024)")
    g.add_argument("--optimizer", choices=["lars", "sgd"],
                   help="lars: trust 1e-3, classifier without adaptation; sgd: momentum SGD (default: lars)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum with --optimizer sgd (App. B.5)")
    g.add_argument("--momentum", type=nonneg_float, help="(default: 0.9)")
    g.add_argument("--trust-coefficient", type=positive_float, help="LARS eta (default: 1e-3)")
    g.add_argument("--lr-scaling", choices=["sqrt", "linear", "none"],
                   help="sqrt: lr = base_lr*sqrt(B); linear: base_lr*B/256; none: base_lr (default: sqrt)")
    g.add_argument("--base-lr", type=positive_float,
                   help="(default: training/recipe.FINETUNE_BASE_LR: 0.005 with sqrt scaling, the official\n"
                        "fine-tuning; 0.05 with linear, the paper's App. B.5; 0.16 with none)")
    g.add_argument("--schedule", choices=["cosine", "constant"], help="no warmup (default: cosine)")
    g.add_argument("--weight-decay", type=nonneg_float,
                   help="on weights, ndim > 1 (default: 0, the paper)")
    g = p.add_argument_group("run")
    g.add_argument("--num-workers", type=nonneg_int, help="(default: 2)")
    add_precision_option(g, "finetune", "autocast of the network, the loss in fp32")
    g.add_argument("--output",
                   help="JSON result (default: <checkpoint>.finetune-<dataset>-<N>pct[-scratch].json)")
    g.add_argument("--save-model", help="also write the reported fine-tuned weights to this file")
    g.add_argument("--tensorboard", metavar="DIR",
                   help="also write the logged scalars (every epoch's loss, lr and validation scores, the test\n"
                        "scores) and a picture of the augmentation as TensorBoard events into DIR (needs the\n"
                        "tensorboard package); a DIR with events is refused unless --overwrite, which replaces them")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    g.add_argument("--seed", type=int, help="seed of data order, augmentations, new weights (default: 0)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    return p


def plan_outputs(cfg: FinetuneConfig, target: Target, name: str):
    """(``--subset-file``'s record or None, subset file, result file), every output checked before any compute:
    not an input nor another output, not existing unless ``--overwrite``, writable (evaluation/outputs.py)."""
    record = requested_subset(cfg.subset_file, cfg.label_fraction)
    fraction = record["fraction"] if record is not None else cfg.label_fraction
    output = cfg.output or default_output(target.checkpoint, "finetune", target.dataset, f"{100 * fraction:.6g}pct",
                                          "scratch" if cfg.from_scratch else "", scratch_name=name)
    subset_file = cfg.subset_file or f"{os.path.splitext(output)[0]}.subset.json"
    drawn = subset_file if record is None else None
    check_outputs(cfg, target, {"--output": output, "--save-model": cfg.save_model,
                                "the subset file of --output": drawn}, {"--subset-file": cfg.subset_file},
                  hints={"the subset file of --output": f"pass --subset-file {drawn} to train on it, or choose "
                                                        f"another --output"})
    if cfg.tensorboard is not None:
        claim_log_dir(cfg.tensorboard, cfg.overwrite)
    return record, subset_file, output


def loaders(cfg: FinetuneConfig, train_full, test, fit_idx, val_idx, target: Target,
            device: torch.device) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    """Augmented, seeded training batches (a new order each epoch); validation and test without augmentation."""
    test_tf, eval_batch = eval_transform_for(target, train_full), min(max(cfg.batch_size, 256), 1024)
    train = seeded_train_loader(IndexedImages(train_full, fit_idx), target, cfg.batch_size, cfg.seed, cfg.num_workers,
                                device)
    val = (eval_loader(IndexedImages(train_full, val_idx), test_tf, eval_batch, cfg.num_workers) if len(val_idx)
           else None)
    return train, val, eval_loader(test, test_tf, eval_batch, cfg.num_workers)


def settings(cfg: FinetuneConfig, target: Target, backbone, record: dict, subset_file: str, num_train: int,
             num_val: int, num_test: int, precision: Precision) -> dict:
    """The run's settings, the first fields of the result: ``cfg`` with batch size and epochs filled in from the
    subset (evaluation/config.with_subset) and the lr by the scaling rule."""
    if cfg.batch_size > num_train:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the labelled training images ({num_train} "
                        f"after holding out {num_val} for validation): use --batch-size {num_train} or less")
    return {
        "checkpoint": target.checkpoint, "dataset": target.dataset,
        **test_split(target.dataset, cfg), "arch": target.arch, "stem": backbone.stem,
        "width_multiplier": backbone.width_multiplier, "image_size": target.image_size,
        "label_fraction": record["fraction"], "subset_file": subset_file, "subset_seed": record["seed"],
        "num_labelled": len(record["indices"]), "num_train": num_train, "num_val": num_val, "num_test": num_test,
        "epochs": cfg.num_epochs, "batch_size": cfg.batch_size,
        "base_lr": cfg.base_lr, "lr": scaled_lr(cfg.base_lr, cfg.batch_size, cfg.lr_scaling),
        "precision": precision.name,
        **{k: getattr(cfg, k) for k in ("val_fraction", "from_scratch", "finetune_from", "frozen_bn",
                                        "from_head_layer", "optimizer", "nesterov", "lr_scaling", "schedule",
                                        "weight_decay", "seed")},
    }


def describe(run: dict, record: dict, model: FineTuneNet, name: str, device: torch.device,
             precision: Precision) -> None:
    """One line: the data, the network, what is trained, the schedule and what will be reported."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kind = "random-init" if run["from_scratch"] else "pretrained"
    frozen = f" (frozen BN: {run['frozen_bn']} mode)" if model.num_frozen else ""
    reported = ("the epoch of the best validation top-1" if run["num_val"]
                else "the last epoch (the whole subset trained on)")
    line = ("{dataset}: {num_labelled} labelled ({per_class} per class, {subset_file}): {num_train} train / "
            "{num_val} validation / {num_test} test. {kind} {name} ({stem} stem) + {head} head layer(s) from "
            "{finetune_from}{frozen}: {trainable:.2f}M trained parameters; {epochs} epochs of {steps} steps of "
            "{batch_size}, {optimizer} lr {lr:.4g} ({lr_scaling} of {base_lr}), {schedule}; {device}, {precision}. "
            "Reports {reported} on the test set")
    print(line.format_map({**run, "per_class": record["per_class"], "kind": kind, "name": name, "frozen": frozen,
                           "head": len(model.head.layers), "trainable": trainable / 1e6, "device": device,
                           "steps": run["num_train"] // run["batch_size"], "precision": precision.label,
                           "reported": reported}))


def augmentation_grid(train_loader: DataLoader, eval_tf, mean, std, n: int = 8) -> torch.Tensor:
    """The first ``n`` images of the first training batch as evaluated (top row) and as trained, randomly cropped
    and flipped (below), the same augmentation as in training (data/views.SeededTransformed is keyed by (epoch,
    image); no RNG is consumed): (3, H, W) in [0, 1]."""
    data = train_loader.dataset
    keys = [(0, i) for i in train_loader.sampler.order(0)[:n]]  # epoch 1's first images (data/sampler.EpochSampler)
    trained = torch.stack([data[key][0] for key in keys])  # (n, 3, S, S)
    plain = torch.stack([eval_tf(data.images.image(i)) for _, i in keys])
    return view_pairs_grid(plain, trained, mean, std, n)


def start_tensorboard(cfg: FinetuneConfig, train_loader: DataLoader, eval_tf, target: Target) -> TensorBoardLog | None:
    """With ``--tensorboard``, its log (the events of an earlier run removed: ``--overwrite``, checked in
    :func:`plan_outputs`) with the picture of the augmentation; else None."""
    if cfg.tensorboard is None:
        return None
    remove_events(cfg.tensorboard)
    log = open_tensorboard(cfg.tensorboard)
    log.image("augmentation", augmentation_grid(train_loader, eval_tf, target.info.mean, target.info.std))
    return log


def write_results(summary: dict, output: str, model: FineTuneNet, cfg: FinetuneConfig, classes) -> dict:
    """The JSON result (with the git commit, returned), and with ``--save-model`` the reported weights with the
    run's options (``args``, resolved) and that result."""
    summary = save_result(output, summary)
    if cfg.save_model:
        save_torch(cfg.save_model, {"model": model.state_dict(), "args": cfg.as_dict(), "summary": summary,
                                    "classes": list(classes)})
        print(f"wrote {cfg.save_model}")
    return summary


def train(model: FineTuneNet, cfg: FinetuneConfig, lr: float, total_steps: int, train_loader, val_loader, precision,
          device: torch.device, log=None) -> tuple[dict, list, float]:
    """Fine-tune (models/finetune.py's frozen parts checked unmoved after); (reported epoch, history, seconds)."""
    frozen_before, start = model.frozen_state(), time.perf_counter()
    optimizer = build_optimizer(model, cfg.optimizer, lr, cfg.weight_decay, cfg.momentum, cfg.trust_coefficient,
                                unadapted=model.classifier, nesterov=cfg.nesterov)  # the official head_supervised
    best, history = fit(model, optimizer, lr_schedule(lr, total_steps, 0, cfg.schedule == "cosine"), train_loader,
                        cfg.num_epochs, precision, device, val_loader, cfg.val_freq, log)
    seconds = time.perf_counter() - start
    if not state_equal(model.frozen_state(), frozen_before):
        raise RuntimeError("a frozen part of the encoder changed during fine-tuning: this is a bug, please report it")
    return best, history, seconds


def main(args: argparse.Namespace) -> dict:
    cfg = resolve_finetune(vars(args))
    print(f"options {cfg.origin() or 'given: none'}; the others: evaluation/config.py's defaults")
    device, precision = setup(cfg, "finetune")
    backbone, head, target = finetune_network(cfg)
    cfg = with_dataset(cfg, target.dataset)
    name = f"{target.arch}{f'-{backbone.width_multiplier}x' if backbone.width_multiplier != 1 else ''}"
    record, subset_file, output = plan_outputs(cfg, target, name)
    train_full, test = load_train_test(target.dataset, cfg.dataset_paths, test_fraction=cfg.test_fraction)
    record = (check_subset(record, subset_file, target.dataset, train_full.labels) if record is not None
              else draw_subset(subset_file, target.dataset, train_full.labels, cfg.label_fraction, cfg.subset_seed))
    fit_idx, val_idx = holdout_split(record["indices"], train_full.labels, cfg.val_fraction, cfg.subset_seed)
    if cfg.val_fraction > 0 and len(val_idx) == 0:
        print("no validation images (every class has a single labelled image): the last epoch is kept")
    cfg = with_subset(cfg, record["fraction"], len(fit_idx))
    print_filled(cfg, "dataset", "num_epochs", "batch_size")
    run = settings(cfg, target, backbone, record, subset_file, len(fit_idx), len(val_idx), len(test), precision)
    train_loader, val_loader, test_loader = loaders(cfg, train_full, test, fit_idx, val_idx, target, device)
    tb = start_tensorboard(cfg, train_loader, eval_transform_for(target, train_full), target)
    torch.manual_seed(cfg.seed)
    model = FineTuneNet(backbone, head, len(train_full.classes), cfg.finetune_from, cfg.frozen_bn)
    model = place(model, device, precision)
    describe(run, record, model, name, device, precision)
    best, history, seconds = train(model, cfg, run["lr"], cfg.num_epochs * (len(fit_idx) // cfg.batch_size),
                                   train_loader, val_loader, precision, device, tb)
    top1, top5, test_loss = evaluate(model, test_loader, device, precision, desc="test")  # the only test evaluation
    chosen = best["state"] is not None  # an epoch chosen on validation, else the last
    summary = {**run, "reported_epoch": best["epoch"],
               "reported_by": "best validation top-1" if chosen else "last epoch",
               "reported_val_top1": best["val_top1"], "top1": top1, "top5": top5, "test_loss": test_loss,
               "train_seconds": seconds, "history": history}
    print(f"test top-1 {top1:.2f}%, top-5 {top5:.2f}% ({len(test)} images) with the weights of epoch "
          f"{best['epoch']} ({'best validation top-1' if chosen else 'the last'})")
    summary = write_results(summary, output, model, cfg, train_full.classes)
    if tb is not None:  # the epochs' rows went as they came (evaluation/supervised.fit); the test scores last
        tb.write(step=best["epoch"], top1=top1, top5=top5, test_loss=test_loss)
        tb.close()
    return {**summary, "model": model, "output": output}


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
