"""Dataset lookup and loading in every layout, on tiny files written here, and the augmentation."""
import math
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import data.datasets as ds
from data.datasets import DATASETS, ArrayImages, FileImages, content_key, load_split, load_train_test, read_image
from data.batched_augment import blur_kernel_size
from data.jpeg_decode import DecodedTwoViews
from data.loaders import ImageTreeTwoViews, InMemoryTwoViews, pretrain_input
from data.paths import load_paths, resolve
from data.sampler import EpochSampler, StepSampler, epoch_starts
from data.reference_augment import TwoViews, simclr_augmentation
from tests.tiny_data import (write_cifar10_pickles, write_cifar100_pickles, write_gray16, write_image_folder,
                             write_paths, write_pickle, write_py2_pickle, write_stl_binary)
from utils.errors import UserError


def test_relative_paths_resolve_against_the_json_file(tmp_path):
    (tmp_path / "sub" / "data").mkdir(parents=True)
    paths = write_paths(str(tmp_path / "sub" / "p.json"), {"cifar10": "data", "imagenet": "/abs/x"})
    assert load_paths(paths) == {"cifar10": str(tmp_path / "sub" / "data"), "imagenet": "/abs/x"}
    assert resolve("cifar10", paths) == str(tmp_path / "sub" / "data")


def test_repo_paths_file_points_at_the_bundled_sample(repo_root):
    assert resolve("cifar10-sample") == os.path.join(repo_root, "samples", "cifar10-sample")
    train, test = load_train_test("cifar10-sample")
    assert train.images.shape == (500, 32, 32, 3) and test.images.shape == (200, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [50] * 10


def test_cifar10_normalisation_matches_the_data():
    """The sample's pixel statistics agree with the constants; the common wrong std (0.2023) would not."""
    x = load_split("cifar10-sample", "train").images.reshape(-1, 3) / 255.0
    info = DATASETS["cifar10"]
    np.testing.assert_allclose(x.mean(0), info.mean, atol=0.015)
    np.testing.assert_allclose(x.std(0), info.std, atol=0.015)


def test_image_folder_layout(tmp_path):
    written = write_image_folder(str(tmp_path / "d"), classes=("a", "b", "c"), per_class=3)
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "d"})
    train, test = load_train_test("cifar10", paths)
    np.testing.assert_array_equal(train.images, written["train"][0])
    np.testing.assert_array_equal(train.labels, written["train"][1])
    assert train.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(test.images, written["test"][0])


def test_an_image_tree_is_decoded_into_memory_when_its_images_share_one_size_and_fit(tmp_path, monkeypatch):
    """One size and small: the uint8 copy (as CIFAR); two sizes (as ImageNet) or over the limit: read from disk
    by workers. Either way the same pixels, and val/ is the test split."""
    written = write_image_folder(str(tmp_path / "in"), per_class=2, size=12, splits=("train", "val"))
    paths = write_paths(str(tmp_path / "p.json"), {"imagenet": "in"})
    val = load_split("imagenet", "test", paths)
    assert isinstance(val, ArrayImages) and len(val) == 4 and val.classes == ["cat", "dog"]
    np.testing.assert_array_equal(np.asarray(val.image(3)), written["val"][0][3])
    opened, real_open = [], Image.open
    monkeypatch.setattr(ds.Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    assert isinstance(load_split("imagenet", "test", paths), ArrayImages)
    assert len(opened) == 1  # decoded and cached before: only the first header is read, to check the size limit
    monkeypatch.undo()
    monkeypatch.setattr(ds, "DECODED_LIMIT", 4 * 12 * 12 * 3 - 1)  # one byte short
    on_disk = load_split("imagenet", "test", paths)
    assert isinstance(on_disk, FileImages) and len(on_disk) == 4
    np.testing.assert_array_equal(np.asarray(on_disk.image(3)), written["val"][0][3])
    monkeypatch.undo()
    Image.fromarray(np.zeros((12, 13, 3), np.uint8)).save(str(tmp_path / "in" / "val" / "dog" / "odd.png"))
    mixed = load_split("imagenet", "test", paths)
    assert isinstance(mixed, FileImages) and len(mixed) == 5
    # pretraining: the decoded copy's views are made on the device, the files' crops in workers
    kw = dict(num_epochs=1, batching="stream", world=1, rank=0, seed=0, device=torch.device("cpu"), image_size=8,
              jitter_strength=0.5, blur=False, num_workers=0)
    assert pretrain_input("imagenet", paths, 2, **kw)[3] == "memory"
    assert isinstance(pretrain_input("imagenet", paths, 2, **kw)[2], InMemoryTwoViews)
    Image.fromarray(np.zeros((12, 13, 3), np.uint8)).save(str(tmp_path / "in" / "train" / "dog" / "odd.png"))
    assert isinstance(pretrain_input("imagenet", paths, 2, **kw)[2], ImageTreeTwoViews)  # auto on a CPU: workers
    assert isinstance(pretrain_input("imagenet", paths, 2, decode="gpu", **kw)[2], DecodedTwoViews)


def test_cifar10_native_pickles(tmp_path):
    images, labels = write_cifar10_pickles(str(tmp_path))
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "."})
    train, test = load_train_test("cifar10", paths)
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)
    assert len(test) == 4 and train.classes[3] == "c3"


