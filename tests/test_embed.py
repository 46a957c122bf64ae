"""embed.py: the .npz of a split's features (h, z), the backbone exported for torchvision, and the refusals."""
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import embed
import evaluation
from data.augment import eval_transform
from data.datasets import DATASETS, ArrayImages
from models.export import torchvision_state_dict
from models.resnet import build_backbone
from models.simclr import SimCLR
from tests.bad_input import assert_refused, run_script, snapshot
from tests.tiny_data import random_images, write_cifar10_pickles, write_image_folder, write_paths
from utils.errors import UserError

ARGS = {"dataset": "cifar10", "arch": "resnet18", "stem": "cifar", "width_multiplier": 1, "proj_dim": 16,
        "proj_hidden_dim": None, "proj_layers": 2, "image_size": 8, "augment": "torchvision"}  # as simclr.py saves


def randomised(net: nn.Module, seed: int) -> nn.Module:
    """``net`` in eval mode with every BN's affine and running statistics drawn at random: eval mode and the
    loaded statistics then matter (at init the residual branches' last BN is zero, its statistics 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return net.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint, model, image-folder paths file, its folder, CIFAR-pickles paths file, its folder): a SimCLR
    resnet18 (cifar stem, head to 16) saved as simclr.py does; 8x8 PNGs of two classes (6 test images of 8 and
    10 px, so that they are read from the files) registered as imagenet; CIFAR-10 pickles registered as cifar10."""
    root = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    model = randomised(SimCLR("resnet18", "cifar", 16), 0)
    ckpt = str(root / "pre.pth")
    torch.save({"model": model.state_dict(), "args": dict(ARGS), "epoch": 1}, ckpt)
    tree = str(root / "tree")
    write_image_folder(tree, classes=("cat", "dog"), per_class=2, size=8, splits=("train", "test"))
    for i, img in enumerate(random_images(2, 10, seed=5)):  # another size: FileImages, read at each access
        Image.fromarray(img).save(os.path.join(tree, "test", ("cat", "dog")[i], f"{10 + i:04d}.png"))
    native = str(root / "native")
    write_cifar10_pickles(native, per_batch=3)
    return (ckpt, model, write_paths(str(root / "tree.json"), {"imagenet": tree}), tree,
            write_paths(str(root / "native.json"), {"cifar10": native}), native)


def run(argv: list[str]) -> dict:
    return embed.main(embed.get_args_parser().parse_args(argv + ["--num-workers", "0"]))


def reference(net: nn.Module, images: list[Image.Image], mean, std, native: int | None) -> np.ndarray:
    """``net`` on the evaluation transform of ``images``, in eval mode, one batch."""
    transform = eval_transform(8, mean, std, native)
    with torch.no_grad():
        return net.eval()(torch.stack([transform(im) for im in images])).numpy()


def test_h_of_image_files(tiny, tmp_path):
    ckpt, model, tree_paths, tree, _, _ = tiny
    out = str(tmp_path / "h.npz")
    summary = run(["--load-from", ckpt, "--dataset", "imagenet", "--dataset-paths", tree_paths, "--image-size", "8",
                   "--batch-size", "4", "--output", out])
    d = np.load(out, allow_pickle=False)
    assert set(d.files) == {"features", "labels", "classes", "paths", "arch", "checkpoint", "what"}
    names = ["test/cat/0000.png", "test/cat/0001.png", "test/cat/0010.png",
             "test/dog/0002.png", "test/dog/0003.png", "test/dog/0011.png"]  # scan order, relative to the folder
    assert d["paths"].dtype.kind == "U" and d["paths"].tolist() == names
    assert d["classes"].dtype.kind == "U" and d["classes"].tolist() == ["cat", "dog"]
    assert d["labels"].dtype == np.int64 and d["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert (str(d["arch"]), str(d["what"]), str(d["checkpoint"])) == ("resnet18", "h", os.path.abspath(ckpt))
    images = [Image.open(os.path.join(tree, n)).convert("RGB") for n in names]
    info = DATASETS["imagenet"]
    expected = reference(model.backbone, images, info.mean, info.std, None)
    assert d["features"].dtype == np.float32 and d["features"].shape == (6, 512)
    np.testing.assert_allclose(d["features"], expected, atol=1e-5, rtol=0)
    assert summary["what"] == "h" and summary["num_images"] == 6 and summary["labelled"]


def test_z_of_cifar_pickles_at_the_default_output(tiny, tmp_path):
    """--projection: z = g(f(x)) of the images in the pickles, named "<split>/<index>"; the default output beside the
    checkpoint, whose dataset (cifar10) and image size (8: the 32 px images resized and centre-cropped) are used."""
    _, model, _, _, native_paths, native = tiny
    ckpt = str(tmp_path / "run.pth")
    torch.save({"model": model.state_dict(), "args": dict(ARGS)}, ckpt)
    run(["--load-from", ckpt, "--dataset-paths", native_paths, "--projection", "--batch-size", "2"])
    d = np.load(str(tmp_path / "run.embed-cifar10-test.npz"), allow_pickle=False)
    with open(os.path.join(native, "cifar-10-batches-py", "test_batch"), "rb") as f:
        batch = pickle.load(f)  # written by the test itself
    images = [Image.fromarray(a) for a in batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)]
    info = DATASETS["cifar10"]
    expected = reference(model, images, info.mean, info.std, 32)  # SimCLR.forward: head(backbone(x))
    assert str(d["what"]) == "z" and d["features"].shape == (3, 16) and d["features"].dtype == np.float32
    np.testing.assert_allclose(d["features"], expected, atol=1e-5, rtol=0)
    assert d["paths"].tolist() == ["test/0", "test/1", "test/2"] and d["labels"].tolist() == batch[b"labels"]
    assert d["classes"].tolist() == [f"c{i}" for i in range(10)]


