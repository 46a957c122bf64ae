"""DataLoader workers' batches in /dev/shm (utils/device.py): the plan at the issue's numbers (ImageNet, 512 images
per process, 2 crops at 224 px, 8 processes on a machine), its boundaries, the one-line refusal, the warning, and
the plan reaching the image-tree DataLoader and the evaluation scripts' loaders (inspected, no worker started)."""
from types import SimpleNamespace

import pytest
import torch

import utils.device
from data.augment import eval_transform
from data.datasets import FileImages, scan_image_folder
from data.loaders import ImageTreeTwoViews, crop_batch_bytes, two_view_batches
from data.sampler import EpochSampler
from data.views import Transformed
from evaluation.features import extract_features
from evaluation.harness import eval_loader, seeded_train_loader
from tests.tiny_data import write_image_folder
from utils.device import shm_batches, shm_free_bytes, shm_plan
from utils.errors import UserError

GB = 10 ** 9
IMAGENET = crop_batch_bytes(512, 224)  # one process's batch of the ImageNet script: 154 MB


def test_batch_bytes_at_the_issue_numbers():
    assert IMAGENET == 2 * 512 * 3 * 224 * 224 + 16 * 512 == 154_148_864  # crops, epochs and indices
    assert shm_batches(32, 2) * IMAGENET * 8 > 79 * GB  # what 32 workers x 8 ranks would take unchecked


def test_plan_lowers_prefetch_then_workers_at_the_issue_numbers():
    assert shm_plan(IMAGENET, 32, 1000 * GB, 8) == (32, 2)  # 62.5 GB each: 66 batches fit
    assert shm_plan(IMAGENET, 32, 64 * GB, 8) == (23, 1)  # 4 GB each: 25 batches, 2 of them held by the loop
    assert shm_plan(IMAGENET, 32, 1 * GB, 1) == (1, 1)  # 500 MB: 3 batches
    with pytest.raises(UserError) as e:
        shm_plan(IMAGENET, 32, 1 * GB, 8)  # 62 MB each: not one batch
    msg = str(e.value)
    assert "\n" not in msg and "154 MB" in msg and "1.0 GB free" in msg and "shared among 8 processes" in msg
    assert "--batch-size" in msg and "--num-workers 0" in msg and "docker run --shm-size=8g" in msg


def test_plan_boundaries():
    b = 1000
    exactly = 2 * shm_batches(4, 2) * b  # half of it is 4 workers at prefetch 2, to the byte
    assert shm_plan(b, 4, exactly) == (4, 2)
    assert shm_plan(b, 4, exactly - 1) == (4, 1)  # one byte short: prefetch first
    assert shm_plan(b, 4, 2 * shm_batches(4, 1) * b) == (4, 1)
    assert shm_plan(b, 4, 2 * shm_batches(4, 1) * b - 1) == (3, 1)  # then the workers
    assert shm_plan(b, 4, 2 * shm_batches(1, 1) * b * 3, local_processes=3) == (1, 1)
    with pytest.raises(UserError, match="even one worker needs 3 of them"):
        shm_plan(b, 4, 2 * shm_batches(1, 1) * b - 1)
    assert shm_plan(b, 4, exactly, prefetch=1) == (4, 1)  # never raised


def test_free_space_is_read_from_the_folder_and_none_without_it(tmp_path):
    assert shm_free_bytes(str(tmp_path)) > 0
    assert shm_free_bytes(str(tmp_path / "absent")) is None


def test_a_lowered_plan_is_one_warning_line_and_an_unchanged_one_is_silent(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setattr(utils.device, "shm_free_bytes", lambda: 64 * GB)
    assert utils.device.fit_workers_to_shm(IMAGENET, 32) == (23, 1)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning (rank 3): lowered DataLoader workers 32 -> 23 and "
                                                   "prefetch 2 -> 1")
    assert "docker run --shm-size=163g" in err
    assert utils.device.fit_workers_to_shm(IMAGENET, 0) == (0, 2)  # no workers: nothing in /dev/shm
    monkeypatch.setattr(utils.device, "shm_free_bytes", lambda: None)  # no /dev/shm (macOS, Windows)
    assert utils.device.fit_workers_to_shm(IMAGENET, 32) == (32, 2)
    assert capsys.readouterr().err == ""


def two_views(images: FileImages, num_workers: int):
    return two_view_batches(images, EpochSampler(len(images)), 2, image_size=8, jitter_strength=0.5, blur=False,
                            mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("cpu"), seed=0,
                            num_workers=num_workers)


def test_image_tree_loader_gets_the_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    write_image_folder(str(tmp_path), per_class=2, size=12, splits=("train",))
    tree = FileImages(*scan_image_folder(str(tmp_path / "train")))  # read from disk: the image-tree path
    batch = crop_batch_bytes(2, 8)
    monkeypatch.setattr(utils.device, "shm_free_bytes", lambda: 2 * shm_batches(1, 1) * batch)
    batches = two_views(tree, num_workers=2)  # no more than this machine's 2 cores: torch would warn
    assert isinstance(batches, ImageTreeTwoViews)
    assert (batches.loader.num_workers, batches.loader.prefetch_factor) == (1, 1)
    assert batches.loader.persistent_workers and "workers 2 -> 1" in capsys.readouterr().err
    monkeypatch.setattr(utils.device, "shm_free_bytes", lambda: 10 * GB)
    batches = two_views(tree, num_workers=2)
    assert (batches.loader.num_workers, batches.loader.prefetch_factor) == (2, 2)
    monkeypatch.setattr(utils.device, "shm_free_bytes", lambda: 0)
    assert two_views(tree, num_workers=0).loader.num_workers == 0  # no workers: not checked
    with pytest.raises(UserError, match="do not fit in /dev/shm"):
        two_views(tree, num_workers=1)


def test_evaluation_loaders_get_the_plan(tmp_path, monkeypatch, capsys):
    """The evaluation scripts' loaders (float32 images at the target size: a batch of 512 at 224 px is 308 MB) are
    fitted as the pretraining's: the batch's bytes measured on one sample."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    write_image_folder(str(tmp_path), per_class=2, size=12, splits=("train",))
    tree = FileImages(*scan_image_folder(str(tmp_path / "train")))
    target = SimpleNamespace(image_size=8, info=SimpleNamespace(mean=(0.5,) * 3, std=(0.25,) * 3))
    transform = eval_transform(8, target.info.mean, target.info.std, None)
    batch = 2 * (3 * 8 * 8 * 4 + 8)  # two float32 (3, 8, 8) images and their int labels
    monkeypatch.setattr(utils.device, "shm_free_bytes", lambda: 2 * shm_batches(1, 1) * batch)
    loaders = [eval_loader(tree, transform, 2, 2), seeded_train_loader(tree, target, 2, 0, 2, torch.device("cpu"))]
    for loader in loaders:
        assert (loader.num_workers, loader.prefetch_factor) == (1, 1)
    assert loaders[1].persistent_workers
    assert capsys.readouterr().err.count("workers 2 -> 1") == 2
    monkeypatch.setattr(utils.device, "shm_free_bytes", lambda: 2 * shm_batches(1, 1) * batch - 1)
    with pytest.raises(UserError, match="do not fit in /dev/shm"):
        eval_loader(tree, transform, 2, 2)
    with pytest.raises(UserError, match="do not fit in /dev/shm"):
        extract_features(torch.nn.Flatten(), Transformed(tree, transform), torch.device("cpu"), 2, num_workers=2)
    assert eval_loader(tree, transform, 2, 0).num_workers == 0  # no workers: not checked