def test_cifar100_native_pickles(tmp_path):
    images, labels = write_cifar100_pickles(str(tmp_path))
    paths = write_paths(str(tmp_path / "p.json"), {"cifar100": "."})
    train = load_split("cifar100", "train", paths)
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)
    assert len(train.classes) == 100


def test_stl10_binary_with_unlabeled_for_pretraining(tmp_path):
    written = write_stl_binary(str(tmp_path))
    paths = write_paths(str(tmp_path / "p.json"), {"stl10": "."})
    pre = load_split("stl10", "pretrain", paths)
    assert len(pre) == 6
    np.testing.assert_array_equal(pre.images[:3], written["train"][0])
    np.testing.assert_array_equal(pre.images[3:], written["unlabeled"][0])
    assert pre.labels[3:].tolist() == [-1] * 3
    test = load_split("stl10", "test", paths)
    np.testing.assert_array_equal(test.labels, written["test"][1])
    assert test.classes[0] == "k0"


# ---- bad input: each names the problem -------------------------------------------------------

def test_unknown_dataset_key(tmp_path):
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "."})
    with pytest.raises(UserError, match="'imagenet' has no entry"):
        load_split("imagenet", "train", paths)
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_split("mnist", "train", paths)


def test_paths_file_missing_or_not_json(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_paths(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{'cifar10': ")
    with pytest.raises(UserError, match="not valid JSON"):
        load_paths(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        load_paths(str(bad))


def test_missing_and_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "noclasses" / "train").mkdir(parents=True)
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "missing", "cifar100": "empty", "stl10": "noclasses"})
    with pytest.raises(UserError, match="not found"):
        load_split("cifar10", "train", paths)
    with pytest.raises(UserError, match="is empty"):
        load_split("cifar100", "train", paths)
    with pytest.raises(UserError, match="no class folders"):
        load_split("stl10", "train", paths)


def test_corrupt_image_is_named(tmp_path):
    write_image_folder(str(tmp_path / "d"), per_class=2, fmt="jpg")
    bad = tmp_path / "d" / "train" / "dog" / "0003.jpg"
    bad.write_bytes(bad.read_bytes()[:20])  # truncated
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "d"})
    with pytest.raises(UserError, match="0003.jpg"):
        load_split("cifar10", "train", paths)


def test_non_image_files_are_skipped_with_a_warning(tmp_path):
    write_image_folder(str(tmp_path / "d"), per_class=2)
    (tmp_path / "d" / "train" / "cat" / "notes.txt").write_text("hello")
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "d"})
    with pytest.warns(UserWarning, match="notes.txt"):
        assert len(load_split("cifar10", "train", paths)) == 4


def test_train_and_test_classes_must_match(tmp_path):
    write_image_folder(str(tmp_path / "d"), per_class=1)
    os.rename(tmp_path / "d" / "test" / "dog", tmp_path / "d" / "test" / "wolf")
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "d"})
    with pytest.raises(UserError, match="classes .* differ"):
        load_train_test("cifar10", paths)


def test_images_of_different_sizes_are_refused_in_memory(tmp_path):
    write_image_folder(str(tmp_path / "d"), per_class=1, splits=("train",))
    write_image_folder(str(tmp_path / "d"), classes=("eel",), per_class=1, size=9, splits=("train",))
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "d"})
    with pytest.raises(UserError, match="differ in size"):
        load_split("cifar10", "train", paths)


def test_truncated_cifar_pickle(tmp_path):
    write_cifar10_pickles(str(tmp_path))
    f = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    f.write_bytes(f.read_bytes()[:100])
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "."})
    with pytest.raises(UserError, match="data_batch_2"):
        load_split("cifar10", "train", paths)


# ---- sampler and views ------------------------------------------------------------------------

