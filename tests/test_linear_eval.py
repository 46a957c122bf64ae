"""Linear evaluation scripts and the kNN monitor on a tiny pretraining checkpoint."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

import finetune
import gradient_linear_clf
import lbfgs_linear_clf
import utils.precision
from data.datasets import ArrayImages, dataset_info, native_size
from data.sampler import EpochSampler
from evaluation.config import (FinetuneConfig, LBFGSConfig, SGDConfig, resolve_finetune, resolve_lbfgs,
                               resolve_sgd, with_dataset, with_linear_recipe, with_subset)
from evaluation.features import weights_digest
from evaluation.harness import Target, default_output, eval_precision, seeded_train_loader
from evaluation.knn import knn_loo_accuracy, knn_predict
from evaluation.load import backbone_state, evaluation_target, load_backbone, recipe_default
from models.resnet import resnet18
from tests.tiny_data import tiny_checkpoint, write_image_folder, write_paths
import training.recipe
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.options import defaults_of
from utils.precision import resolve_precision


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return tiny_checkpoint(str(tmp_path_factory.mktemp("lin")), 10, 10, "--proj-dim", "8", "--image-size", "8")


def test_knn_matches_plain_loop():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(40, 6, generator=g), torch.randn(15, 6, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    k, t = 7, 0.1
    expected = []
    for q in test:
        sims = [float(torch.dot(q / q.norm(), x / x.norm())) for x in train]
        top = sorted(range(40), key=lambda i: -sims[i])[:k]
        votes = [0.0] * 4
        for i in top:
            votes[int(labels[i])] += torch.exp(torch.tensor(sims[i] / t)).item()
        expected.append(max(range(4), key=lambda c: votes[c]))
    assert knn_predict(train, labels, test, 4, k=k, temperature=t, chunk_size=4).tolist() == expected


def test_leave_one_out_knn_matches_plain_loop():
    """Each sample voted by its k most similar others (never itself), weighted by exp(cos / t); chunked."""
    g = torch.Generator().manual_seed(1)
    x, labels = torch.randn(30, 5, generator=g), torch.randint(0, 3, (30,), generator=g)
    x[7] = x[3] * 2  # a duplicate: its own copy must not decide its vote for itself
    k, t, right = 5, 0.1, 0
    for j in range(30):
        sims = {i: float(torch.dot(x[j] / x[j].norm(), x[i] / x[i].norm())) for i in range(30) if i != j}
        votes = [0.0] * 3
        for i in sorted(sims, key=lambda i: -sims[i])[:k]:
            votes[int(labels[i])] += math.exp(sims[i] / t)
        right += max(range(3), key=lambda c: votes[c]) == int(labels[j])
    assert knn_loo_accuracy(x, labels, k=k, temperature=t, chunk_size=7) == pytest.approx(100 * right / 30)


def test_lbfgs_script_end_to_end(pretrained, tmp_path, capsys):
    ckpt, paths = pretrained
    out = str(tmp_path / "r.json")
    summary = lbfgs_linear_clf.main(lbfgs_linear_clf.get_args_parser().parse_args(
        ["--load-from", ckpt, "--dataset-paths", paths, "--l2-num", "5", "--num-workers", "0", "--val-fraction",
         "0.2", "--output", out, "--cache-features"]))
    assert "lbfgs: cpu, precision fp32 (auto, frozen features: bf16" in capsys.readouterr().out
    saved = json.load(open(out))
    assert saved["test_acc"] == summary["test_acc"] and len(saved["val_acc"]) == 5
    assert saved["precision"] == "fp32" and saved["git_commit"] == summary["git_commit"] != ""
    assert saved["best_l2"] in saved["l2_grid"] and saved["num_train"] == 30 and saved["feature_dim"] == 512
    # the cached features give the same result; the earlier result is replaced only with --overwrite
    again = lbfgs_linear_clf.main(lbfgs_linear_clf.get_args_parser().parse_args(
        ["--load-from", ckpt, "--dataset-paths", paths, "--l2-num", "5", "--num-workers", "0", "--val-fraction",
         "0.2", "--output", out, "--cache-features", "--overwrite"]))
    assert again["test_acc"] == summary["test_acc"] and again["val_acc"] == summary["val_acc"]
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def lbfgs(ckpt: str, paths: str, out: str) -> dict:
    return lbfgs_linear_clf.main(lbfgs_linear_clf.get_args_parser().parse_args(
        ["--load-from", ckpt, "--dataset-paths", paths, "--l2-num", "2", "--max-iter", "20", "--num-workers", "0",
         "--val-fraction", "0.2", "--output", out, "--overwrite", "--cache-features"]))


def test_feature_cache_is_keyed_by_the_data_and_survives_a_truncated_file(pretrained, tmp_path, capsys):
    """Other images under the same dataset name are not served the old features; a truncated cache is a
    warning and is recomputed, to the same result."""
    ckpt = str(tmp_path / "c.pth")
    shutil.copy(pretrained[0], ckpt)  # the cache goes beside the checkpoint: keep the shared one's folder clean
    write_image_folder(str(tmp_path / "other"), classes=("a", "b", "c"), per_class=10, size=8, seed=7)
    paths = {"first": pretrained[1], "other": write_paths(str(tmp_path / "other.json"), {"cifar10": "other"})}
    out = str(tmp_path / "r.json")
    first = lbfgs(ckpt, paths["first"], out)
    [cache] = [os.path.join(tmp_path, f) for f in os.listdir(tmp_path) if ".features-" in f]
    features = torch.load(cache, weights_only=True)["x_train"]
    capsys.readouterr()
    other = lbfgs(ckpt, paths["other"], out)  # same dataset name and checkpoint, other pixels
    assert "holds features of other weights, data or settings" in capsys.readouterr().out
    assert not torch.equal(torch.load(cache, weights_only=True)["x_train"], features)
    assert lbfgs(ckpt, paths["other"], out) == other and "features from" in capsys.readouterr().out
    with open(cache, "r+b") as f:  # a save killed half-way (before atomic writes), a disk error
        f.truncate(os.path.getsize(cache) // 2)
    assert lbfgs(ckpt, paths["other"], out) == other
    err = capsys.readouterr().err
    assert "warning: cannot read the feature cache" in err and "error" not in err
    assert lbfgs(ckpt, paths["first"], out) == first  # and back: the first data's features again


def test_weights_digest_follows_every_tensor():
    torch.manual_seed(0)
    a = resnet18(stem="cifar")
    b = resnet18(stem="cifar")
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    b.layer4[1].bn2.running_var[0] += 1e-6  # a buffer, one value
    assert weights_digest(a) != weights_digest(b)


def test_gradient_script_keeps_backbone_frozen(pretrained, tmp_path):
    ckpt, paths = pretrained
    result = gradient_linear_clf.main(gradient_linear_clf.get_args_parser().parse_args(
        ["--load-from", ckpt, "--dataset-paths", paths, "--batch-size", "10", "--num-epochs", "2", "--nesterov",
         "--num-workers", "0", "--output", str(tmp_path / "g.json")]))
    original = backbone_state(load_checkpoint(ckpt))
    assert result["backbone_state"].keys() == original.keys()
    assert all(torch.equal(result["backbone_state"][k], original[k]) for k in original)  # BN stats included
    assert 0 <= result["top1"] <= result["top5"] <= 100
    assert result["classifier"].weight.shape == (3, 512)
    saved = json.load(open(tmp_path / "g.json"))
    assert saved["top1"] == result["top1"] and saved["git_commit"] and saved["precision"] == "fp32"
    # the data order and the augmentations are seeded: the same run gives the same classifier, bit for bit
    again = gradient_linear_clf.main(gradient_linear_clf.get_args_parser().parse_args(
        ["--load-from", ckpt, "--dataset-paths", paths, "--batch-size", "10", "--num-epochs", "2", "--nesterov",
         "--num-workers", "0", "--output", str(tmp_path / "g2.json")]))
    assert torch.equal(again["classifier"].weight, result["classifier"].weight) and again["top1"] == result["top1"]


def test_gradient_script_stops_on_a_diverged_loss(pretrained, tmp_path):
    ckpt, paths = pretrained
    args = gradient_linear_clf.get_args_parser().parse_args(
        ["--load-from", ckpt, "--dataset-paths", paths, "--batch-size", "10", "--num-epochs", "2",
         "--num-workers", "0", "--output", str(tmp_path / "g.json")])
    args.base_lr = float("inf")  # refused at parsing (tests/test_bad_input_eval.py): set here to make the loss inf
    with pytest.raises(UserError, match="lower --base-lr"):
        gradient_linear_clf.main(args)
    assert not (tmp_path / "g.json").exists()


def test_loading_reports_missing_and_unexpected_keys(pretrained, tmp_path):
    ckpt, _ = pretrained
    state = load_checkpoint(ckpt)
    backbone, saved = load_backbone(ckpt)
    assert saved["arch"] == "resnet18" and backbone.stem == "cifar"
    plain = str(tmp_path / "plain.pth")
    torch.save(backbone_state(state), plain)
    with pytest.raises(UserError, match="--arch and --stem"):
        load_backbone(plain)
    assert load_backbone(plain, "resnet18", "cifar")[0].conv1.weight.shape == (64, 3, 3, 3)
    with pytest.raises(UserError, match="missing keys"):
        load_backbone(plain, "resnet34", "cifar")
    broken = backbone_state(state)
    del broken["layer1.0.conv1.weight"]
    torch.save(broken, plain)
    with pytest.raises(UserError, match="layer1.0.conv1.weight"):
        load_backbone(plain, "resnet18", "cifar")
    full = resnet18(stem="cifar").state_dict()
    full["fc.weight"] = torch.zeros(10, 512)
    torch.save(full, plain)
    with pytest.raises(UserError, match="unexpected keys \\['fc.weight'\\]"):
        load_backbone(plain, "resnet18", "cifar")


def test_random_init_baseline_differs(pretrained, tmp_path):
    ckpt, paths = pretrained
    args = ["--load-from", ckpt, "--dataset-paths", paths, "--l2-num", "3", "--num-workers", "0",
            "--val-fraction", "0.2"]
    rnd = lbfgs_linear_clf.main(lbfgs_linear_clf.get_args_parser().parse_args(args + ["--random-init"]))
    assert rnd["random_init"] and os.path.isfile(ckpt.replace(".pth", ".lbfgs-cifar10-random.json"))


def test_a_dataset_without_a_recipe_needs_the_option(monkeypatch):
    monkeypatch.delitem(training.recipe.RECIPES, "stl10")  # no other dataset's size or stem is taken instead
    with pytest.raises(UserError, match="no default image size for dataset 'stl10': pass --image-size"):
        evaluation_target("x.pth", {}, "stl10", None)
    assert evaluation_target("x.pth", {}, "stl10", 64)[2] == 64
    with pytest.raises(UserError, match="pass --stem"):
        recipe_default("stl10", "stem", "--stem")
    assert recipe_default("cifar10", "stem", "--stem") == "cifar"


def test_gradient_defaults_follow_the_dataset_and_use_nesterov():
    """Nesterov on by default (the official optimizer); batch and epochs from training/recipe.LINEAR_EVAL:
    the paper's B.6 on ImageNet, batch 512 and 100 epochs on the small datasets; explicit options win."""
    def resolve(argv, dataset):
        cfg = resolve_sgd(vars(gradient_linear_clf.get_args_parser().parse_args(["--load-from", "x.pth", *argv])))
        return with_linear_recipe(with_dataset(cfg, dataset))
    for dataset, expected in (("cifar10", (512, 100)), ("stl10", (512, 100)), ("imagenette", (512, 100)),
                              ("imagenet", (4096, 90))):
        cfg = resolve([], dataset)
        assert (cfg.batch_size, cfg.num_epochs, cfg.nesterov) == (*expected, True)
        recipe = f"from the linear-evaluation recipe of {dataset}"
        assert cfg.sources["batch_size"] == cfg.sources["num_epochs"] == recipe
        assert cfg.sources["dataset"] == "from the checkpoint"
    cfg = resolve(["--batch-size", "64", "--no-nesterov", "--dataset", "imagenet"], "imagenet")
    assert (cfg.batch_size, cfg.num_epochs, cfg.nesterov) == (64, 90, False)
    assert cfg.sources["batch_size"] == cfg.sources["dataset"] == cfg.sources["nesterov"] == "given"
    filled = cfg.origin(("dataset", "batch_size", "num_epochs"))
    assert filled == "from the linear-evaluation recipe of imagenet: num_epochs=90"
    with pytest.raises(UserError, match="no linear-evaluation recipe in training/recipe.py: pass --batch-size, "
                                        "--num-epochs"):
        resolve([], "mystery")


