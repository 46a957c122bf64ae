"""Class-balanced labelled subsets for semi-supervised evaluation (Chen et al. 2020, Sec. 4.2, Table 7).

The paper fine-tunes on 1% and 10% of ImageNet's labels (the official code ships fixed lists of
images). Here a subset takes the same number of images from every class,
``max(1, round(fraction * N / C))`` (N labelled images, C classes; capped at the smallest class),
chosen by a seeded RNG, or every labelled image for fraction 1. It is written to a small JSON file
(dataset, size, fraction, seed, indices and their labels) so that another run, or another method,
trains on exactly the same images::

    python -m data.subsets --dataset cifar10 --label-fraction 0.01 --seed 0 --output cifar10-1pct.json
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from data.paths import DEFAULT_PATHS_FILE
from data.splits import stratified_split
from utils.errors import UserError, run_cli
from utils.files import atomic_write, check_output, refuse_existing, refuse_same

SUBSET_FORMAT = "simclr-label-subset-v1"


def check_fraction(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--label-fraction must be in (0, 1], e.g. 0.01 or 0.1; got {fraction}")
    return float(fraction)


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced subset of the labelled images (label >= 0).

    Every class gets ``max(1, round(fraction * N / C))`` images, at most the size of the smallest
    class, drawn without replacement by ``numpy.random.default_rng(seed)`` class by class in label
    order; fraction 1 takes every labelled image (unbalanced if the dataset is)."""
    check_fraction(fraction)
    labels = np.asarray(labels).reshape(-1)
    labelled = np.flatnonzero(labels >= 0)
    if labelled.size == 0:
        raise UserError("the training split has no labelled images: a label subset needs labels")
    if fraction == 1.0:
        return labelled.astype(np.int64)
    classes, counts = np.unique(labels[labelled], return_counts=True)
    per_class = max(1, round(fraction * labelled.size / classes.size))
    per_class = min(per_class, int(counts.min()))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def subset_record(dataset: str, labels: np.ndarray, fraction: float, seed: int, indices: np.ndarray) -> dict:
    labels = np.asarray(labels)
    return {"format": SUBSET_FORMAT, "dataset": dataset, "num_images": int(labels.size),
            "num_classes": int(np.unique(labels[labels >= 0]).size), "fraction": float(fraction), "seed": int(seed),
            "per_class": int(np.bincount(labels[indices]).max()) if indices.size else 0,
            "indices": [int(i) for i in indices], "labels": [int(labels[i]) for i in indices]}


def write_subset(path: str, record: dict) -> None:
    """``record`` as one line of JSON, written atomically (utils/files.py)."""
    atomic_write(path, lambda f: f.write(json.dumps(record).encode()))


def read_subset(path: str, dataset: str, labels: np.ndarray) -> dict:
    """The record in ``path``, checked against the dataset it is used with (name, size, labels)."""
    return check_subset(open_subset(path), path, dataset, labels)