def test_unlabeled_images_have_no_labels(tiny, tmp_path, monkeypatch):
    ckpt, _, _, _, native_paths, _ = tiny
    images = ArrayImages(random_images(3, 8, seed=1), np.full(3, -1), [])
    monkeypatch.setattr(embed, "load_split", lambda name, split, paths_file, test_fraction: images)
    run(["--load-from", ckpt, "--dataset-paths", native_paths, "--output", str(tmp_path / "u.npz")])
    d = np.load(str(tmp_path / "u.npz"), allow_pickle=False)
    assert set(d.files) == {"features", "paths", "arch", "checkpoint", "what"}
    assert d["paths"].tolist() == ["test/0", "test/1", "test/2"] and d["features"].shape == (3, 512)


def test_pictures_get_the_features_images_and_options(tiny, tmp_path, monkeypatch):
    """The calls into evaluation/pictures.py (a stand-in here), after the .npz; no .npz unless --output."""
    ckpt, _, tree_paths, tree, _, _ = tiny
    calls = {}

    def neighbours_picture(path, image, *args, **kw):
        calls["neighbours"] = (path, image(2), args, kw)

    def embedding_map(path, *args, **kw):
        calls["map"] = (path, args, kw)
        return "PCA"

    fake = types.ModuleType("evaluation.pictures")
    fake.neighbours_picture, fake.embedding_map = neighbours_picture, embedding_map
    monkeypatch.setitem(sys.modules, "evaluation.pictures", fake)
    monkeypatch.setattr(evaluation, "pictures", fake, raising=False)
    nn_png, map_png = str(tmp_path / "nn.png"), str(tmp_path / "map.png")
    base = ["--load-from", ckpt, "--dataset", "imagenet", "--dataset-paths", tree_paths, "--image-size", "8"]
    run(base + ["--neighbours", nn_png, "--map", map_png, "--k", "3", "--seed", "7"])
    assert not [f for f in os.listdir(os.path.dirname(ckpt)) if f.endswith(".npz")] and len(calls) == 2
    calls.clear()
    run(base + ["--neighbours", nn_png, "--map", map_png, "--k", "3", "--seed", "7", "--overwrite", "--output",
                str(tmp_path / "e.npz")])
    d = np.load(str(tmp_path / "e.npz"), allow_pickle=False)
    path, image, (features, labels, classes), kw = calls["neighbours"]
    assert path == nn_png and kw == {"k": 3, "seed": 7} and classes == ["cat", "dog"]
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(os.path.join(tree, "test/cat/0010.png"))))
    np.testing.assert_array_equal(features, d["features"])
    np.testing.assert_array_equal(labels, d["labels"])
    path, (features, labels, classes), kw = calls["map"]
    assert path == map_png and kw["seed"] == 7 and "h of pre.pth" in kw["title"]
    np.testing.assert_array_equal(features, d["features"])


# ------------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_export_loads_into_torchvision_and_computes_h(arch):
    torch.manual_seed(0)
    ours = randomised(build_backbone(arch, "imagenet"), 1)
    with torch.device("meta"):  # every tensor but fc comes from the state_dict (assign: no init to overwrite)
        twin = getattr(torchvision.models, arch)()
    result = twin.load_state_dict(torchvision_state_dict(ours), strict=False, assign=True)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    twin.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(x), ours(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stem,width,match", [("cifar", 1, "the cifar stem (a 3x3 stride-1 conv without max-pool)"),
                                              ("stl", 1, "the stl stem (a 3x3 stride-1 conv with max-pool)"),
                                              ("imagenet", 2, "resnet18 (2x) widens every layer")])
