"""Embeddings of a dataset split by a pretrained SimCLR network, to one .npz; the backbone for torchvision.

    python embed.py --load-from output.pth             # h of the test split: output.embed-<dataset>-test.npz
    python embed.py --load-from output.pth --projection --split train --output z.npz
    python embed.py --load-from output.pth --neighbours nn.png --map map.png
    python embed.py --load-from output.pth --export-backbone resnet50-tv.pth

The features h of the frozen backbone (z = g(h), the projection head's output, with --projection), in dataset
order, in eval mode, without augmentation (the evaluation transform), as the linear evaluations see them. The
.npz (np.load(..., allow_pickle=False) reads it: strings are fixed-width unicode arrays):

    features  (N, D) float32   h, or z with --projection
    labels    (N,) int64       class indices; only when every image of the split has a label
    classes   (C,) str         class names; with labels
    paths     (N,) str         each image's file relative to the dataset folder, "<split>/<index>" for images
                               from native files (CIFAR pickles, STL-10 binaries)
    arch, checkpoint, what     () str: the network, the checkpoint's absolute path, "h" or "z"

--export-backbone writes the backbone's state_dict under torchvision's names (models/export.py): for an
imagenet-stem resnet18/34/50 at width 1, ``torchvision.models.resnet50().load_state_dict(state, strict=False)``
misses only fc.
"""
from __future__ import annotations

import argparse
import importlib
import os

import numpy as np
from torch import nn

from data.datasets import dataset_arg, dataset_tag, is_folder, load_split
from data.paths import resolve
from data.views import Transformed
from evaluation.config import EmbedConfig, print_filled, resolve_embed, with_dataset
from evaluation.features import extract_features
from evaluation.knn import knn_loo_accuracy
from evaluation.harness import Target, add_precision_option, eval_transform_for, place, setup, target_of
from evaluation.load import checkpoint_args, load_backbone
from evaluation.outputs import prepare_outputs
from models.export import torchvision_state_dict
from models.resnet import ARCHS, STEMS, ResNetBackbone
from models.simclr import SimCLR
from utils.checkpoint import find_checkpoint, load_checkpoint
from utils.cli import Parser, nonneg_int, number, positive_int
from utils.errors import UserError, run_cli
from utils.files import atomic_write, save_torch
from utils.precision import PrecisionNet

KNN_K = 20  # neighbours of the leave-one-out kNN score of a labelled split (evaluation/knn.knn_loo_accuracy)
FROZEN = "embed"  # a task of evaluation/harness.FROZEN_FEATURES: --precision auto is fp32, as the linear evaluations


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description="Features h (or z) of a dataset split by a SimCLR checkpoint, to an .npz; pictures of "
                           "them; the backbone in torchvision's format. Writes the outputs named (--output, "
                           "--export-backbone, --neighbours, --map); with none named, the .npz at its default place. "
                           "With --export-backbone alone no features are computed.",
               argument_default=argparse.SUPPRESS)  # options not given stay out: evaluation/config.py fills them
    p.add_argument("--load-from", required=True,
                   help="checkpoint of simclr.py (or a backbone state_dict, with --arch and --stem); a bare name is "
                        "also looked up in ./checkpoint/")
    p.add_argument("--dataset", type=dataset_arg,
                   help="dataset name or folder to embed (default: the one the checkpoint was trained on)")
    p.add_argument("--test-fraction", type=number(float, 0, 1, low_open=True, high_open=True),
                   help="of a --dataset folder of class folders without train/ and test/: the share of its images\n"
                        "held out as the test split, by path hash (default: 0.2)")
    p.add_argument("--dataset-paths", help="(default: the repository's dataset-paths.json)")
    p.add_argument("--split", choices=["train", "test", "all"],
                   help="all: every pretraining image, also of a folder without classes (default: test)")
    p.add_argument("--arch", choices=list(ARCHS), help="override the checkpoint's arch (needed for a plain state_dict)")
    p.add_argument("--stem", choices=STEMS, help="override the checkpoint's stem (needed for a plain state_dict)")
    p.add_argument("--image-size", type=positive_int, help="input side (default: the checkpoint's, else the dataset's)")
    p.add_argument("--projection", action="store_true",
                   help="embed z = g(h), the projection head's output, instead of h (needs a simclr.py checkpoint)")
    p.add_argument("--output", metavar="FILE.npz",
                   help="the .npz of features (default, when no other output is named: "
                        "<checkpoint>.embed-<dataset>-<split>.npz beside the checkpoint)")
    p.add_argument("--export-backbone", metavar="FILE",
                   help="also write the backbone's state_dict for torchvision.models.resnet18/34/50 (imagenet stem, "
                        "width 1; fc left out); alone, it computes no features")
    p.add_argument("--neighbours", metavar="FILE.png",
                   help="picture: 10 query images and their --k nearest neighbours by cosine similarity")
    p.add_argument("--map", metavar="FILE.png",
                   help="picture: the embeddings in 2-D (t-SNE with scikit-learn, else PCA), coloured by class")
    p.add_argument("--k", type=positive_int, help="neighbours per query in --neighbours (default: 8)")
    p.add_argument("--seed", type=int, help="seed of the pictures' queries and of the map's subset (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--batch-size", type=positive_int, help="(default: 512)")
    p.add_argument("--num-workers", type=nonneg_int, help="(default: 2)")
    add_precision_option(p, FROZEN, "autocast of the network while embedding")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    return p