def test_eval_defaults_live_in_one_place():
    """The three evaluation parsers have no defaults of their own (evaluation/config.py's fill what was not
    given), and every '(default: X)' of their help that names a value is the configuration's."""
    import re
    for script, kind, resolve in ((lbfgs_linear_clf, LBFGSConfig, resolve_lbfgs),
                                  (gradient_linear_clf, SGDConfig, resolve_sgd),
                                  (finetune, FinetuneConfig, resolve_finetune)):
        parser, defaults = script.get_args_parser(), defaults_of(kind)
        assert vars(parser.parse_args(["--load-from", "x.pth"])) == {"load_from": "x.pth"}, script
        assert {a.dest for a in parser._actions if a.dest != "help"} == set(defaults), script
        for action in parser._actions:
            said = re.search(r"\(default: ([-\w.]+)\)", action.help or "")
            value = defaults.get(action.dest)
            if said and value is not None:
                if isinstance(value, bool):
                    assert said.group(1) == ("on" if value else "off"), (script, action.dest)
                else:
                    assert type(value)(said.group(1)) == value, (script, action.dest)
        cfg = resolve({"load_from": "x.pth", "seed": 3})
        assert cfg.sources == {"load_from": "given", "seed": "given"} or kind is FinetuneConfig
        assert cfg.seed == 3 and cfg.num_workers == 2 and cfg.precision == "auto"
    cfg = resolve_finetune({"lr_scaling": "linear"})
    assert cfg.base_lr == training.recipe.FINETUNE_BASE_LR["linear"] == 0.05
    assert cfg.sources["base_lr"] == "from training/recipe.FINETUNE_BASE_LR of --lr-scaling linear"
    assert resolve_finetune({}).base_lr == 0.005 and resolve_finetune({"base_lr": 0.1}).sources["base_lr"] == "given"
    cfg = with_subset(resolve_finetune({}), 0.01, 5000)
    assert (cfg.num_epochs, cfg.batch_size) == (60, 1024)
    cfg = with_subset(resolve_finetune({}), 0.1, 40)
    assert (cfg.num_epochs, cfg.batch_size) == (30, 40) and cfg.sources["batch_size"] == "from the 40 labelled " \
        "training images" and cfg.sources["num_epochs"] == "from the label fraction 0.1"
    cfg = with_subset(resolve_finetune({"num_epochs": 3, "batch_size": 8}), 0.01, 40)
    assert (cfg.num_epochs, cfg.batch_size, cfg.sources["num_epochs"], cfg.sources["batch_size"]) == (3, 8, "given",
                                                                                                        "given")
    with pytest.raises(UserError, match="--l2-min 10 is above --l2-max 1"):
        resolve_lbfgs({"l2_min": 10.0, "l2_max": 1.0})
    with pytest.raises(TypeError, match="unknown options"):
        resolve_sgd({"label_fraction": 0.1})