def test_export_refuses_what_torchvision_lacks(stem, width, match):
    with torch.device("meta"), pytest.raises(UserError) as e:
        torchvision_state_dict(build_backbone("resnet18", stem, width))
    assert match in str(e.value) and "no torchvision twin" in str(e.value) and "build_backbone(" in str(e.value)
    assert "\n" not in str(e.value)


def test_export_alone_from_a_plain_state_dict(tmp_path, capsys):
    """--export-backbone alone computes nothing else: no dataset needed, no .npz written; it is never replaced
    unasked, nor written over the checkpoint."""
    torch.manual_seed(0)
    backbone = randomised(build_backbone("resnet18", "imagenet"), 2)
    ckpt, out = str(tmp_path / "plain.pth"), str(tmp_path / "tv.pth")
    torch.save(backbone.state_dict(), ckpt)
    summary = run(["--load-from", ckpt, "--arch", "resnet18", "--stem", "imagenet", "--export-backbone", out])
    assert sorted(os.listdir(tmp_path)) == ["plain.pth", "tv.pth"] and summary["output"] is None
    state = torch.load(out, weights_only=True)
    assert state.keys() == backbone.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in backbone.state_dict().items())
    base = ["--load-from", ckpt, "--arch", "resnet18", "--stem", "imagenet"]
    refused(base + ["--export-backbone", out], f"{out} exists (--export-backbone): pass --overwrite", tmp_path, capsys)
    refused(base + ["--export-backbone", ckpt], f"--export-backbone {ckpt} is the same file as --load-from", tmp_path,
            capsys)


# ------------------------------------------------------------------------------------------------ refusals
def refused(argv: list[str], match: str, folder, capsys) -> None:
    before = snapshot(str(folder))
    code, lines = run_script(embed, argv + ["--num-workers", "0"], capsys)
    assert_refused(code, lines, match, before, str(folder))
    assert set(snapshot(str(folder))) == set(before)  # nothing new either


def test_an_existing_output_is_kept(tiny, tmp_path, capsys):
    ckpt, _, _, _, native_paths, _ = tiny
    out = tmp_path / "h.npz"
    out.write_bytes(b"the user's file")
    refused(["--load-from", ckpt, "--dataset-paths", native_paths, "--output", str(out)],
            f"{out} exists (--output): pass --overwrite", tmp_path, capsys)
    refused(["--load-from", ckpt, "--dataset-paths", native_paths, "--map", str(out)],
            f"{out} exists (--map): pass --overwrite", tmp_path, capsys)
    assert out.read_bytes() == b"the user's file"


def test_refusals(tiny, tmp_path, capsys):
    ckpt, _, _, _, native_paths, _ = tiny
    before = os.stat(ckpt)
    base = ["--load-from", ckpt, "--dataset-paths", native_paths]
    refused(base + ["--output", ckpt], "--output " + ckpt + " is the same file as --load-from", tmp_path, capsys)
    refused(base + ["--export-backbone", str(tmp_path / "tv.pth")], "the cifar stem", tmp_path, capsys)
    refused(["--load-from", str(tmp_path / "none.pth"), "--output", str(tmp_path / "h.npz")],
            "checkpoint " + str(tmp_path / "none.pth") + " not found", tmp_path, capsys)
    refused(base + ["--k", "3", "--output", str(tmp_path / "h.npz")], "--k goes with --neighbours", tmp_path, capsys)
    refused(base + ["--seed", "1"], "--seed goes with --neighbours or --map", tmp_path, capsys)
    refused(["--load-from", ckpt, "--split", "train", "--export-backbone", str(tmp_path / "tv.pth")],
            "--split: say which features", tmp_path, capsys)
    s = os.stat(ckpt)
    assert (s.st_ino, s.st_size, s.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def test_projection_needs_a_simclr_checkpoint(tmp_path, capsys):
    plain = str(tmp_path / "plain.pth")
    torch.save(build_backbone("resnet18", "cifar").state_dict(), plain)
    refused(["--load-from", plain, "--arch", "resnet18", "--stem", "cifar", "--dataset", "cifar10", "--projection",
             "--output", str(tmp_path / "z.npz")], "plain state_dict, without the run's args and projection head",
            tmp_path, capsys)