def open_subset(path: str) -> dict:
    """The record in ``path``, checked to be a subset file (not yet against a dataset: see ``check_subset``)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise UserError(f"subset file {path} not found: check the path, or leave out --subset-file to draw "
                        f"a new subset") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read subset file {path} ({type(e).__name__}): it is not a subset file of "
                        f"this repository") from None
    if not isinstance(record, dict) or record.get("format") != SUBSET_FORMAT:
        raise UserError(f"{path} is not a label-subset file (written by data/subsets.py or finetune.py)")
    missing = sorted({"dataset", "num_images", "fraction", "seed", "per_class", "indices", "labels"} - set(record))
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: the subset file is damaged; draw a new one")
    return record


def check_subset(record: dict, path: str, dataset: str, labels: np.ndarray) -> dict:
    """``record`` (read from ``path``) with its indices as an array, checked against ``dataset`` and its
    training ``labels``: the same name, size and labels at its indices."""
    labels = np.asarray(labels)
    if record["dataset"] != dataset or record["num_images"] != labels.size:
        raise UserError(f"{path} is a subset of {record['dataset']!r} with {record['num_images']} training images, "
                        f"not of {dataset!r} with {labels.size}: use a subset file made for this dataset")
    indices = np.asarray(record["indices"], dtype=np.int64)
    if (indices.size == 0 or indices.min() < 0 or indices.max() >= labels.size
            or np.unique(indices).size != indices.size):
        raise UserError(f"{path} holds indices that are out of range or repeated: the file is damaged")
    if not np.array_equal(labels[indices], np.asarray(record["labels"])):
        raise UserError(f"the labels in {path} do not match those of {dataset!r} at its indices: the dataset "
                        f"changed (other files or order) since the subset was drawn")
    record["indices"] = indices
    return record


def requested_subset(subset_file: str | None, fraction: float | None) -> dict | None:
    """The record of ``--subset-file`` (checked against ``--label-fraction`` if both are given; against the
    dataset by ``check_subset`` once it is loaded), or None when a subset of ``fraction`` is to be drawn."""
    if subset_file is None:
        if fraction is None:
            raise UserError("pass --label-fraction (e.g. 0.01 or 0.1) or --subset-file")
        return None
    record = open_subset(subset_file)
    if fraction is not None and not math.isclose(fraction, record["fraction"]):
        raise UserError(f"--label-fraction {fraction} disagrees with {subset_file} (fraction {record['fraction']}): "
                        f"leave out --label-fraction or use another subset file")
    return record


def draw_subset(path: str, dataset: str, labels: np.ndarray, fraction: float, seed: int) -> dict:
    """Draw a balanced subset, write it to ``path`` (so that other runs can reuse it) and return its record."""
    record = subset_record(dataset, labels, fraction, seed, balanced_subset(labels, fraction, seed))
    write_subset(path, record)
    record["indices"] = np.asarray(record["indices"], dtype=np.int64)
    return record


def holdout_split(indices: np.ndarray, labels: np.ndarray, val_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) image indices: ``val_fraction`` of every class of the subset ``indices`` held out
    (data/splits.py, at least one image per class with 2 or more); 0 holds out nothing."""
    indices = np.asarray(indices, dtype=np.int64)
    if val_fraction == 0:
        return indices, indices[:0]
    fit, val = stratified_split(torch.as_tensor(np.asarray(labels)[indices]), val_fraction, seed)
    return indices[fit.numpy()], indices[val.numpy()]


class IndexedImages:
    """The images ``indices`` of an ArrayImages/FileImages dataset, with the same ``image``/``labels`` API."""

    def __init__(self, images, indices) -> None:
        self.base, self.indices = images, np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(images.labels)[self.indices]
        self.classes = images.classes

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int):
        return self.base.image(int(self.indices[i]))

    def __getitem__(self, i: int):
        return self.image(i), int(self.labels[i])


def get_args_parser() -> argparse.ArgumentParser:
    from data.datasets import dataset_arg
    p = argparse.ArgumentParser(description="Draw a class-balanced label subset and write it to a JSON file")
    p.add_argument("--dataset", required=True, type=dataset_arg, help="a dataset name or a folder of class folders")
    p.add_argument("--dataset-paths", default=DEFAULT_PATHS_FILE, help="(default: the repository's dataset-paths.json)")
    p.add_argument("--label-fraction", type=float, required=True, help="fraction of the labels, in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--output", required=True, help="JSON file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return p


def main(args: argparse.Namespace) -> dict:
    from data.datasets import load_split
    refuse_same({"--output": args.output}, {"--dataset-paths": args.dataset_paths})
    check_output(args.output, "--output", example="subset.json")
    refuse_existing(args.output, args.overwrite)
    train = load_split(args.dataset, "train", args.dataset_paths)
    indices = balanced_subset(train.labels, args.label_fraction, args.seed)
    record = subset_record(args.dataset, train.labels, args.label_fraction, args.seed, indices)
    write_subset(args.output, record)
    print(f"{len(indices)} of {len(train)} images ({record['per_class']} per class) -> {args.output}")
    return record


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