def test_gradient_script_random_init_is_the_lbfgs_baseline_network(pretrained, tmp_path):
    """--random-init trains the probe on the same seeded random network as lbfgs_linear_clf.py's baseline, which
    is not the checkpoint's backbone, and writes its own JSON."""
    ckpt, paths = pretrained
    result = gradient_linear_clf.main(gradient_linear_clf.get_args_parser().parse_args(
        ["--load-from", ckpt, "--dataset-paths", paths, "--batch-size", "10", "--num-epochs", "1",
         "--num-workers", "0", "--random-init", "--seed", "3"]))
    assert result["random_init"] and os.path.isfile(ckpt.replace(".pth", ".sgd-cifar10-random.json"))
    torch.manual_seed(3)
    expected = resnet18(stem="cifar").state_dict()
    assert all(torch.equal(result["backbone_state"][k], expected[k]) for k in expected)
    original = backbone_state(load_checkpoint(ckpt))
    assert not torch.equal(result["backbone_state"]["conv1.weight"], original["conv1.weight"])


# ------------------------------------------------------------------------------------------- the shared harness
def test_auto_precision_is_fp32_for_frozen_features_and_as_simclr_for_finetuning(monkeypatch):
    """One rule (evaluation/harness.eval_precision), every script at --precision auto by default: where bf16 is
    fast, L-BFGS and SGD linear evaluation stay in fp32 and fine-tuning takes bf16 as simclr.py."""
    monkeypatch.setattr(utils.precision, "fast_bf16", lambda device: (True, "CPU with AMX"))
    cpu = torch.device("cpu")
    for task in ("lbfgs", "sgd"):
        p = eval_precision("auto", cpu, task)
        assert (p.name, p.channels_last) == ("fp32", False) and "0.6 points" in p.reason
        assert eval_precision("bf16", cpu, task) == resolve_precision("bf16", cpu)
    assert eval_precision("auto", cpu, "finetune") == resolve_precision("auto", cpu)
    assert eval_precision("auto", cpu, "finetune").name == "bf16"
    assert eval_precision("fp32", cpu, "finetune") == resolve_precision("fp32", cpu)
    for script in (lbfgs_linear_clf, gradient_linear_clf, finetune):
        assert "precision" not in vars(script.get_args_parser().parse_args(["--load-from", "x.pth"]))
    for resolve in (resolve_lbfgs, resolve_sgd, resolve_finetune):  # the configuration's default
        assert resolve({"load_from": "x.pth"}).precision == "auto"


