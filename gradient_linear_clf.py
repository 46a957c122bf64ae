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

from data.datasets import DATASETS, load_train_test
from data.paths import DEFAULT_PATHS_FILE
from evaluation.harness import (add_precision_option, check_outputs, default_output, eval_loader, eval_transform_for,
                                frozen_backbone, place, random_init_baseline, save_result, seeded_train_loader, setup)
from evaluation.load import state_equal
from evaluation.supervised import evaluate, fit
from models.probe import LinearProbe
from models.resnet import ARCHS, STEMS
from optim.groups import build_optimizer
from optim.schedules import lr_schedule
from training.recipe import LINEAR_EVAL, defaults_for
from utils.cli import Parser, nonneg_float, nonneg_int, positive_float, positive_int
from utils.errors import UserError, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description="Linear evaluation with SGD on a frozen SimCLR backbone")
    p.add_argument("--load-from", required=True, help="checkpoint of simclr.py (or a backbone state_dict)")
    p.add_argument("--dataset", default=None, choices=list(DATASETS),
                   help="(default: the one the checkpoint was trained on)")
    p.add_argument("--dataset-paths", default=DEFAULT_PATHS_FILE, help="(default: the repository's dataset-paths.json)")
    p.add_argument("--arch", default=None, choices=list(ARCHS), help="override the checkpoint's arch")
    p.add_argument("--stem", default=None, choices=STEMS, help="override the checkpoint's stem")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate the same backbone at random initialisation instead (baseline)")
    p.add_argument("--image-size", type=positive_int, default=None, help="crop side (default: the checkpoint's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="(default: 4096 ImageNet, 512 the others)")
    p.add_argument("--num-epochs", type=positive_int, default=None, help="(default: 90 ImageNet, 100 the others)")
    p.add_argument("--base-lr", type=positive_float, default=0.1, help="lr = base_lr x batch/256 (default: 0.1)")
    p.add_argument("--momentum", type=nonneg_float, default=0.9, help="(default: 0.9)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="Nesterov momentum, as the official optimizer (default: on)")
    p.add_argument("--weight-decay", type=nonneg_float, default=0.0,
                   help="on the classifier's weights, not its bias (default: 0; the official code: 1e-6 on ImageNet)")
    p.add_argument("--num-workers", type=nonneg_int, default=2, help="(default: 2)")
    add_precision_option(p, "sgd", "autocast of the frozen backbone, the classifier stays fp32")
    p.add_argument("--output", default=None,
                   help="JSON result file (default: <checkpoint>.sgd-<dataset>[-random].json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the classifier's init, the data order and the augmentations (default: 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    return p


def main(args: argparse.Namespace) -> dict:
    device, precision = setup(args, "sgd")
    torch.manual_seed(args.seed)
    backbone, target = frozen_backbone(args)
    fill_recipe(args, target.dataset)
    output = args.output or default_output(target.checkpoint, "sgd", target.dataset,
                                           "random" if args.random_init else "")
    check_outputs(args, target, {"--output": output})
    backbone = random_init_baseline(backbone, args, target)
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    train, test = load_train_test(target.dataset, args.dataset_paths)
    if args.batch_size > len(train):
        raise UserError(f"--batch-size {args.batch_size} is larger than the training set ({len(train)} images): "
                        f"use --batch-size {len(train)} or less")
    train_loader = seeded_train_loader(train, target, args.batch_size, args.seed, args.num_workers, device)
    test_loader = eval_loader(test, eval_transform_for(target, train), min(args.batch_size, 1024), args.num_workers)

    model = place(LinearProbe(backbone, len(train.classes)), device, precision)
    lr = args.base_lr * args.batch_size / 256
    optimizer = build_optimizer(model, "sgd", lr, args.weight_decay, args.momentum, nesterov=args.nesterov)
    steps = args.num_epochs * len(train_loader)
    fit(model, optimizer, lr_schedule(lr, steps, 0, cosine=True), train_loader, args.num_epochs, precision, device)
    top1, top5, _ = evaluate(model, test_loader, device, precision)
    if not state_equal(model.backbone.state_dict(), reference):
        raise RuntimeError("the frozen backbone changed during linear evaluation: this is a bug, please report it")
    summary = {"checkpoint": target.checkpoint, "dataset": target.dataset, "epochs": args.num_epochs,
               "batch_size": args.batch_size, "random_init": args.random_init, "lr": lr, "nesterov": args.nesterov,
               "precision": precision.name, "image_size": target.image_size, "seed": args.seed,
               "top1": top1, "top5": top5}
    print(f"test top-1 {top1:.2f}%, top-5 {top5:.2f}% ({len(test)} images); backbone unchanged")
    summary = save_result(output, summary)
    return {**summary, "backbone_state": model.backbone.state_dict(), "classifier": model.classifier}


def fill_recipe(args: argparse.Namespace, dataset: str) -> None:
    """Batch size and epochs from training/recipe.LINEAR_EVAL where not given (the options are checked at parsing)."""
    vars(args).update(defaults_for(LINEAR_EVAL, dataset, {"batch_size": args.batch_size, "num_epochs": args.num_epochs},
                           "linear-evaluation recipe"))


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
