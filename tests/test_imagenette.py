"""Imagenette as its own dataset: the ImageNet recipe at 128 px, the val/ split as test set, clear path errors."""
import os

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

import finetune
import gradient_linear_clf
import lbfgs_linear_clf
import simclr
from data.augment import eval_transform
from data.datasets import DATASETS, load_split
from data.paths import DEFAULT_PATHS_FILE, load_paths, resolve
from tests.tiny_data import write_image_folder, write_paths
from training.recipe import LINEAR_EVAL, RECIPES
from utils.checkpoint import load_checkpoint
from utils.errors import UserError


def test_imagenette_is_the_imagenet_recipe_at_128_px_with_the_knn_monitor():
    """Only the image size and the kNN monitor differ from ImageNet's row; the lr follows the same rule."""
    net, nette = RECIPES["imagenet"], RECIPES["imagenette"]
    assert {k for k in net if net[k] != nette[k]} == {"image_size", "test_freq"}
    assert (nette["image_size"], nette["test_freq"]) == (128, 10)
    assert RECIPES["imagenette"]["sqrt_lr"] == RECIPES["imagenet"]["sqrt_lr"] == (0.075, 4096)
    assert DATASETS["imagenette"] == DATASETS["imagenet"]
    assert LINEAR_EVAL["imagenette"] == LINEAR_EVAL["cifar10"] == dict(batch_size=512, num_epochs=100)
    args = simclr.resolve_args(simclr.get_args_parser().parse_args(["--dataset", "imagenette", "--batch-size", "256"]))
    assert (args.stem, args.image_size, args.blur, args.temperature, args.jitter_strength, args.weight_decay) == \
        ("imagenet", 128, True, 0.1, 1.0, 1e-6)
    assert (args.base_lr, args.lr_scaling) == (0.075, "sqrt") and args.lr == pytest.approx(0.075 * 16)
    big = simclr.resolve_args(simclr.get_args_parser().parse_args(["--dataset", "imagenette", "--batch-size", "4096"]))
    assert (big.base_lr, big.lr_scaling) == (0.3, "linear")
    assert 128 // 2 // 2 == 32  # 7x7 stride-2 conv, then stride-2 max-pool: 32x32 maps, as 224 px gives 56x56


@pytest.fixture(scope="module")
def nette(tmp_path_factory):
    """A 1-epoch checkpoint on an Imagenette-layout tree of 128 px JPEGs: 10 train, 6 val images."""
    tmp = tmp_path_factory.mktemp("nette")
    root = str(tmp / "nette")
    write_image_folder(root, classes=("n01", "n02"), per_class=5, size=128, fmt="jpg", splits=("train",))
    write_image_folder(root, classes=("n01", "n02"), per_class=3, size=128, fmt="jpg", splits=("val",), seed=7)
    paths = write_paths(str(tmp / "p.json"), {"imagenette": "nette"})
    ckpt = str(tmp / "nette.pth")
    result = simclr.main(simclr.get_args_parser().parse_args(
        ["--dataset", "imagenette", "--dataset-paths", paths, "--arch", "resnet18", "--batch-size", "10",
         "--num-epochs", "1", "--num-workers", "0", "--precision", "fp32", "--proj-dim", "8", "--test-freq", "1",
         "--knn-k", "3", "--filename", ckpt]))
    return ckpt, paths, result


def test_tiny_imagenette_run_then_lbfgs_on_val(nette, tmp_path):
    ckpt, paths, result = nette
    saved = load_checkpoint(ckpt)["args"]
    assert (saved["dataset"], saved["image_size"], saved["stem"]) == ("imagenette", 128, "imagenet")
    assert len(result["knn"]) == 1  # the monitor ran, on val
    summary = lbfgs_linear_clf.main(lbfgs_linear_clf.get_args_parser().parse_args(
        ["--load-from", ckpt, "--dataset-paths", paths, "--l2-num", "2", "--num-workers", "0",
         "--val-fraction", "0.2", "--output", str(tmp_path / "l.json")]))
    assert (summary["dataset"], summary["num_train"], summary["num_test"]) == ("imagenette", 10, 6)  # val: 6 images


def test_gradient_linear_and_finetune_on_imagenette(nette, tmp_path, capsys):
    ckpt, paths, _ = nette
    common = ["--load-from", ckpt, "--dataset-paths", paths, "--num-workers", "0", "--precision", "fp32"]
    lin = gradient_linear_clf.main(gradient_linear_clf.get_args_parser().parse_args(
        common + ["--batch-size", "10", "--num-epochs", "1", "--output", str(tmp_path / "g.json")]))
    assert lin["dataset"] == "imagenette" and 0 <= lin["top1"] <= lin["top5"] <= 100
    assert "(6 images)" in capsys.readouterr().out
    ft = finetune.main(finetune.get_args_parser().parse_args(
        common + ["--label-fraction", "0.5", "--num-epochs", "1", "--output", str(tmp_path / "f.json")]))
    assert (ft["dataset"], ft["num_test"]) == ("imagenette", 6) and 0 <= ft["top1"] <= ft["top5"] <= 100


def test_missing_imagenette_folder_names_the_file_and_the_key(tmp_path):
    paths = write_paths(str(tmp_path / "p.json"), {"imagenette": "nowhere"})
    with pytest.raises(UserError, match=r"'imagenette' not found: .*nowhere \(from .*p\.json\)"):
        load_split("imagenette", "train", paths)
    other = write_paths(str(tmp_path / "q.json"), {"imagenet": "nowhere"})
    with pytest.raises(UserError, match=r"'imagenette' has no entry in .*q\.json"):
        load_split("imagenette", "train", other)


def test_repo_paths_tell_imagenette_from_imagenet():
    paths = load_paths()
    assert os.path.basename(paths["imagenette"]) == "imagenette-128" and paths["imagenet"] != paths["imagenette"]
    if not os.path.isdir(paths["imagenet"]):  # the placeholder for the user's ImageNet
        with pytest.raises(UserError, match=f"'imagenet' not found: {paths['imagenet']} .*dataset-paths.json"):
            resolve("imagenet", DEFAULT_PATHS_FILE)


def test_eval_transform_keeps_a_128_px_image_whole_and_follows_the_imagenet_rule_on_larger_ones():
    """128 px images at --image-size 128 pass unchanged (they were enlarged to 146 and cut to 128); a large image
    gets the standard resize-to-size/0.875 + centre crop; one in between is only centre-cropped."""
    rng = np.random.default_rng(0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    norm = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    img = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    assert eval_transform(128, mean, std)(img).equal(norm(img))
    big = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    standard = T.Compose([T.Resize(256, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(224), norm])
    assert eval_transform(224, mean, std)(big).equal(standard(big))
    mid = Image.fromarray(rng.integers(0, 256, (140, 150, 3), dtype=np.uint8))
    assert eval_transform(128, mean, std)(mid).equal(norm(T.CenterCrop(128)(mid)))
    small = Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    assert eval_transform(128, mean, std)(small).shape == (3, 128, 128)
