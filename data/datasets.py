"""Datasets in torchvision's native formats and ImageFolder trees, as images plus integer labels.

Layouts read (the folder comes from ``dataset-paths.json``):
  - cifar10:  ``cifar-10-batches-py/`` (torchvision's pickles), or ``train/<class>/*`` + ``test/<class>/*``
  - cifar100: ``cifar-100-python/`` (fine labels), or the ImageFolder layout
  - stl10:    ``stl10_binary/`` (``*_X.bin``, ``*_y.bin``), or the ImageFolder layout
              (pretraining uses ``train+unlabeled``: 105k images, labels ignored)
  - imagenet, imagenette: ``train/<wnid>/*`` + ``val/<wnid>/*`` (any ImageFolder tree; val is the test split)
Small datasets (CIFAR, STL, the bundled sample) are decoded once into a uint8 array in memory;
ImageNet-sized trees are read from disk by the DataLoader workers. Nothing is ever downloaded.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from data.paths import DEFAULT_PATHS_FILE, resolve
from utils.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    family: str  # cifar10 | cifar100 | stl10 | imagefolder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    in_memory: bool
    pretrain_split: str
    test_split: str


_CIFAR10 = DatasetInfo("cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
                       "train", "test")
DATASETS: dict[str, DatasetInfo] = {
    "cifar10": _CIFAR10,
    "cifar10-sample": _CIFAR10,  # the few hundred CIFAR-10 images bundled in samples/
    "cifar100": DatasetInfo("cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
                            "train", "test"),
    "stl10": DatasetInfo("stl10", (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), True,
                         "train+unlabeled", "test"),
    "imagenet": DatasetInfo("imagefolder", IMAGENET_MEAN, IMAGENET_STD, False, "train", "val"),
    "imagenette": DatasetInfo("imagefolder", IMAGENET_MEAN, IMAGENET_STD, False, "train", "val"),  # 10 classes
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


class ArrayImages(Dataset):
    """Images decoded into memory: ``images`` (N, H, W, 3) uint8, ``labels`` (N,) int64 (-1: unlabeled)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
        self.images, self.labels, self.classes = images, labels.astype(np.int64), classes

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def __getitem__(self, i: int):
        return self.image(i), int(self.labels[i])


class FileImages(Dataset):
    """Images read from disk at each access: ``samples`` is a list of (path, label)."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str]) -> None:
        self.samples, self.classes = samples, classes
        self.labels = np.array([y for _, y in samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> Image.Image:
        return read_image(self.samples[i][0])

    def __getitem__(self, i: int):
        return self.image(i), int(self.labels[i])


def read_image(path: str) -> Image.Image:
    """Decode one image to RGB, or raise a UserError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for truncated/corrupt data
        raise UserError(f"cannot decode image {path} ({type(e).__name__}: {e}): delete or replace the file") from None


def scan_image_folder(split_dir: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) for every image under ``split_dir/<class>/``; non-image files are skipped with a warning."""
    if not os.path.isdir(split_dir):
        raise UserError(f"folder not found: {split_dir}; expected the layout {split_dir}/<class>/<image>")
    classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not classes:
        raise UserError(f"no class folders in {split_dir}: expected {split_dir}/<class>/<image>")
    samples, skipped = [], []
    for label, cls in enumerate(classes):
        folder = os.path.join(split_dir, cls)
        for fname in sorted(os.listdir(folder)):
            path = os.path.join(folder, fname)
            if not os.path.isfile(path):
                continue
            if fname.lower().endswith(IMAGE_EXTENSIONS):
                samples.append((path, label))
            elif not fname.startswith("."):
                skipped.append(path)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} non-image file(s) in {split_dir}, e.g. {skipped[0]}", stacklevel=2)
    if not samples:
        raise UserError(f"no images in {split_dir}: expected {split_dir}/<class>/<image> "
                        f"with extensions {', '.join(IMAGE_EXTENSIONS)}")
    return samples, classes


CACHE_DIR = os.environ.get("SIMCLR_CACHE", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                          ".cache", "decoded"))


def _cache_key(samples: list[tuple[str, int]]) -> str:
    """Changes when any file is added, removed, renamed, resized or touched."""
    h = hashlib.sha1()
    for path, label in samples:
        st = os.stat(path)
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _cache_file(samples: list[tuple[str, int]]) -> str:
    return os.path.join(CACHE_DIR, _cache_key(samples) + ".npy")


DECODED_LIMIT = 4 * 2**30  # bytes of a uint8 copy of an image tree, at most; a quarter of the RAM where less


def fits_in_memory(samples: list[tuple[str, int]]) -> bool:
    """Whether an image tree is decoded once into memory (as CIFAR: no decoding in workers, the batched views on
    the device; faster, bench/tree_loader.py) rather than read by DataLoader workers: all its images share one
    size (read from the headers, stopping at the first that differs, as ImageNet's do at once; not read again
    once decode_all has cached the copy) and the copy takes at most DECODED_LIMIT bytes and a quarter of the RAM.
    Imagenette's 128 px copy: 0.43 GiB."""
    try:
        with Image.open(samples[0][0]) as im:
            size = im.size
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if len(samples) * size[0] * size[1] * 3 > min(DECODED_LIMIT, ram // 4):
            return False
        if os.path.isfile(_cache_file(samples)):  # decoded before: the sizes were checked then
            return True
        for path, _ in samples[1:]:
            with Image.open(path) as im:
                if im.size != size:
                    return False
    except (OSError, ValueError, AttributeError):  # AttributeError: no os.sysconf (Windows)
        return False  # an unreadable file: the workers' path names it when it is read
    return True


def decode_all(samples: list[tuple[str, int]], classes: list[str], threads: int = 4) -> ArrayImages:
    """Decode every image once into one uint8 array; all images must share one size.

    The array is cached in ``.cache/decoded/`` (or $SIMCLR_CACHE), so later runs start in a second."""
    cache = _cache_file(samples)
    labels = np.array([y for _, y in samples])
    if os.path.isfile(cache):
        try:
            return ArrayImages(np.load(cache), labels, classes)
        except (OSError, ValueError):
            pass  # unreadable cache: decode again and overwrite it
    with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
        arrays = list(pool.map(lambda s: np.asarray(read_image(s[0])), samples))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(f"images differ in size ({sorted(shapes)[:3]}...) in {os.path.dirname(samples[0][0])}/..: "
                        f"resize them to one size first")
    images = np.stack(arrays)
    try:
        os.makedirs(CACHE_DIR, exist_ok=True)
        tmp = f"{cache}.tmp{os.getpid()}.npy"
        np.save(tmp, images)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only checkout still works, only slower to start
    return ArrayImages(images, labels, classes)


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise UserError(f"missing file {path}: the folder looks incomplete; unpack the full archive there") from None
    except Exception as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}): the file is corrupt; unpack it again") from None


