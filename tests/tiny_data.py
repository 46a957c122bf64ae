"""Tiny datasets written by the tests, in every layout the code reads."""
from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
from PIL import Image


def random_images(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def write_image_folder(root: str, classes=("cat", "dog"), per_class: int = 8, size: int = 8, seed: int = 0,
                       fmt: str = "png", splits=("train", "test")) -> dict:
    """root/<split>/<class>/<i>.<fmt>; returns {split: (images, labels)} in scan order."""
    out = {}
    for s, split in enumerate(splits):
        imgs = random_images(per_class * len(classes), size, seed + s)
        labels = np.repeat(np.arange(len(classes)), per_class)
        for i, (img, y) in enumerate(zip(imgs, labels)):
            folder = os.path.join(root, split, classes[y])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(img).save(os.path.join(folder, f"{i:04d}.{fmt}"))
        out[split] = (imgs, labels)
    return out


def write_cifar10_pickles(root: str, per_batch: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """root/cifar-10-batches-py in torchvision's format; returns all train images (N,32,32,3) and labels."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=per_batch).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": data, b"labels": y}, f)
        if name != "test_batch":
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += y
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return np.concatenate(images), np.array(labels)


def write_cifar100_pickles(root: str, n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    out = None
    for name in ("train", "test"):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * n}, f)
        if name == "train":
            out = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.array(fine))
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, f)
    return out


def write_stl_binary(root: str, n: int = 3, seed: int = 0) -> dict:
    """root/stl10_binary with train/test/unlabeled; images stored column-major as in the real files."""
    folder = os.path.join(root, "stl10_binary")
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "test", "unlabeled"):
        imgs = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        imgs.transpose(0, 3, 2, 1).tofile(os.path.join(folder, f"{split}_X.bin"))
        labels = rng.integers(1, 11, size=n).astype(np.uint8)
        if split != "unlabeled":
            labels.tofile(os.path.join(folder, f"{split}_y.bin"))
        out[split] = (imgs, labels.astype(np.int64) - 1)
    with open(os.path.join(folder, "class_names.txt"), "w") as f:
        f.write("\n".join(f"k{i}" for i in range(10)))
    return out


def write_paths(path: str, mapping: dict) -> str:
    with open(path, "w") as f:
        json.dump(mapping, f)
    return path


class Call:
    """Unpickling this calls ``func(*args)``: the payload of a crafted data file (pickling it calls nothing)."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def write_pickle(path: str, obj) -> str:
    """``obj`` pickled to ``path`` as the CIFAR files are (a crafted or malformed batch, or a ``Call``)."""
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def write_gray16(path: str, values: np.ndarray) -> str:
    """A 2-D uint16 array saved as 16-bit grayscale (PIL mode I;16), in the format of ``path``'s extension."""
    assert values.dtype == np.uint16 and values.ndim == 2
    Image.fromarray(values).save(path)
    return path


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the original CIFAR files: strings and bytes as py2 ``str``
    (BINSTRING), numpy's module as ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj) -> None:
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write((pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256 else
                    pickle.BINSTRING + struct.pack("<i", len(b))) + b)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def write_py2_pickle(path: str, obj) -> str:
    """``obj`` pickled to ``path`` as Python 2 and numpy 1 wrote the original CIFAR batches."""
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)
    return path


def tiny_checkpoint(root, per_class: int, batch_size: int, *extra: str) -> tuple[str, str]:
    """(checkpoint, dataset-paths file) of a 1-epoch resnet18 simclr.py run (fp32, no workers) on 3 classes of
    ``per_class`` 8x8 images written under ``root``; ``extra``: more simclr.py options."""
    import simclr
    write_image_folder(os.path.join(root, "d"), classes=("a", "b", "c"), per_class=per_class, size=8)
    paths = write_paths(os.path.join(root, "paths.json"), {"cifar10": "d"})
    ckpt = os.path.join(root, "pre.pth")
    simclr.main(simclr.get_args_parser().parse_args(
        ["--dataset-paths", paths, "--arch", "resnet18", "--batch-size", str(batch_size), "--num-workers", "0",
         "--precision", "fp32", "--num-epochs", "1", "--test-freq", "0", "--filename", ckpt, *extra]))
    return ckpt, paths
