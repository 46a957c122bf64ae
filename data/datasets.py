"""Datasets in torchvision's native formats and ImageFolder trees, as images plus integer labels.

Layouts read (the folder comes from ``dataset-paths.json``):
  - cifar10:  ``cifar-10-batches-py/`` (torchvision's pickles), or ``train/<class>/*`` + ``test/<class>/*``
  - cifar100: ``cifar-100-python/`` (fine labels), or the ImageFolder layout
  - stl10:    ``stl10_binary/`` (``*_X.bin``, ``*_y.bin``), or the ImageFolder layout
              (pretraining uses ``train+unlabeled``: 105k images, labels ignored)
  - imagenet, imagenette: ``train/<wnid>/*`` + ``val/<wnid>/*`` (any ImageFolder tree; val is the test split)
Small datasets (CIFAR, STL, the bundled sample) are decoded once into a uint8 array in memory;
ImageNet-sized trees are read from disk by the DataLoader workers. Nothing is ever downloaded.
CIFAR's pickles are read by a restricted unpickler (numpy arrays only: a data file never runs code), and every
native file is checked at load (shapes, one label per image, labels within the classes).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from data.paths import DEFAULT_PATHS_FILE, resolve
from utils.errors import UserError
from utils.files import atomic_write, clean_orphans

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


# A folder given as --dataset (README, Your own images): ImageNet's normalisation, read by the layout it has.
FOLDER = DatasetInfo("folder", IMAGENET_MEAN, IMAGENET_STD, False, "pretrain", "test")
HELD_OUT = 0.2  # of a folder of class folders without train/ and test/: the test split's share, by path hash


def input_info(name: str, augment: str = "torchvision") -> DatasetInfo:
    """``dataset_info`` with the inputs' normalisation of a run made with ``augment``: the dataset's mean and std
    for torchvision's semantics, none for the official code's, which feeds pixels in [0, 1]."""
    info = dataset_info(name)
    return info if augment == "torchvision" else replace(info, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def is_folder(name: str) -> bool:
    """Whether ``name`` is a folder given as the dataset (an existing folder, not a name registered in DATASETS)."""
    return name not in DATASETS and os.path.isdir(name)


def dataset_tag(name: str) -> str:
    """The dataset in output file names: its registered name, or a folder's own name."""
    return name if name in DATASETS else os.path.basename(os.path.normpath(name))


def dataset_arg(value: str) -> str:
    """argparse type of ``--dataset``: a registered name, or an existing folder (made absolute, so that a
    checkpoint names it wherever it is resumed from)."""
    if value in DATASETS:
        return value
    if os.path.isdir(value):
        return os.path.abspath(value)
    raise argparse.ArgumentTypeError(f"{value!r} is neither a dataset name ({', '.join(DATASETS)}) nor a folder")


def dataset_info(name: str) -> DatasetInfo:
    """The registered dataset's facts, or FOLDER's for a folder of images."""
    if name in DATASETS:
        return DATASETS[name]
    if os.path.isdir(name):
        return FOLDER
    raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, or give a folder of images"
                    + (" (this folder does not exist here)" if os.sep in name else ""))


