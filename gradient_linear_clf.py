"""Linear evaluation by SGD on a frozen backbone, the paper's ImageNet protocol (Chen et al. 2020, App. B.6).

    python gradient_linear_clf.py --load-from output.pth --nesterov --num-workers 32

A linear layer on the frozen features h, trained with Nesterov momentum SGD, lr = 0.1 x B/256,
cosine decay, no weight decay, batch and epochs by dataset (training/recipe.LINEAR_EVAL: 4096 and 90
on ImageNet, the paper's; 512 and 100 on the small datasets), random resized crop + flip only, in a seeded
order that is new every epoch (the same whatever --num-workers); the test set is resized and centre-cropped.
The backbone stays in eval mode (its BN statistics do not move) and is checked to be bit-identical to the
checkpoint after training.
"""
from __future__ import annotations

import argparse

import torch

from data.datasets import dataset_arg, load_train_test
from evaluation.config import capped_batch, print_filled, resolve_sgd, with_dataset, with_linear_recipe
from evaluation.harness import (add_precision_option, check_outputs, default_output, eval_loader, eval_transform_for,
                                frozen_backbone, place, random_init_baseline, save_result, seeded_train_loader, setup,
                                test_split)
from evaluation.load import state_equal
from evaluation.supervised import evaluate, fit
from models.probe import LinearProbe
from models.resnet import ARCHS, STEMS
from optim.groups import build_optimizer
from optim.schedules import lr_schedule
from utils.cli import Parser, nonneg_float, nonneg_int, number, positive_float, positive_int
from utils.errors import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description="Linear evaluation with SGD on a frozen SimCLR backbone",
               argument_default=argparse.SUPPRESS)  # options not given stay out: evaluation/config.py fills them
    p.add_argument("--load-from", required=True, help="checkpoint of simclr.py (or a backbone state_dict)")
    p.add_argument("--dataset", type=dataset_arg,
                   help="(default: the one the checkpoint was trained on)")
    p.add_argument("--test-fraction", type=number(float, 0, 1, low_open=True, high_open=True),
                   help="of a --dataset folder of class folders without train/ and test/: the share of its images\n"
                        "held out as the test split, by path hash (default: 0.2)")
    p.add_argument("--dataset-paths", help="(default: the repository's dataset-paths.json)")
    p.add_argument("--arch", choices=list(ARCHS), help="override the checkpoint's arch")
    p.add_argument("--stem", choices=STEMS, help="override the checkpoint's stem")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate the same backbone at random initialisation instead (baseline)")
    p.add_argument("--image-size", type=positive_int, help="crop side (default: the checkpoint's)")
    p.add_argument("--batch-size", type=positive_int, help="(default: 4096 ImageNet, 512 the others)")
    p.add_argument("--num-epochs", type=positive_int, help="(default: 90 ImageNet, 100 the others)")
    p.add_argument("--base-lr", type=positive_float, help="lr = base_lr x batch/256 (default: 0.1)")
    p.add_argument("--momentum", type=nonneg_float, help="(default: 0.9)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction,
                   help="Nesterov momentum, as the official optimizer (default: on)")
    p.add_argument("--weight-decay", type=nonneg_float,
                   help="on the classifier's weights, not its bias (default: 0; the official code: 1e-6 on ImageNet)")
    p.add_argument("--num-workers", type=nonneg_int, help="(default: 2)")
    add_precision_option(p, "sgd", "autocast of the frozen backbone, the classifier stays fp32")
    p.add_argument("--output", help="JSON result file (default: <checkpoint>.sgd-<dataset>[-random].json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--seed", type=int,
                   help="seed of the classifier's init, the data order and the augmentations (default: 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    return p


def main(args: argparse.Namespace) -> dict:
    cfg = resolve_sgd(vars(args))
    print(f"options {cfg.origin() or 'given: none'}; the others: evaluation/config.py's defaults")
    device, precision = setup(cfg, "sgd")
    torch.manual_seed(cfg.seed)
    backbone, target = frozen_backbone(cfg)
    cfg = with_linear_recipe(with_dataset(cfg, target.dataset))
    print_filled(cfg, "dataset", "batch_size", "num_epochs")
    output = cfg.output or default_output(target.checkpoint, "sgd", target.dataset,
                                          "random" if cfg.random_init else "")
    check_outputs(cfg, target, {"--output": output})
    backbone = random_init_baseline(backbone, cfg, target)
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    train, test = load_train_test(target.dataset, cfg.dataset_paths, test_fraction=cfg.test_fraction)
    cfg = capped_batch(cfg, len(train))
    train_loader = seeded_train_loader(train, target, cfg.batch_size, cfg.seed, cfg.num_workers, device)
    test_loader = eval_loader(test, eval_transform_for(target, train), min(cfg.batch_size, 1024), cfg.num_workers)

    model = place(LinearProbe(backbone, len(train.classes)), device, precision)
    lr = cfg.base_lr * cfg.batch_size / 256
    optimizer = build_optimizer(model, "sgd", lr, cfg.weight_decay, cfg.momentum, nesterov=cfg.nesterov)
    steps = cfg.num_epochs * len(train_loader)
    fit(model, optimizer, lr_schedule(lr, steps, 0, cosine=True), train_loader, cfg.num_epochs, precision, device)
    top1, top5, _ = evaluate(model, test_loader, device, precision)
    if not state_equal(model.backbone.state_dict(), reference):
        raise RuntimeError("the frozen backbone changed during linear evaluation: this is a bug, please report it")
    summary = {"checkpoint": target.checkpoint, "dataset": target.dataset,
               **test_split(target.dataset, cfg), "epochs": cfg.num_epochs,
               "batch_size": cfg.batch_size, "random_init": cfg.random_init, "lr": lr, "nesterov": cfg.nesterov,
               "precision": precision.name, "image_size": target.image_size, "seed": cfg.seed,
               "top1": top1, "top5": top5}
    print(f"test top-1 {top1:.2f}%, top-5 {top5:.2f}% ({len(test)} images); backbone unchanged")
    summary = save_result(output, summary)
    return {**summary, "backbone_state": model.backbone.state_dict(), "classifier": model.classifier}


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
