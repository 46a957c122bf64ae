"""A folder given as --dataset (README, Your own images): its three layouts, the held-out split's stability, the
recipe row its image size picks, and the scripts end to end on tiny trees."""
import hashlib
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import embed
import lbfgs_linear_clf
import simclr
from data.datasets import (HELD_OUT, dataset_arg, dataset_tag, folder_layout, is_folder, load_split, median_side)
from tests.bad_input import assert_refused, run_script
from tests.tiny_data import random_images, write_image_folder
from training.recipe import RECIPES, folder_recipe, recipe


def write_flat(root: str, n: int, size: int, seed: int = 0, nested: bool = True) -> list[str]:
    """n images directly in root (a third of them in root/more/deeper/ when ``nested``); their paths."""
    paths = []
    for i, img in enumerate(random_images(n, size, seed)):
        folder = os.path.join(root, "more", "deeper") if nested and i % 3 == 2 else root
        os.makedirs(folder, exist_ok=True)
        paths.append(os.path.join(folder, f"{i:03d}.png"))
        Image.fromarray(img).save(paths[-1])
    return paths


def reference_held_out(root: str, path: str, fraction: float = HELD_OUT) -> bool:
    """The test split's rule, written out: the first 32 bits of SHA-1 of the '/'-relative path, below the fraction."""
    digest = hashlib.sha1(os.path.relpath(path, root).replace(os.sep, "/").encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def test_the_three_layouts(tmp_path):
    classes, splits, flat = str(tmp_path / "classes"), str(tmp_path / "splits"), str(tmp_path / "flat")
    write_image_folder(classes, classes=("a", "b", "c"), per_class=20, size=12, splits=("",))
    write_image_folder(splits, classes=("a", "b"), per_class=3, size=12, splits=("train", "test"))
    paths = write_flat(flat, 9, 12)
    os.makedirs(tmp_path / "one" / "only")
    write_flat(str(tmp_path / "one" / "only"), 2, 12, nested=False)
    assert [folder_layout(f) for f in (classes, splits, flat, str(tmp_path / "one"))] == \
        ["classes", "splits", "unlabeled", "unlabeled"]  # one folder is no classes

    everything = load_split(classes, "pretrain")
    assert len(everything) == 60 and everything.classes == ["a", "b", "c"]
    train, test = load_split(classes, "train"), load_split(classes, "test")
    assert sorted(train.paths + test.paths) == sorted(everything.paths) and not set(train.paths) & set(test.paths)
    assert all(reference_held_out(classes, p) for p in test.paths)
    assert not any(reference_held_out(classes, p) for p in train.paths)
    assert 0 < len(test) < 30 and train.classes == test.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(test.labels, [["a", "b", "c"].index(p.split(os.sep)[-2]) for p in test.paths])

    assert len(load_split(splits, "pretrain")) == 6 and len(load_split(splits, "test")) == 6
    half = load_split(classes, "test", test_fraction=0.5)  # --test-fraction: a larger test split, same rule
    assert set(test.paths) < set(half.paths) and all(reference_held_out(classes, p, 0.5) for p in half.paths)
    assert sum(reference_held_out(classes, p, 0.5) for p in everything.paths) == len(half)

    unlabeled = load_split(flat, "pretrain")
    assert sorted(unlabeled.paths) == sorted(paths) and unlabeled.classes == [] and (unlabeled.labels == -1).all()
    for split in ("train", "test"):
        with pytest.raises(simclr.UserError, match="has no classes"):
            load_split(flat, split)


def test_the_held_out_split_never_moves(tmp_path):
    """The same files stay in the same split when the folder is moved, other images are added, or one is renamed."""
    root = str(tmp_path / "a")
    write_image_folder(root, classes=("x", "y"), per_class=25, size=8, splits=("",))
    before = {os.path.relpath(p, root) for p in load_split(root, "test").paths}
    moved = str(tmp_path / "b")
    shutil.copytree(root, moved)
    write_image_folder(moved, classes=("x", "y"), per_class=5, size=8, splits=("",), fmt="jpg", seed=4)
    os.rename(os.path.join(moved, "x", "0000.png"), os.path.join(moved, "x", "renamed.png"))
    after = {os.path.relpath(p, moved) for p in load_split(moved, "test").paths}
    assert {p for p in after if p.endswith(".png") and "renamed" not in p} == before - {os.path.join("x", "0000.png")}


@pytest.mark.parametrize("side, row, stem, size", [(12, "cifar10", "cifar", 12), (64, "cifar10", "cifar", 64),
                                                   (100, "stl10", "stl", 96), (170, "imagenette", "imagenet", 224)])
def test_the_recipe_row_follows_the_median_image_side(tmp_path, side, row, stem, size):
    root = str(tmp_path / "d")
    write_flat(root, 5, side, nested=False)
    Image.fromarray(random_images(1, 4, 1)[0]).save(os.path.join(root, "odd.png"))  # one outlier: a median
    Image.fromarray(random_images(1, 300, 2)[0][:, :200]).save(os.path.join(root, "big.png"))  # shorter side 200
    assert median_side(root) == side and folder_recipe(root)[:2] == (row, side)
    r = recipe(root)
    assert (r["stem"], r["image_size"]) == (stem, size)
    assert {k: v for k, v in r.items() if k != "image_size"} == {k: v for k, v in RECIPES[row].items()
                                                                  if k != "image_size"}


def test_dataset_names_and_folders(tmp_path):
    assert dataset_arg("cifar10") == "cifar10" and not is_folder("cifar10")
    assert dataset_arg(str(tmp_path)) == str(tmp_path) and is_folder(str(tmp_path))
    assert dataset_tag(str(tmp_path / "photos")) == "photos" and dataset_tag("cifar10") == "cifar10"
    with pytest.raises(Exception, match="neither a dataset name"):
        dataset_arg(str(tmp_path / "missing"))


TINY = ["--arch", "resnet18", "--batch-size", "8", "--num-workers", "0", "--precision", "fp32", "--device", "cpu",
        "--warmup-epochs", "1", "--log-freq", "1", "--proj-dim", "16", "--num-epochs", "1"]


def test_pretraining_on_a_folder_without_classes_then_an_evaluation_is_refused(tmp_path, capsys):
    flat = str(tmp_path / "flat")
    paths = write_flat(flat, 12, 8)
    ckpt = str(tmp_path / "run.pth")
    result = simclr.main(simclr.get_args_parser().parse_args(TINY + ["--dataset", flat, "--filename", ckpt]))
    out = capsys.readouterr().out
    assert f"kNN monitor off: {flat} has no classes" in out and result["knn"] == []
    assert f"{flat} (unlabeled folder, median side 8 px: the cifar10 row of training/recipe.py): 12 images" in out
    assert "(cifar stem) at 8 px" in out
    code, lines = run_script(lbfgs_linear_clf, ["--load-from", ckpt, "--num-workers", "0"], capsys)
    assert_refused(code, lines, "has no classes (images directly in it): an evaluation needs labelled images")
    # Its embeddings and pictures: every image, no labels, paths relative to the folder, a grey map.
    out = {k: str(tmp_path / f"e.{k}") for k in ("npz", "n.png", "m.png")}
    embed.main(embed.get_args_parser().parse_args(["--load-from", ckpt, "--split", "all", "--num-workers", "0",
                                                   "--output", out["npz"], "--neighbours", out["n.png"],
                                                   "--map", out["m.png"], "--k", "3"]))
    with np.load(out["npz"], allow_pickle=False) as z:
        assert "labels" not in z and z["features"].shape == (12, 512)
        assert sorted(z["paths"]) == sorted(os.path.relpath(p, flat) for p in paths)
    assert all(Image.open(out[k]).size[0] > 100 for k in ("n.png", "m.png"))


def test_pretraining_and_linear_evaluation_on_a_folder_of_classes(tmp_path, capsys):
    root = str(tmp_path / "photos")
    write_image_folder(root, classes=("a", "b"), per_class=12, size=8, splits=("",))
    ckpt = str(tmp_path / "run.pth")
    result = simclr.main(simclr.get_args_parser().parse_args(TINY + ["--dataset", root, "--filename", ckpt,
                                                                     "--test-freq", "1", "--knn-k", "3"]))
    assert len(result["knn"]) == 1
    summary = lbfgs_linear_clf.main(lbfgs_linear_clf.get_args_parser().parse_args(
        ["--load-from", ckpt, "--num-workers", "0", "--test-fraction", "0.4"]))
    assert os.path.exists(str(tmp_path / "run.lbfgs-photos.json"))  # named by the folder's own name
    assert summary["dataset"] == root and summary["num_test"] == len(load_split(root, "test", test_fraction=0.4))
    assert summary["num_test"] != len(load_split(root, "test")) and summary["test_fraction"] == 0.4