def _cifar_pickles(folder: str, family: str, split: str) -> ArrayImages:
    if family == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta, names_key = b"labels", "batches.meta", b"label_names"
    else:
        files = ["train"] if split == "train" else ["test"]
        label_key, meta, names_key = b"fine_labels", "meta", b"fine_label_names"
    batches = [_unpickle(os.path.join(folder, f)) for f in files]
    data = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([np.asarray(b[label_key]) for b in batches])
    classes = [c.decode() for c in _unpickle(os.path.join(folder, meta))[names_key]]
    return ArrayImages(np.ascontiguousarray(data), labels, classes)


def _stl_binary(folder: str, split: str) -> ArrayImages:
    parts = split.split("+")
    images, labels = [], []
    for part in parts:
        x_path = os.path.join(folder, f"{part}_X.bin")
        if not os.path.isfile(x_path):
            raise UserError(f"missing file {x_path}: unpack stl10_binary.tar.gz there")
        raw = np.fromfile(x_path, dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise UserError(f"{x_path} is truncated ({raw.size} bytes): unpack it again")
        images.append(raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))  # stored column-major
        y_path = os.path.join(folder, f"{part}_y.bin")
        labels.append(np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1 if os.path.isfile(y_path)
                      else np.full(len(images[-1]), -1, dtype=np.int64))
    names_file = os.path.join(folder, "class_names.txt")
    classes = open(names_file).read().split() if os.path.isfile(names_file) else [str(i) for i in range(10)]
    return ArrayImages(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), classes)


def _image_folder_split(root: str, split: str, in_memory: bool):
    names = {"val": ("val", "test"), "test": ("test", "val")}.get(split, (split,))
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            split_dir = os.path.join(root, name)
            break
    else:
        raise UserError(f"no {' or '.join(names)} folder in {root}: expected {root}/{names[0]}/<class>/<image>")
    samples, classes = scan_image_folder(split_dir)
    return decode_all(samples, classes) if in_memory or fits_in_memory(samples) else FileImages(samples, classes)


def load_split(name: str, split: str, paths_file: str = DEFAULT_PATHS_FILE):
    """Images and labels of one split of dataset ``name``: ``"pretrain"``, ``"train"`` or ``"test"``."""
    info = dataset_info(name)
    root = resolve(name, paths_file)
    split = {"pretrain": info.pretrain_split, "test": info.test_split}.get(split, split)
    family = info.family
    if family in ("cifar10", "cifar100"):
        native = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[family]
        for folder in (os.path.join(root, native), root):
            if os.path.isfile(os.path.join(folder, "batches.meta" if family == "cifar10" else "meta")):
                return _cifar_pickles(folder, family, split)
    elif family == "stl10":
        for folder in (os.path.join(root, "stl10_binary"), root):
            if os.path.isfile(os.path.join(folder, "train_X.bin")):
                return _stl_binary(folder, split)
        split = split.split("+")[0]  # an ImageFolder copy of STL-10 has no unlabeled split
    if not os.listdir(root):
        raise UserError(f"dataset folder {root} for {name!r} is empty: put the data there "
                        f"(torchvision's native files or {root}/train/<class>/<image>)")
    return _image_folder_split(root, split, info.in_memory)


def load_train_test(name: str, paths_file: str = DEFAULT_PATHS_FILE, train_split: str = "train"):
    """The (train, test) pair of a labelled dataset, checked to have the same classes."""
    train = load_split(name, train_split, paths_file)
    test = load_split(name, "test", paths_file)
    if list(train.classes) != list(test.classes):
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise UserError(f"train and test classes of {name!r} differ (only in train: {only_train[:5]}, only in "
                        f"test: {only_test[:5]}): both splits need the same class folders")
    return train, test