def test_sampler_is_a_seeded_permutation_per_epoch_and_splits_across_ranks():
    s = EpochSampler(10, seed=3)
    s.set_epoch(0)
    e0 = [i for _, i in s]
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == list(range(10)) and e0 != [i for _, i in e1] and e1[0][0] == 1
    s.set_epoch(1, skip=4)
    assert list(s) == e1[4:] and len(s) == 6
    ranks = [EpochSampler(10, seed=3, num_replicas=3, rank=r) for r in range(3)]
    parts = [[i for _, i in r] for r in ranks]
    assert all(len(p) == 3 for p in parts) and len(set(sum(parts, []))) == 9


def stream_reference(n, batch, epochs, seed, batching):
    """Pretraining's global batches of (epoch, index) keys, written out plainly: the official code's stream (the
    epochs' orders one after the other, cut into n * epochs // batch + 1 batches), or n // batch batches an epoch."""
    if batching == "epochs":
        return [[(e, i) for i in EpochSampler(n, seed).order(e)[k * batch:(k + 1) * batch]]
                for e in range(epochs) for k in range(n // batch)]
    stream = [(e, i) for e in range(epochs + 2) for i in EpochSampler(n, seed).order(e)]
    return [stream[k * batch:(k + 1) * batch] for k in range(n * epochs // batch + 1)]


@pytest.mark.parametrize("n, batch, world", [(10, 4, 1), (10, 4, 2), (12, 6, 3), (7, 7, 1), (9, 2, 2)])
@pytest.mark.parametrize("batching", ["stream", "epochs"])
def test_step_sampler_cuts_the_stream_into_global_batches_shared_by_the_ranks(n, batch, world, batching):
    """Every rank's keys of every epoch, resumed after any step, are its share (every world-th key) of the global
    batches of stream_reference; the epochs' boundaries are the steps that end each epoch's order."""
    epochs = 3
    ref = stream_reference(n, batch, epochs, 5, batching)
    samplers = [StepSampler(n, batch, epochs, batching, seed=5, num_replicas=world, rank=r) for r in range(world)]
    starts = samplers[0].starts
    assert starts[-1] == len(ref) and starts == epoch_starts(n, batch, epochs, batching)
    if batching == "stream":  # epoch e ends with the batch that holds the last key of its order (position e*n - 1)
        assert all((s - 1) * batch <= e * n - 1 < s * batch for e, s in enumerate(starts[1:-1], 1))
    for e in range(epochs):
        for skip in range(starts[e + 1] - starts[e]):
            for r, s in enumerate(samplers):
                s.set_epoch(e, skip)
                keys = list(s)
                want = [k for b in ref[starts[e] + skip:starts[e + 1]] for k in b[r::world]]
                assert keys == want and len(s) == len(want), (e, skip, r)


def test_the_epochs_batching_keeps_the_keys_of_earlier_versions():
    """Checkpoints written before --batching resume with 'epochs': EpochSampler's share of each epoch, cut into
    batches, as the pretraining sampler was."""
    for world in (1, 2):
        for r in range(world):
            old = EpochSampler(22, seed=1, num_replicas=world, rank=r)
            new = StepSampler(22, 8, 2, "epochs", seed=1, num_replicas=world, rank=r)
            for e in range(2):
                old.set_epoch(e)
                new.set_epoch(e)
                assert list(new) == list(old)[:len(list(new))] and len(list(new)) == 2 * 8 // world


def test_two_views_are_reproducible_and_independent_of_global_rng(tmp_path):
    images = load_split("cifar10-sample", "train")
    views = TwoViews(images, simclr_augmentation(32, 0.5, False, DATASETS["cifar10"].mean, DATASETS["cifar10"].std))
    torch.manual_seed(0)
    a1, a2 = views[(0, 7)]
    state = torch.get_rng_state()
    torch.manual_seed(123)
    b1, b2 = views[(0, 7)]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)  # two different views
    assert not torch.equal(views[(1, 7)][0], a1)  # another epoch, other views
    torch.set_rng_state(state)
    assert a1.shape == (3, 32, 32)


def test_augmentation_pipeline_follows_appendix_a():
    t = simclr_augmentation(224, 1.0, True, (0.5,) * 3, (0.5,) * 3).transforms
    crop, flip, jitter, gray, blur = t[:5]
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert crop.interpolation.value == "bicubic" and flip.p == 0.5 and gray.p == 0.2
    cj = jitter.transforms[0]
    assert jitter.p == 0.8 and cj.brightness == pytest.approx((0.2, 1.8)) and cj.hue == pytest.approx((-0.2, 0.2))
    assert blur.p == 0.5 and blur.transforms[0].kernel_size == (23, 23) and blur.transforms[0].sigma == (0.1, 2.0)
    half = simclr_augmentation(32, 0.5, False, (0.5,) * 3, (0.5,) * 3).transforms
    assert half[2].transforms[0].saturation == pytest.approx((0.6, 1.4))
    assert not any("Blur" in type(op).__name__ for op in half)
    assert blur_kernel_size(32) == 3 and blur_kernel_size(96) == 9
    assert math.isclose(blur_kernel_size(224) / 224, 0.1, abs_tol=0.01)


def test_decoded_images_are_cached_and_invalidated(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "CACHE_DIR", str(tmp_path / "cache"))
    write_image_folder(str(tmp_path / "d"), per_class=2)
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "d"})
    first = load_split("cifar10", "train", paths)
    assert len(os.listdir(tmp_path / "cache")) == 1
    monkeypatch.setattr(ds, "read_image", lambda path: pytest.fail("decoded again despite the cache"))
    np.testing.assert_array_equal(load_split("cifar10", "train", paths).images, first.images)
    monkeypatch.undo()
    monkeypatch.setattr(ds, "CACHE_DIR", str(tmp_path / "cache"))
    write_image_folder(str(tmp_path / "d"), per_class=2, seed=9)  # same names, new pixels
    changed = load_split("cifar10", "train", paths)
    assert not np.array_equal(changed.images, first.images) and len(os.listdir(tmp_path / "cache")) == 2


def test_paths_file_unreadable(tmp_path):
    (tmp_path / "dir.json").mkdir()  # reading a folder fails even as root (unlike chmod 000)
    with pytest.raises(UserError, match="cannot read"):
        load_paths(str(tmp_path / "dir.json"))


# ---- formats and content: what a run reads is what the files hold ----------------------------

@pytest.mark.parametrize("fmt", ["python2", 2, 4, 5])
def test_cifar_batches_load_in_every_pickle_format(tmp_path, fmt):
    """The original files (Python 2 and numpy 1: ``numpy.core``, bytes as py2 str), and copies pickled again by
    Python 3 at protocol 2 (bytes via ``_codecs.encode``), 4 and 5 (``_frombuffer``): the restricted unpickler
    admits them all, with the same pixels."""
    images, labels = write_cifar10_pickles(str(tmp_path))
    folder = tmp_path / "cifar-10-batches-py"
    for name in os.listdir(folder):
        batch = ds._unpickle(str(folder / name))
        if fmt == "python2":
            write_py2_pickle(str(folder / name), batch)
        else:
            with open(folder / name, "wb") as f:
                pickle.dump(batch, f, protocol=fmt)
    train = load_split("cifar10", "train", write_paths(str(tmp_path / "p.json"), {"cifar10": "."}))
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)
    assert train.classes[9] == "c9"


