"""Linear evaluation by L-BFGS logistic regression on frozen features (Chen et al. 2020, App. B.5/B.8).

    python lbfgs_linear_clf.py --load-from output.pth

Extracts features h of the frozen backbone once (eval mode, no augmentation), standardises them,
picks the l2 strength among 45 log-spaced values in [1e-6, 1e5] on a validation split held out of
the training set (10%, stratified, seeded), refits on the whole training set with it and scores
the test set once. Prints the sweep and writes it to a JSON file beside the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from data.datasets import dataset_arg, content_key, load_train_test, native_size
from data.views import Transformed
from evaluation.config import LBFGSConfig, print_filled, resolve_lbfgs, with_dataset
from evaluation.features import extract_features, read_feature_cache, weights_digest
from evaluation.harness import (Target, add_precision_option, check_outputs, default_output, eval_transform_for,
                                frozen_backbone, place, random_init_baseline, save_result, setup,
                                test_split)
from evaluation.logreg import l2_sweep
from models.resnet import ARCHS, STEMS
from utils.cli import Parser, nonneg_int, number, open_fraction, positive_float, positive_int
from utils.errors import run_cli
from utils.files import save_torch
from utils.precision import PrecisionNet, Precision


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description="Linear evaluation with L-BFGS on frozen SimCLR features",
               argument_default=argparse.SUPPRESS)  # options not given stay out: evaluation/config.py fills them
    p.add_argument("--load-from", required=True,
                   help="checkpoint of simclr.py (or a backbone state_dict); a bare name is also looked up "
                        "in ./checkpoint/")
    p.add_argument("--dataset", type=dataset_arg,
                   help="dataset name or folder to evaluate on (default: the one the checkpoint was trained on)")
    p.add_argument("--test-fraction", type=number(float, 0, 1, low_open=True, high_open=True),
                   help="of a --dataset folder of class folders without train/ and test/: the share of its images\n"
                        "held out as the test split, by path hash (default: 0.2)")
    p.add_argument("--dataset-paths", help="(default: the repository's dataset-paths.json)")
    p.add_argument("--arch", choices=list(ARCHS),
                   help="override the checkpoint's arch (needed for a plain state_dict)")
    p.add_argument("--stem", choices=STEMS, help="override the checkpoint's stem")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate the same backbone at random initialisation instead (baseline)")
    p.add_argument("--image-size", type=positive_int, help="input side (default: the checkpoint's, else the dataset's)")
    p.add_argument("--val-fraction", type=open_fraction, help="held-out part of train for picking l2 (default: 0.1)")
    p.add_argument("--l2-min", type=positive_float, help="(default: 1e-6)")
    p.add_argument("--l2-max", type=positive_float, help="(default: 1e5)")
    p.add_argument("--l2-num", type=positive_int, help="log-spaced l2 values to try (default: 45)")
    p.add_argument("--max-iter", type=positive_int, help="L-BFGS iterations per fit (default: 500)")
    p.add_argument("--batch-size", type=positive_int, help="feature extraction batch (default: 512)")
    add_precision_option(p, "lbfgs", "autocast of the backbone while extracting features")
    p.add_argument("--num-workers", type=nonneg_int, help="(default: 2)")
    p.add_argument("--cache-features", action="store_true",
                   help="save the features next to the checkpoint and reuse them while the weights, the data and "
                        "the settings they were computed with are unchanged")
    p.add_argument("--output", help="JSON result file (default: <checkpoint>.lbfgs-<dataset>[-random].json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--seed", type=int, help="seed of the validation split (default: 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    return p


def frozen_features(cfg: LBFGSConfig, device: torch.device, precision: Precision):
    """(x_train, y_train, x_test, y_test, classes, target, output): features of the frozen backbone, from the
    cache if asked and it holds these weights' features of this data; outputs checked before."""
    backbone, target = frozen_backbone(cfg)
    print_filled(with_dataset(cfg, target.dataset), "dataset")
    output = cfg.output or default_output(target.checkpoint, "lbfgs", target.dataset,
                                          "random" if cfg.random_init else "")
    tag = f"{target.dataset}-{target.image_size}{'-random' if cfg.random_init else ''}"
    tag += "-bf16" if precision.name == "bf16" else ""
    cache = f"{os.path.splitext(target.checkpoint)[0]}.features-{tag}.pt" if cfg.cache_features else None
    check_outputs(cfg, target, {"--output": output, "the feature cache": cache}, replaceable=("the feature cache",))
    backbone = random_init_baseline(backbone, cfg, target)
    train, test = load_train_test(target.dataset, cfg.dataset_paths, test_fraction=cfg.test_fraction)
    key = cache_key(backbone, train, test, target, precision)
    cached = read_feature_cache(cache, key) if cache else None
    if cached is not None:
        x_train, y_train, x_test, y_test = (cached[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        return x_train, y_train, x_test, y_test, cached["classes"], target, output
    transform, net = eval_transform_for(target, train), PrecisionNet(place(backbone, device, precision), precision)
    x_train, y_train = extract_features(net, Transformed(train, transform), device, cfg.batch_size,
                                        cfg.num_workers, desc="train features")
    x_test, y_test = extract_features(net, Transformed(test, transform), device, cfg.batch_size,
                                      cfg.num_workers, desc="test features")
    if cache:
        save_torch(cache, {"key": key, "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
                           "classes": list(train.classes)})
    return x_train, y_train, x_test, y_test, list(train.classes), target, output


def cache_key(backbone: torch.nn.Module, train, test, target: Target, precision: Precision) -> str:
    """What the features are a function of: exactly these weights, images and settings."""
    return json.dumps({"weights": weights_digest(backbone), "train": content_key(train), "test": content_key(test),
                       "image_size": target.image_size, "precision": precision.name,
                       "channels_last": precision.channels_last, "mean": list(target.info.mean),
                       "std": list(target.info.std), "resize_center_crop": native_size(train) != target.image_size})


def main(args: argparse.Namespace) -> dict:
    cfg = resolve_lbfgs(vars(args))
    print(f"options {cfg.origin() or 'given: none'}; the others: evaluation/config.py's defaults")
    device, precision = setup(cfg, "lbfgs")
    x_train, y_train, x_test, y_test, classes, target, output = frozen_features(cfg, device, precision)
    labelled = y_train >= 0
    x_train, y_train = x_train[labelled], y_train[labelled]
    grid = np.logspace(np.log10(cfg.l2_min), np.log10(cfg.l2_max), cfg.l2_num).tolist()
    result = l2_sweep(x_train.to(device), y_train.to(device), x_test.to(device), y_test.to(device), len(classes),
                      l2_grid=grid, val_fraction=cfg.val_fraction, seed=cfg.seed, max_iter=cfg.max_iter)

    print(f"{'l2':>10}  val acc (%)   [{result.num_fit} fit / {result.num_val} validation images]")
    for l2, acc in zip(result.l2_grid, result.val_acc):
        print(f"{l2:10.3g}  {100 * acc:6.2f}{'  <- chosen' if l2 == result.best_l2 else ''}")
    summary = {
        "checkpoint": target.checkpoint, "dataset": target.dataset,
        **test_split(target.dataset, cfg), "random_init": cfg.random_init,
        "precision": precision.name, "image_size": target.image_size, "feature_dim": int(x_train.shape[1]),
        "num_train": result.num_train, "num_test": result.num_test,
        "l2_grid": result.l2_grid, "val_acc": [100 * a for a in result.val_acc], "best_l2": result.best_l2,
        "train_acc": 100 * result.train_acc, "test_acc": 100 * result.test_acc,
        "test_top5": 100 * result.test_top5,
    }
    print(f"chosen l2 {result.best_l2:.3g} (on validation); refit on all {result.num_train} training images: "
          f"train accuracy {summary['train_acc']:.2f}%, test accuracy {summary['test_acc']:.2f}% "
          f"(top-5 {summary['test_top5']:.2f}%)")
    return save_result(output, summary)


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