class ArrayImages(Dataset):
    """Images decoded into memory: ``images`` (N, H, W, 3) uint8, ``labels`` (N,) int64 (-1: unlabeled);
    ``paths``: the files they were decoded from, None for native formats (CIFAR pickles, STL binaries)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 paths: list[str] | None = None) -> None:
        self.images, self.labels, self.classes, self.paths = images, labels.astype(np.int64), classes, paths

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def __getitem__(self, i: int):
        return self.image(i), int(self.labels[i])


def native_size(images) -> int | None:
    """The side of in-memory images (N, H, W, C), None for images read from files (of any size)."""
    return images.images.shape[1] if isinstance(images, ArrayImages) else None


class FileImages(Dataset):
    """Images read from disk at each access: ``samples`` is a list of (path, label)."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str]) -> None:
        self.samples, self.classes = samples, classes
        self.labels = np.array([y for _, y in samples], dtype=np.int64)
        self.paths = [p for p, _ in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> Image.Image:
        return read_image(self.samples[i][0])

    def __getitem__(self, i: int):
        return self.image(i), int(self.labels[i])


def to_8bit(im: Image.Image) -> Image.Image:
    """Grayscale deeper than 8 bit scaled to 8 bit ("L"), which ``convert("RGB")`` would clip (a 16-bit PNG turns
    white): modes I;16* and I (16-bit PNG, TIFF and PGM): value >> 8; F: 0..1 times 255 when the image's largest
    value is at most 1, 0..65535 divided by 257 when above 255, else 0..255 as is (rounded, clipped). Other modes
    (L, LA, P, RGBA, CMYK, ...) are returned as they are: ``convert("RGB")`` handles them."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535) >> 8
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im).astype(np.float64))
        top = a.max(initial=0.0)
        a = np.clip(np.rint(a * 255 if top <= 1 else a / 257 if top > 255 else a), 0, 255)
    else:
        return im
    return Image.fromarray(a.astype(np.uint8))


def read_image(path: str) -> Image.Image:
    """Decode one image to RGB (deep grayscale scaled to 8 bit first: ``to_8bit``), or raise a UserError naming the
    file."""
    try:
        with Image.open(path) as im:
            return to_8bit(im).convert("RGB")
    except Exception as e:  # PIL raises many types for truncated/corrupt data
        raise UserError(f"cannot decode image {path} ({type(e).__name__}: {e}): delete or replace the file") from None


def _walk(folder: str) -> list[tuple[str, list[str]]]:
    """(folder, sorted file names) for ``folder`` and every folder below it, sorted by path: the order of
    torchvision's ImageFolder (``sorted(os.walk(folder, followlinks=True))``), except that a symbolic link back to
    a folder above it is not followed (it would never end)."""
    def unreadable(e: OSError):
        raise UserError(f"cannot read folder {e.filename} ({e.strerror}): check its permissions")

    above = {folder: frozenset([os.path.realpath(folder)])}  # each folder's real path and its parents'
    out = []
    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        dirs.sort()
        for d in list(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if real in above[root]:
                dirs.remove(d)
            else:
                above[os.path.join(root, d)] = above[root] | {real}
        out.append((root, sorted(files)))
    return sorted(out)


def scan_image_folder(split_dir: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) for every image under ``split_dir/<class>/``, subfolders included (as torchvision's
    ImageFolder, in its order); the class folders are the top-level ones. Non-image files are skipped with a
    warning."""
    if not os.path.isdir(split_dir):
        raise UserError(f"folder not found: {split_dir}; expected the layout {split_dir}/<class>/<image>")
    classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not classes:
        raise UserError(f"no class folders in {split_dir}: expected {split_dir}/<class>/<image>")
    samples, skipped = [], []
    for label, cls in enumerate(classes):
        for folder, fnames in _walk(os.path.join(split_dir, cls)):
            for fname in fnames:
                path = os.path.join(folder, fname)
                if not os.path.isfile(path):  # a broken link
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


def content_key(images: ArrayImages | FileImages) -> str:
    """20 hex digits that identify a loaded split's data by content (the feature cache's key): for files, the
    digest of their paths, labels, sizes and mtimes (``_cache_key``, as the decoded-image cache); for decoded
    images, a BLAKE2b hash of the pixels, their shape and the labels. Computed once per object: the arrays of a
    loaded split are not changed in place."""
    key = getattr(images, "_content_key", None)
    if key is None:
        if isinstance(images, FileImages):
            key = _cache_key(images.samples)
        elif isinstance(images, ArrayImages):
            h = hashlib.blake2b(digest_size=10)
            x = np.ascontiguousarray(images.images)
            h.update(f"{x.shape}|{x.dtype.str}|{len(images.labels)}\n".encode())
            h.update(x.reshape(-1).view(np.uint8))
            h.update(np.ascontiguousarray(images.labels, dtype="<i8"))
            key = h.hexdigest()
        else:
            raise TypeError(f"content_key takes ArrayImages or FileImages, not {type(images).__name__}")
        images._content_key = key
    return key


DECODED_LIMIT = 4 * 2**30  # bytes of a uint8 copy of an image tree, at most; a quarter of the RAM where less


def fits_in_memory(samples: list[tuple[str, int]]) -> bool:
    """Whether an image tree is decoded once into memory (as CIFAR: no decoding in workers, the batched views on
    the device; faster, bench/tree_loader.py) rather than read by DataLoader workers: all its images share one
    size (read from the headers, stopping at the first that differs, as ImageNet's do at once; not read again
    once decode_all has cached the copy) and the copy takes at most DECODED_LIMIT bytes and a quarter of the RAM
    (README gives the sizes of the datasets here)."""
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
    cached = _load_decoded(cache, len(samples)) if os.path.isfile(cache) else None
    paths = [p for p, _ in samples]
    if cached is not None:
        return ArrayImages(cached, labels, classes, paths)
    with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
        arrays = list(pool.map(lambda s: np.asarray(read_image(s[0])), samples))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(f"images differ in size ({sorted(shapes)[:3]}...) in {os.path.dirname(samples[0][0])}/..: "
                        f"resize them to one size first")
    images = np.stack(arrays)
    clean_orphans(cache)  # the temporary files of a killed run
    try:
        atomic_write(cache, lambda f: np.save(f, images))  # a temporary file, fsynced, renamed: never half a cache
    except UserError:
        pass  # a read-only checkout still works, only slower to start
    return ArrayImages(images, labels, classes, paths)


def _load_decoded(cache: str, n: int) -> np.ndarray | None:
    """The cached (n, H, W, 3) uint8 array, or None when the file is truncated, not an array (``np.load`` never
    unpickles) or of another shape: then the images are decoded again and the cache replaced."""
    try:
        with open(cache, "rb") as f:
            a = np.load(f)
    except (OSError, ValueError, EOFError):
        return None
    if isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 4 and len(a) == n and a.shape[3] == 3:
        return a
    return None


class _Refused(pickle.UnpicklingError):
    """A pickle names a global that no CIFAR file does (its ``module.name`` is the message)."""


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2 (``encode(text, "latin1")``), and only that."""
    if encoding != "latin1" or not isinstance(text, str):
        raise _Refused(f"_codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _pickle_globals() -> dict[tuple[str, str], object]:
    """The globals that a pickled CIFAR file names: numpy arrays (numpy 1 and Python 2, as in the original files,
    write ``numpy.core``, numpy 2 ``numpy._core``; protocol 5 ``_frombuffer`` instead of ``_reconstruct``), and
    Python 3's bytes at protocol 2. None of them runs code from the file."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric
    out: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                          ("_codecs", "encode"): _latin1}
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        out[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return out


_PICKLE_GLOBALS = _pickle_globals()


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes, numbers and numpy arrays, and nothing else: ``pickle.load`` would
    call any function that a crafted file names (``os.system``, ``eval``, ...); here naming one is refused before
    it runs."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _unpickle(path: str) -> object:
    """The object in a CIFAR pickle, read with ``_ArraysOnly``: a data file never runs code."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"missing file {path}: the folder looks incomplete; unpack the full archive there") from None
    except _Refused as e:
        raise UserError(f"{path} holds a pickled {e}, which a CIFAR file never does: refused (nothing was run); "
                        f"unpack the original archive again") from None
    except Exception as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}): the file is corrupt; unpack it again") from None


_AGAIN = "unpack the original archive again"


def _cifar_classes(path: str, names_key: bytes) -> list[str]:
    """The class names in a CIFAR meta file, checked."""
    meta = _unpickle(path)
    if not isinstance(meta, dict) or names_key not in meta:
        found = f"a dict without {names_key!r}" if isinstance(meta, dict) else f"a {type(meta).__name__}"
        raise UserError(f"{path} holds {found}, not CIFAR class names: {_AGAIN}")
    names = meta[names_key]
    if not (isinstance(names, (list, tuple)) and names and all(isinstance(c, (bytes, str)) for c in names)):
        raise UserError(f"{path}: {names_key!r} is not a list of class names: {_AGAIN}")
    return [c.decode("utf-8", "replace") if isinstance(c, bytes) else c for c in names]


def _cifar_batch(path: str, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(data (N, 3072) uint8, labels (N,) int64) of one CIFAR batch, checked at load: a batch with a label
    missing would otherwise pretrain and fail only in evaluation."""
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise UserError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch (a dict): {_AGAIN}")
    for key in (b"data", label_key):
        if key not in batch:
            found = ", ".join(repr(k) for k in list(batch)[:6]) or "none"
            raise UserError(f"{path} has no {key!r} entry (it has {found}): not a batch of this dataset; {_AGAIN}")
    data = batch[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        what = f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else \
            f"a {type(data).__name__}"
        raise UserError(f"{path}: b'data' is {what}, not N x 3072 uint8 (32x32 RGB images): {_AGAIN}")
    try:
        labels = np.asarray(batch[label_key])
    except ValueError:  # a ragged list
        labels = np.asarray(None)
    if labels.ndim != 1 or (labels.dtype.kind not in "iu" and len(labels)):
        raise UserError(f"{path}: {label_key!r} is not a list of integers: {_AGAIN}")
    if len(labels) != len(data):
        raise UserError(f"{path} has {len(labels)} labels for {len(data)} images (one each): {_AGAIN}")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise UserError(f"{path}: {len(bad)} of {len(labels)} labels are not a class 0..{num_classes - 1} (image "
                        f"{bad[0]} has {labels[bad[0]]}): {_AGAIN}")
    return data, labels


def _cifar_pickles(folder: str, family: str, split: str) -> ArrayImages:
    if family == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta, names_key = b"labels", "batches.meta", b"label_names"
    else:
        files = ["train"] if split == "train" else ["test"]
        label_key, meta, names_key = b"fine_labels", "meta", b"fine_label_names"
    classes = _cifar_classes(os.path.join(folder, meta), names_key)
    batches = [_cifar_batch(os.path.join(folder, f), label_key, len(classes)) for f in files]
    data = np.concatenate([x for x, _ in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([y for _, y in batches])
    return ArrayImages(np.ascontiguousarray(data), labels, classes)


def _stl_binary(folder: str, split: str) -> ArrayImages:
    names_file = os.path.join(folder, "class_names.txt")
    if os.path.isfile(names_file):
        with open(names_file) as f:
            classes = f.read().split()
        if not classes:
            raise UserError(f"{names_file} is empty: unpack stl10_binary.tar.gz again (or delete the file)")
    else:
        classes = [str(i) for i in range(10)]
    images, labels = [], []
    for part in split.split("+"):
        x_path = os.path.join(folder, f"{part}_X.bin")
        if not os.path.isfile(x_path):
            raise UserError(f"missing file {x_path}: unpack stl10_binary.tar.gz there")
        raw = np.fromfile(x_path, dtype=np.uint8)
        if raw.size % (3 * 96 * 96):
            raise UserError(f"{x_path} is truncated ({raw.size} bytes): unpack it again")
        images.append(raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))  # stored column-major
        y_path = os.path.join(folder, f"{part}_y.bin")
        if not os.path.isfile(y_path):
            if part != "unlabeled":
                raise UserError(f"missing file {y_path} (the labels of {x_path}): unpack stl10_binary.tar.gz there")
            labels.append(np.full(len(images[-1]), -1, dtype=np.int64))
            continue
        y = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)  # 1..10
        if len(y) != len(images[-1]):
            raise UserError(f"{y_path} holds {len(y)} labels for the {len(images[-1])} images of {x_path} (one "
                            f"each): unpack stl10_binary.tar.gz again")
        bad = np.flatnonzero((y < 1) | (y > len(classes)))
        if len(bad):
            raise UserError(f"{y_path}: {len(bad)} of {len(y)} labels are not a class 1..{len(classes)} (image "
                            f"{bad[0]} has {y[bad[0]]}): unpack stl10_binary.tar.gz again")
        labels.append(y - 1)
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


def folder_layout(root: str) -> str:
    """How a folder given as the dataset is read: ``splits`` (``train/<class>/...`` and ``val/`` or ``test/``, as
    ImageNet), ``classes`` (``<class>/...`` only: at least two class folders and no image beside them), or
    ``unlabeled`` (images at any depth, no classes)."""
    if os.path.isdir(os.path.join(root, "train")):
        return "splits"
    entries = os.listdir(root)
    if any(e.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(root, e)) for e in entries):
        return "unlabeled"
    return "classes" if sum(os.path.isdir(os.path.join(root, e)) for e in entries) >= 2 else "unlabeled"


def held_out(root: str, path: str, fraction: float = HELD_OUT) -> bool:
    """Whether an image of a ``classes`` folder is in its test split (``--test-fraction``): the SHA-1 of its path
    relative to the folder (with '/') below ``fraction``, so the split never changes between runs, machines or
    added files."""
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    return int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) < fraction * 2**32