def load_network(ckpt: str, cfg: EmbedConfig) -> tuple[nn.Module, ResNetBackbone, dict]:
    """(the network embedded with, its backbone, the checkpoint's args or {}): the backbone (h), loaded strictly
    (evaluation/load.py); with --projection the whole SimCLR model (z = g(f(x))), built from the checkpoint's args
    and loaded strictly."""
    if not cfg.projection:
        backbone, saved = load_backbone(ckpt, cfg.arch, cfg.stem)
        return backbone, backbone, saved
    state = load_checkpoint(ckpt)
    saved = checkpoint_args(state)
    if not saved:
        raise UserError(f"{ckpt} is a plain state_dict, without the run's args and projection head: --projection "
                        f"needs a checkpoint of simclr.py; leave it out to embed h")
    arch, stem = cfg.arch or saved.get("arch"), cfg.stem or saved.get("stem")
    if arch is None or stem is None:
        raise UserError(f"{ckpt} does not say its arch and stem: pass --arch and --stem")
    model = SimCLR(arch, stem, saved.get("proj_dim", 128), saved.get("proj_hidden_dim"), saved.get("proj_layers", 2),
                   saved.get("width_multiplier", 1))
    result = model.load_state_dict(state["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{ckpt} does not match SimCLR({arch}, {stem} stem, a {saved.get('proj_layers', 2)}-layer "
                        f"head to {saved.get('proj_dim', 128)}): missing keys {result.missing_keys[:4]}, unexpected "
                        f"keys {result.unexpected_keys[:4]}; check --arch/--stem")
    return model, model.backbone, saved


def default_output(ckpt: str, dataset: str, split: str) -> str:
    """``<checkpoint>.embed-<dataset>-<split>.npz`` beside the checkpoint (evaluation/harness.default_output's
    scheme)."""
    return f"{os.path.splitext(ckpt)[0]}.embed-{dataset_tag(dataset)}-{split}.npz"


def image_names(images, dataset: str, split: str, paths_file: str) -> list[str]:
    """Each image's file relative to the dataset folder; ``<split>/<index>`` for images of native files."""
    paths = getattr(images, "paths", None)
    if paths is None:
        return [f"{split}/{i}" for i in range(len(images))]
    root = os.path.abspath(dataset) if is_folder(dataset) else resolve(dataset, paths_file)
    return [os.path.relpath(p, root) for p in paths]


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as an .npz written atomically; no object arrays (``np.load`` reads it with allow_pickle=False)."""
    assert all(a.dtype != object for a in arrays.values())
    atomic_write(path, lambda f: np.savez(f, **arrays))


def pictures_module():
    """evaluation/pictures.py, imported only when a picture is asked for (before any compute)."""
    return importlib.import_module("evaluation.pictures")


def draw(pictures, cfg: EmbedConfig, images, features: np.ndarray, labels: np.ndarray, title: str) -> None:
    """The pictures asked for (evaluation/pictures.py): --neighbours of the original images, --map titled ``title``;
    label -1 is drawn as unlabeled (grey)."""
    classes = list(images.classes) or None
    if cfg.neighbours:
        pictures.neighbours_picture(cfg.neighbours, images.image, features, labels, classes, k=cfg.k, seed=cfg.seed)
        print(f"wrote {cfg.neighbours}")
    if cfg.map:
        method = pictures.embedding_map(cfg.map, features, labels, classes, title=title, seed=cfg.seed)
        print(f"wrote {cfg.map} ({method})")


def main(args: argparse.Namespace) -> dict:
    cfg = resolve_embed(vars(args))
    print(f"options {cfg.origin() or 'given: none'}; the others: evaluation/config.py's defaults")
    ckpt = find_checkpoint(cfg.load_from)
    net, backbone, saved = load_network(ckpt, cfg)
    exported = torchvision_state_dict(backbone) if cfg.export_backbone else None  # refused before any output
    target: Target | None = target_of(ckpt, saved, cfg) if cfg.embeds else None
    output = cfg.output
    if target is not None:
        print_filled(with_dataset(cfg, target.dataset), "dataset")
        if not (cfg.output or cfg.export_backbone or cfg.neighbours or cfg.map):
            output = default_output(ckpt, target.dataset, cfg.split)
    prepare_outputs({"--output": output, "--export-backbone": cfg.export_backbone, "--neighbours": cfg.neighbours,
                     "--map": cfg.map}, {"--load-from": ckpt, "--dataset-paths": cfg.dataset_paths}, cfg.overwrite)
    pictures = pictures_module() if cfg.neighbours or cfg.map else None
    split = "pretrain" if cfg.split == "all" else cfg.split
    images = load_split(target.dataset, split, cfg.dataset_paths, cfg.test_fraction) if target is not None else None
    summary = {"checkpoint": os.path.abspath(ckpt), "output": output, "export_backbone": cfg.export_backbone,
               "neighbours": cfg.neighbours, "map": cfg.map}
    if exported is not None:
        save_torch(cfg.export_backbone, exported)
        arch = target.arch if target is not None else cfg.arch or saved.get("arch")
        print(f"wrote {cfg.export_backbone}: torchvision.models.{arch}().load_state_dict(torch.load(...), "
              f"strict=False) misses only fc.weight and fc.bias")
    if target is None:
        return summary

    device, precision = setup(cfg, FROZEN)
    what = "z" if cfg.projection else "h"
    transform = eval_transform_for(target, images)
    x, y = extract_features(PrecisionNet(place(net, device, precision), precision), Transformed(images, transform),
                            device, cfg.batch_size, cfg.num_workers, desc=f"{cfg.split} {what}")
    features, labels = x.numpy(), y.numpy()  # (N, D) float32, (N,) int64 (-1: unlabeled)
    labelled = bool(len(labels)) and bool((labels >= 0).all())
    if not labelled and (labels >= 0).any():
        print(f"labels left out: {int((labels < 0).sum())} of the {len(labels)} images have none")
    arrays = {"features": features, "paths": np.array(image_names(images, target.dataset, cfg.split,
                                                                   cfg.dataset_paths), dtype=str),
              "arch": np.array(target.arch, dtype=str), "checkpoint": np.array(summary["checkpoint"], dtype=str),
              "what": np.array(what, dtype=str)}
    if labelled:
        arrays["labels"] = labels
        arrays["classes"] = np.array(list(images.classes), dtype=str)
    described = (f"{what} of the {len(features)} {cfg.split} images of {dataset_tag(target.dataset)} "
                 f"({features.shape[1]} dimensions, {'labelled' if labelled else 'unlabeled'})")
    if output:
        save_npz(output, arrays)
        print(f"wrote {output}: {described}")
    else:
        print(f"embedded {described}")
    title = f"{what} of {os.path.basename(ckpt)} on {dataset_tag(target.dataset)} {cfg.split}"
    knn = knn_loo_accuracy(x, y, KNN_K) if labelled and len(x) > 1 else None
    if knn is not None:
        print(f"kNN top-1 {knn:.2f}% (each image voted by its {KNN_K} nearest others, leave-one-out)")
        title += f": kNN top-1 {knn:.1f}% (k={KNN_K}, leave-one-out)"
    if pictures is not None:
        draw(pictures, cfg, images, features, labels, title)
    return {**summary, "what": what, "num_images": len(features), "feature_dim": int(features.shape[1]),
            "labelled": labelled, "knn_top1": knn}


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