def test_16_bit_grayscale_is_scaled_to_8_bit(tmp_path):
    """A 16-bit PNG (mode I;16) and PGM (mode I) give value >> 8 in each channel, not white (``convert("RGB")``
    clips at 255); a float TIFF (mode F) in 0..1 gives round(255 x)."""
    gradient = (np.arange(16 * 64, dtype=np.int64).reshape(16, 64) * 64 + 17).astype(np.uint16)  # 17..65489
    expected = (gradient >> 8).astype(np.uint8)
    for name, mode in (("g.png", "I;16"), ("g.pgm", "I")):
        path = write_gray16(str(tmp_path / name), gradient)
        with Image.open(path) as im:
            assert im.mode == mode
        rgb = np.asarray(read_image(path))
        assert rgb.shape == (16, 64, 3) and rgb.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(rgb[..., c], expected)
    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(np.asarray(read_image(str(tmp_path / "f.tif")))[..., 1],
                                  np.rint(floats.astype(np.float64) * 255).astype(np.uint8))


@pytest.mark.parametrize("mode,ext", [("L", "png"), ("LA", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "jpg"),
                                      ("RGB", "webp")])
def test_8_bit_modes_are_converted_as_pil_does(tmp_path, mode, ext):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    path = str(tmp_path / f"x.{ext}")
    (rgb.convert("RGBA") if mode == "LA" else rgb).convert(mode).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
        np.testing.assert_array_equal(np.asarray(read_image(path)), np.asarray(im.convert("RGB")))


