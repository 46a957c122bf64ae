"""``--augment official`` (data/official_augment.py): the pipeline is the official code's ops in its order, keyed as
torchvision's; simclr.py trains and resumes with it, and the evaluation feeds its backbone [0, 1] inputs."""
import os

import numpy as np
import pytest
import torch

import simclr
from data import official_augment as OA
from data.batched_augment import BatchedSimCLRAugment, rgb_to_grayscale
from data.datasets import ArrayImages, input_info
from data.keyed_random import ViewKeys
from data.loaders import TwoCrops
from data.official_color import color_jitter_tf, gaussian_blur_tf
from data.official_crop import official_crop_box, resize_bicubic_tf
from evaluation.load import evaluation_target
from tests.tiny_data import write_image_folder, write_paths
from utils.checkpoint import load_checkpoint, option_changes


def official(size: int, strength: float, blur: bool) -> BatchedSimCLRAugment:
    return BatchedSimCLRAugment(size, strength, blur, mean=(0, 0, 0), std=(1, 1, 1), pipeline=OA.OFFICIAL_PIPELINE)


def by_hand(images: torch.Tensor, aug: BatchedSimCLRAugment, keys: ViewKeys) -> torch.Tensor:
    """preprocess_for_train then batch_random_blur, written out from the official code's order with the module's ops
    and the draws of the view's key by name: the wiring of OFFICIAL_PIPELINE checked against its recipe."""
    u = keys.uniform(0, aug.num_draws)
    d = {name: u[:, r.start] if len(r) == 1 else u[:, r.start:r.stop] for name, r in aug.layout.items()}
    s = aug.jitter_strength
    x = images.float() / 255
    top, left, h, w = official_crop_box(d, *images.shape[-2:])
    x = resize_bicubic_tf(x, top, left, h, w, aug.size)
    x = torch.where((d["flip"] < 0.5)[:, None, None, None], x.flip(-1), x)
    lo = lambda a, b, v: a + (b - a) * v  # noqa: E731
    x = color_jitter_tf(x, torch.argsort(d["jitter_order"], dim=1), lo(max(0, 1 - 0.8 * s), 1 + 0.8 * s,
                        d["brightness"]), lo(1 - 0.8 * s, 1 + 0.8 * s, d["contrast"]),
                        lo(1 - 0.8 * s, 1 + 0.8 * s, d["saturation"]), lo(-0.2 * s, 0.2 * s, d["hue"]),
                        d["jitter"] < 0.8)
    x = torch.where((d["grayscale"] < 0.2)[:, None, None, None], rgb_to_grayscale(x, 3), x).clamp(0, 1)
    if aug.blur:
        blurred = gaussian_blur_tf(x, lo(0.1, 2.0, d["sigma"]), aug.size // 10)
        x = torch.where((d["blur"] < 0.5)[:, None, None, None], blurred, x).clamp(0, 1)
    return x


@pytest.mark.parametrize("size,strength,blur,side", [(32, 0.5, False, 32), (24, 1.0, True, 40)])
def test_the_pipeline_is_the_official_recipe_keyed_by_view(size, strength, blur, side):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, side, side + 3), dtype=torch.uint8, generator=g)
    aug, keys = official(size, strength, blur), ViewKeys(torch.arange(12), 5, 2, 1)
    out = aug(images, keys)
    assert out.min() >= 0 and out.max() <= 1  # [0, 1] inputs: no normalisation
    assert torch.allclose(out, by_hand(images, aug, keys), atol=1e-6)
    assert torch.allclose(aug(images[4:7], ViewKeys(torch.arange(4, 7), 5, 2, 1)), out[4:7], atol=1e-6)
    assert not torch.allclose(out, aug(images, ViewKeys(torch.arange(12), 5, 2, 0)))  # the other view


def test_workers_cut_the_official_box():
    tree = np.random.default_rng(1).integers(0, 256, size=(4, 30, 26, 3), dtype=np.uint8)
    aug = official(16, 1.0, True)
    c1, _, _, i = TwoCrops(ArrayImages(tree, np.zeros(4), ["x"]), aug, seed=3)[(2, 1)]
    box = aug.crop_params(ViewKeys(torch.tensor([1]), 3, 2, 0), 30, 26)
    ref = resize_bicubic_tf(torch.from_numpy(tree[1:2]).permute(0, 3, 1, 2).float() / 255,
                            box["top"], box["left"], box["h"], box["w"], 16)[0].clamp(0, 1)
    assert c1.dtype == torch.uint8 and i == 1
    assert (c1.float() / 255 - ref).abs().max() <= 0.5 / 255 + 1e-6  # the same crop, rounded to uint8


def test_simclr_trains_resumes_and_evaluates_with_official_inputs(tmp_path):
    write_image_folder(str(tmp_path / "d"), classes=("a", "b"), per_class=4, size=8)
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "d"})
    common = ["--dataset-paths", paths, "--arch", "resnet18", "--batch-size", "4", "--num-workers", "0",
              "--precision", "fp32", "--device", "cpu", "--test-freq", "0", "--proj-dim", "8", "--augment", "official"]
    full, part = str(tmp_path / "full.pth"), str(tmp_path / "part.pth")
    for argv in (["--num-epochs", "2", "--filename", full], ["--num-epochs", "1", "--filename", part],
                 ["--num-epochs", "2", "--filename", part, "--resume"]):
        simclr.main(simclr.get_args_parser().parse_args(common + argv))
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert a["args"]["augment"] == "official"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    info = evaluation_target(full, a["args"], None, None)[1]
    assert (info.mean, info.std) == ((0, 0, 0), (1, 1, 1)) == (input_info("cifar10", "official").mean,
                                                                input_info("cifar10", "official").std)
    assert evaluation_target(full, {"dataset": "cifar10"}, None, None)[1].mean == input_info("cifar10").mean
    old = {k: v for k, v in a["args"].items() if k != "augment"}  # a checkpoint from before --augment
    assert option_changes(old, a["args"]) == {"augment": ("torchvision", "official")}
    assert os.path.exists(full)
