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

from data.augment import eval_transform
from data.datasets import DATASETS, ArrayImages, content_key, load_train_test
from data.paths import DEFAULT_PATHS_FILE
from data.views import Transformed
from evaluation.features import extract_features, read_feature_cache, weights_digest
from evaluation.load import evaluation_target, load_backbone, random_init_like
from evaluation.logreg import l2_sweep
from evaluation.outputs import prepare_outputs
from models.resnet import ARCHS, STEMS
from utils.allocator import tune_cpu_allocator
from utils.checkpoint import find_checkpoint
from utils.cli import Parser, nonneg_int, open_fraction, positive_float, positive_int
from utils.distributed import select_device
from utils.errors import UserError, run_cli
from utils.files import save_json, save_torch
from utils.precision import Precision, resolve_precision


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description="Linear evaluation with L-BFGS on frozen SimCLR features")
    p.add_argument("--load-from", required=True,
                   help="checkpoint of simclr.py (or a backbone state_dict); a bare name is also looked up "
                        "in ./checkpoint/")
    p.add_argument("--dataset", default=None, choices=list(DATASETS),
                   help="dataset to evaluate on (default: the one the checkpoint was trained on)")
    p.add_argument("--dataset-paths", default=DEFAULT_PATHS_FILE, help="(default: the repository's dataset-paths.json)")
    p.add_argument("--arch", default=None, choices=list(ARCHS),
                   help="override the checkpoint's arch (needed for a plain state_dict)")
    p.add_argument("--stem", default=None, choices=STEMS, help="override the checkpoint's stem")
    p.add_argument("--random-init", action="store_true",
                   help="evaluate the same backbone at random initialisation instead (baseline)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="input side (default: the checkpoint's, else the dataset's)")
    p.add_argument("--val-fraction", type=open_fraction, default=0.1,
                   help="held-out part of train for picking l2 (default: 0.1)")
    p.add_argument("--l2-min", type=positive_float, default=1e-6, help="(default: 1e-6)")
    p.add_argument("--l2-max", type=positive_float, default=1e5, help="(default: 1e5)")
    p.add_argument("--l2-num", type=positive_int, default=45, help="log-spaced l2 values to try (default: 45)")
    p.add_argument("--max-iter", type=positive_int, default=500, help="L-BFGS iterations per fit (default: 500)")
    p.add_argument("--batch-size", type=positive_int, default=512, help="feature extraction batch (default: 512)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                   help="autocast of the backbone while extracting features; auto: as simclr.py (default: fp32)")
    p.add_argument("--num-workers", type=nonneg_int, default=2, help="(default: 2)")
    p.add_argument("--cache-features", action="store_true",
                   help="save the features next to the checkpoint and reuse them while the weights, the data and "
                        "the settings they were computed with are unchanged")
    p.add_argument("--output", default=None, help="JSON result file (default: <checkpoint>.lbfgs-<dataset>.json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split (default: 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    return p


def frozen_features(args: argparse.Namespace, device: torch.device, precision: Precision):
    """(x_train, y_train, x_test, y_test, classes, dataset, checkpoint, output): features of the frozen backbone,
    from the cache if asked and it holds these weights' features of this data; outputs checked before."""
    ckpt = find_checkpoint(args.load_from)
    backbone, saved = load_backbone(ckpt, args.arch, args.stem)
    dataset, info, size = evaluation_target(ckpt, saved, args.dataset, args.image_size)
    random = "-random" if args.random_init else ""
    output = args.output or f"{os.path.splitext(ckpt)[0]}.lbfgs-{dataset}{random}.json"
    tag = f"{dataset}-{size}{random}{'-bf16' if precision.name == 'bf16' else ''}"
    cache = f"{os.path.splitext(ckpt)[0]}.features-{tag}.pt" if args.cache_features else None
    prepare_outputs({"--output": output, "the feature cache": cache},
                    {"--load-from": ckpt, "--dataset-paths": args.dataset_paths}, args.overwrite,
                    replaceable=("the feature cache",))
    if args.random_init:  # the same network at initialisation: the baseline a representation must beat
        backbone = random_init_like(backbone, args.arch or saved.get("arch"), args.seed)
    train, test = load_train_test(dataset, args.dataset_paths)
    native = train.images.shape[1] if isinstance(train, ArrayImages) else None
    # the cache holds features of exactly these weights, images and settings
    key = json.dumps({"weights": weights_digest(backbone), "train": content_key(train), "test": content_key(test),
                      "image_size": size, "precision": precision.name, "channels_last": precision.channels_last,
                      "mean": list(info.mean), "std": list(info.std), "resize_center_crop": native != size})
    cached = read_feature_cache(cache, key) if cache else None
    if cached is not None:
        x_train, y_train, x_test, y_test = (cached[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        return x_train, y_train, x_test, y_test, cached["classes"], dataset, ckpt, output
    transform = eval_transform(size, info.mean, info.std, native)
    backbone = backbone.to(device)
    x_train, y_train = extract_features(backbone, Transformed(train, transform), device, args.batch_size,
                                        args.num_workers, precision=precision, desc="train features")
    x_test, y_test = extract_features(backbone, Transformed(test, transform), device, args.batch_size,
                                      args.num_workers, precision=precision, desc="test features")
    if cache:
        save_torch(cache, {"key": key, "x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
                           "classes": list(train.classes)})
    return x_train, y_train, x_test, y_test, list(train.classes), dataset, ckpt, output


def main(args: argparse.Namespace) -> dict:
    if args.l2_min > args.l2_max:
        raise UserError(f"--l2-min {args.l2_min:g} is above --l2-max {args.l2_max:g}: need --l2-min <= --l2-max")
    device = select_device(args.device)
    tune_cpu_allocator(device)  # on CPU: keep freed tensors' memory for reuse (utils/allocator.py)
    precision = resolve_precision(args.precision, device)
    x_train, y_train, x_test, y_test, classes, dataset, ckpt, output = frozen_features(args, device, precision)
    labelled = y_train >= 0
    x_train, y_train = x_train[labelled], y_train[labelled]
    grid = np.logspace(np.log10(args.l2_min), np.log10(args.l2_max), args.l2_num).tolist()
    result = l2_sweep(x_train.to(device), y_train.to(device), x_test.to(device), y_test.to(device), len(classes),
                      l2_grid=grid, val_fraction=args.val_fraction, seed=args.seed, max_iter=args.max_iter)

    print(f"{'l2':>10}  val acc (%)   [{result.num_fit} fit / {result.num_val} validation images]")
    for l2, acc in zip(result.l2_grid, result.val_acc):
        print(f"{l2:10.3g}  {100 * acc:6.2f}{'  <- chosen' if l2 == result.best_l2 else ''}")
    summary = {
        "checkpoint": ckpt, "dataset": dataset, "random_init": args.random_init,
        "precision": precision.name, "feature_dim": int(x_train.shape[1]), "num_train": result.num_train,
        "num_test": result.num_test,
        "l2_grid": result.l2_grid, "val_acc": [100 * a for a in result.val_acc], "best_l2": result.best_l2,
        "train_acc": 100 * result.train_acc, "test_acc": 100 * result.test_acc,
        "test_top5": 100 * result.test_top5,
    }
    print(f"chosen l2 {result.best_l2:.3g} (on validation); refit on all {result.num_train} training images: "
          f"train accuracy {summary['train_acc']:.2f}%, test accuracy {summary['test_acc']:.2f}% "
          f"(top-5 {summary['test_top5']:.2f}%)")
    save_json(output, summary)
    print(f"wrote {output}")
    return summary


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