def test_images_in_subfolders_of_a_class_are_read_in_torchvisions_order(tmp_path):
    """Nested folders inside a class folder count for that class; the order is torchvision's ImageFolder's and the
    same on every scan; a symbolic link back up the tree is not followed forever."""
    from torchvision.datasets import ImageFolder
    write_image_folder(str(tmp_path / "d"), per_class=2, splits=("train",))
    for rel in ("cat/deep/er/0.png", "cat/deep/1.png", "cat/b/2.png", "dog/z/3.png", "dog/z/a/4.png"):
        os.makedirs(os.path.dirname(tmp_path / "d" / "train" / rel), exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), int(rel[-5]), np.uint8)).save(tmp_path / "d" / "train" / rel)
    samples, classes = ds.scan_image_folder(str(tmp_path / "d" / "train"))
    assert classes == ["cat", "dog"] and len(samples) == 9
    assert [os.path.relpath(p, tmp_path / "d" / "train") for p, y in samples if y == 0] == [
        "cat/0000.png", "cat/0001.png", "cat/b/2.png", "cat/deep/1.png", "cat/deep/er/0.png"]
    assert samples == [(p, y) for p, y in ImageFolder(str(tmp_path / "d" / "train")).samples]
    os.symlink(tmp_path / "d" / "train" / "cat", tmp_path / "d" / "train" / "cat" / "deep" / "loop")
    assert ds.scan_image_folder(str(tmp_path / "d" / "train")) == (samples, classes)
    train = load_split("cifar10", "train", write_paths(str(tmp_path / "p.json"), {"cifar10": "d"}))
    assert train.labels.tolist() == [0] * 5 + [1] * 4 and int(train.images[2, 0, 0, 0]) == 2


def test_content_key_follows_pixels_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8), np.arange(5)
    key = content_key(ArrayImages(x, y, ["a"]))
    assert len(key) == 20 and key == content_key(ArrayImages(x.copy(), y.copy(), ["b"]))
    x2 = x.copy()
    x2[3, 1, 2, 0] ^= 1
    assert content_key(ArrayImages(x2, y, ["a"])) != key
    assert content_key(ArrayImages(x, np.array([0, 1, 2, 3, 3]), ["a"])) != key
    assert content_key(ArrayImages(x.reshape(5, 2, 8, 3), y, ["a"])) != key  # same bytes, another shape
    once = ArrayImages(x, y, ["a"])
    assert content_key(once) == key and once._content_key == key  # kept: a second call does not hash again
    write_image_folder(str(tmp_path / "d"), per_class=1, splits=("train",))
    samples, classes = ds.scan_image_folder(str(tmp_path / "d" / "train"))
    files = FileImages(samples, classes)
    assert content_key(files) == ds._cache_key(samples) == content_key(FileImages(list(samples), classes))
    os.utime(samples[0][0], ns=(1, 1))
    assert content_key(FileImages(samples, classes)) != content_key(files)


def test_stl_class_names_file_is_closed(tmp_path):
    write_stl_binary(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert load_split("stl10", "test", write_paths(str(tmp_path / "p.json"), {"stl10": "."})).classes[9] == "k9"
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_truncated_or_foreign_decode_cache_is_decoded_again(tmp_path, monkeypatch):
    """A cache file cut short (a crash before the atomic write existed, a full disk) or holding another array is
    decoded again and replaced whole; no temporary file stays behind."""
    monkeypatch.setattr(ds, "CACHE_DIR", str(tmp_path / "cache"))
    write_image_folder(str(tmp_path / "d"), per_class=2, splits=("train",))
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "d"})
    first = load_split("cifar10", "train", paths).images
    (cache,) = list((tmp_path / "cache").iterdir())
    whole = cache.read_bytes()
    for bad in (whole[:len(whole) // 2], whole[:5], b""):
        cache.write_bytes(bad)
        np.testing.assert_array_equal(load_split("cifar10", "train", paths).images, first)
        assert cache.read_bytes() == whole and os.listdir(tmp_path / "cache") == [cache.name]
    np.save(cache, first[:3])  # another (shorter) array under this key
    np.testing.assert_array_equal(load_split("cifar10", "train", paths).images, first)
    assert cache.read_bytes() == whole
    write_pickle(str(cache), {"not": "an array"})  # np.load never unpickles
    np.testing.assert_array_equal(load_split("cifar10", "train", paths).images, first)


def test_an_unwritable_decode_cache_still_loads(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(ds, "CACHE_DIR", str(tmp_path / "file" / "cache"))  # its folder cannot be made
    written = write_image_folder(str(tmp_path / "d"), per_class=2, splits=("train",))
    train = load_split("cifar10", "train", write_paths(str(tmp_path / "p.json"), {"cifar10": "d"}))
    np.testing.assert_array_equal(train.images, written["train"][0])