def scan_unlabeled(root: str) -> list[tuple[str, int]]:
    """(path, -1) for every image under ``root``, at any depth, in _walk's order."""
    samples = [(os.path.join(folder, f), -1) for folder, files in _walk(root) for f in files
               if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))]
    if not samples:
        raise UserError(f"no images in {root}: give a folder of images ({', '.join(IMAGE_EXTENSIONS)}), of class "
                        f"folders, or with train/<class>/ and test/<class>/")
    return samples


def _folder_samples(root: str, split: str, test_fraction: float = HELD_OUT) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) and class names of one split of a folder given as the dataset (``folder_layout``):
    ``pretrain`` is every image (train/ in the ``splits`` layout); ``train`` and ``test`` need classes."""
    layout = folder_layout(root)
    if layout == "splits":
        names = {"pretrain": ("train",), "train": ("train",)}.get(split, ("val", "test"))
        found = [os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))]
        if not found:
            raise UserError(f"no val or test folder in {root}: expected {root}/test/<class>/<image> beside train/")
        return scan_image_folder(found[0])
    if layout == "unlabeled":
        if split != "pretrain":
            raise UserError(f"{root} has no classes (images directly in it): an evaluation needs labelled images, "
                            f"{root}/<class>/<image> or {root}/train/<class>/<image> with {root}/test/<class>/")
        return scan_unlabeled(root), []
    samples, classes = scan_image_folder(root)
    if split != "pretrain":
        samples = [s for s in samples if held_out(root, s[0], test_fraction) == (split == "test")]
        if not samples:
            raise UserError(f"the {split} split of {root} is empty ({test_fraction:.0%} of the images, by path hash, "
                            f"are held out for testing): add images or change --test-fraction")
    return samples, classes


def evenly_spaced(items: list, count: int) -> list:
    """At most ``count`` of ``items``, evenly spaced in order: a sample of a folder's files that is the same each
    time."""
    return items[::max(1, len(items) // count)][:count]


@functools.lru_cache(maxsize=8)
def median_side(root: str, sample: int = 256) -> int:
    """The median shorter side in pixels of the pretraining images of a folder given as the dataset, from the
    headers of at most ``sample`` of them, evenly spaced in order."""
    paths = [p for p, _ in _folder_samples(os.path.abspath(root), "pretrain")[0]]
    sides = []
    for path in evenly_spaced(paths, sample):
        try:
            with Image.open(path) as im:
                sides.append(min(im.size))
        except (OSError, ValueError):
            pass  # named when it is read
    if not sides:
        raise UserError(f"cannot read the size of any image in {root}: check the files")
    return int(np.median(sides))


def load_split(name: str, split: str, paths_file: str = DEFAULT_PATHS_FILE, test_fraction: float = HELD_OUT):
    """Images and labels of one split of dataset ``name`` (a registered name, or a folder: ``_folder_samples``,
    whose test split of class folders is ``test_fraction`` of the images): ``"pretrain"``, ``"train"`` or
    ``"test"``."""
    info = dataset_info(name)
    if info is FOLDER:
        samples, classes = _folder_samples(os.path.abspath(name), split, test_fraction)
        return decode_all(samples, classes) if fits_in_memory(samples) else FileImages(samples, classes)
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


def load_train_test(name: str, paths_file: str = DEFAULT_PATHS_FILE, train_split: str = "train",
                    test_fraction: float = HELD_OUT):
    """The (train, test) pair of a labelled dataset, checked to have the same classes."""
    train = load_split(name, train_split, paths_file, test_fraction)
    test = load_split(name, "test", paths_file, test_fraction)
    if list(train.classes) != list(test.classes):
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise UserError(f"train and test classes of {name!r} differ (only in train: {only_train[:5]}, only in "
                        f"test: {only_test[:5]}): both splits need the same class folders")
    return train, test