def test_default_output_names():
    assert default_output("runs/a.pth", "lbfgs", "cifar10") == "runs/a.lbfgs-cifar10.json"
    assert default_output("runs/a.pth", "sgd", "stl10", "random") == "runs/a.sgd-stl10-random.json"
    assert default_output("a.pth", "finetune", "cifar10", "10pct", "") == "a.finetune-cifar10-10pct.json"
    assert default_output(None, "finetune", "cifar10", "1pct", "scratch", scratch_name="resnet50-2x") == \
        os.path.join("checkpoint", "scratch-resnet50-2x.finetune-cifar10-1pct-scratch.json")


def test_training_batches_are_seeded_and_new_every_epoch():
    """The order of epoch e is EpochSampler's (seed, e) permutation, the crops are seeded per (seed, e, image):
    the same loader twice gives the same batches, another epoch another order."""
    labels = np.arange(12)
    images = ArrayImages(np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), labels,
                         [str(c) for c in range(12)])
    assert native_size(images) == 8 and native_size(object()) is None
    target = Target(None, {}, "resnet18", "cifar10", dataset_info("cifar10"), 8)

    def epoch(e: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = seeded_train_loader(images, target, 5, 3, 0, torch.device("cpu"))
        loader.sampler.set_epoch(e)
        return list(loader)

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert len(first) == 2  # full batches only
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert torch.cat([y for _, y in first]).tolist() == EpochSampler(12, seed=3).order(0)[:10]
    assert torch.cat([y for _, y in second]).tolist() == EpochSampler(12, seed=3).order(1)[:10]
    assert [y.tolist() for _, y in first] != [y.tolist() for _, y in second]
