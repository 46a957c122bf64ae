"""Label subsets and fine-tuning (finetune.py) on tiny data; the ResNet-50 (2x)/(4x) parameter counts."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import evaluation.supervised
import finetune
from data.subsets import balanced_subset, read_subset, subset_record, write_subset
from evaluation.config import resolve_finetune
from evaluation.harness import finetune_network
from evaluation.load import backbone_state, state_equal
from models.finetune import FineTuneNet, KeptHead
from models.resnet import resnet18, resnet50
from tests.tiny_data import tiny_checkpoint
from utils.checkpoint import load_checkpoint
from utils.errors import UserError

STEM_AND_BLOCKS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 1-epoch resnet18 checkpoint with SimCLRv2's 3-layer head, on 3 classes x 20 images of 8x8."""
    return tiny_checkpoint(str(tmp_path_factory.mktemp("ft")), 20, 20, "--proj-dim", "8", "--proj-layers", "3",
                           "--proj-hidden-dim", "16", "--image-size", "8")


def run(ckpt, paths, tmp_path, *extra, name="r.json"):
    args = (["--load-from", ckpt] if ckpt else []) + [
        "--dataset-paths", paths, "--num-workers", "0", "--precision", "fp32", "--label-fraction", "0.5",
        "--num-epochs", "2", "--output", str(tmp_path / name), *extra]
    return finetune.main(finetune.get_args_parser().parse_args(args))


# -------------------------------------------------------------------------------------------------- subsets
def test_subset_is_balanced_and_seeded():
    labels = np.array([0] * 30 + [1] * 20 + [2] * 50 + [-1] * 7)  # unbalanced, with unlabelled images
    a = balanced_subset(labels, 0.1, seed=0)
    assert np.bincount(labels[a]).tolist() == [3, 3, 3]  # round(0.1 * 100 / 3) per class
    assert a.tolist() == sorted(set(a.tolist())) and (labels[a] >= 0).all()
    assert np.array_equal(a, balanced_subset(labels, 0.1, seed=0))
    assert not np.array_equal(a, balanced_subset(labels, 0.1, seed=1))
    assert np.bincount(labels[balanced_subset(labels, 0.001, seed=0)]).tolist() == [1, 1, 1]  # at least one
    assert np.bincount(labels[balanced_subset(labels, 0.9, seed=0)]).tolist() == [20, 20, 20]  # smallest class
    assert len(balanced_subset(labels, 1.0, seed=0)) == 100  # every labelled image
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UserError, match="--label-fraction must be in"):
            balanced_subset(labels, bad, seed=0)


def test_subset_file_round_trip_and_refusals(tmp_path):
    labels = np.repeat(np.arange(4), 25)
    idx = balanced_subset(labels, 0.1, seed=3)
    path = str(tmp_path / "s.json")
    record = subset_record("cifar10", labels, 0.1, 3, idx)
    write_subset(path, record)
    assert open(path).read() == json.dumps(record)  # the format of earlier versions, byte for byte
    saved = json.load(open(path))
    assert saved["dataset"] == "cifar10" and saved["fraction"] == 0.1 and saved["seed"] == 3
    assert saved["indices"] == idx.tolist() and saved["per_class"] == 2
    assert np.array_equal(read_subset(path, "cifar10", labels)["indices"], idx)
    with pytest.raises(UserError, match="not of 'cifar100'"):
        read_subset(path, "cifar100", labels)
    with pytest.raises(UserError, match="with 99"):
        read_subset(path, "cifar10", labels[:99])
    with pytest.raises(UserError, match="do not match"):
        read_subset(path, "cifar10", labels[::-1].copy())
    with pytest.raises(UserError, match="not found"):
        read_subset(str(tmp_path / "none.json"), "cifar10", labels)


# -------------------------------------------------------------------------------------------------- model
def test_head_layers_kept_and_classifier_zero(pretrained):
    ckpt, paths = pretrained
    model_state = load_checkpoint(ckpt)["model"]
    def parse(argv):
        return resolve_finetune(vars(finetune.get_args_parser().parse_args(argv)))
    backbone, head, target = finetune_network(parse(["--load-from", ckpt, "--from-head-layer", "1"]))
    assert target.saved["proj_layers"] == 3 and len(head.layers) == 1
    kept = head.state_dict()
    expected = {k[len("head."):]: v for k, v in model_state.items() if k.startswith("head.layers.0.")}
    assert kept.keys() == expected.keys() and all(torch.equal(kept[k], expected[k]) for k in kept)
    net = FineTuneNet(backbone, head, num_classes=3)
    assert net.classifier.weight.shape == (3, 16)  # the hidden layer's width
    assert not net.classifier.weight.any() and not net.classifier.bias.any()
    assert net(torch.randn(4, 3, 8, 8)).abs().max() == 0  # zero logits at the start
    _, head0, _ = finetune_network(parse(["--load-from", ckpt]))
    assert len(head0.layers) == 0 and FineTuneNet(backbone, head0, 3).classifier.in_features == 512
    with pytest.raises(UserError, match="3-layer projection head"):
        finetune_network(parse(["--load-from", ckpt, "--from-head-layer", "4"]))
    assert backbone.width_multiplier == 1  # the checkpoint's
    wide, _, _ = finetune_network(parse(["--from-scratch", "--arch", "resnet18", "--dataset", "cifar10",
                                                "--width-multiplier", "2"]))
    assert wide.width_multiplier == 2 and wide.num_features == 1024 and wide.conv1.weight.shape == (128, 3, 3, 3)


def test_resnet50_width_multiplier_parameter_counts():
    """The paper lists ResNet-50 (2x) at 94M and (4x) at 375M parameters: the encoder without fc."""
    with torch.device("meta"):  # shapes only: no memory, no init time
        counts = {w: sum(p.numel() for p in resnet50(stem="imagenet", width_multiplier=w).parameters())
                  for w in (1, 2, 4)}
    assert counts == {1: 23_508_032, 2: 93_907_072, 4: 375_378_176}
    assert round(counts[2] / 1e6) == 94 and round(counts[4] / 1e6) == 375


# -------------------------------------------------------------------------------------------------- training
def test_finetune_trains_everything_and_scores_test_once(pretrained, tmp_path, monkeypatch):
    ckpt, paths = pretrained
    calls = []
    evaluate = evaluation.supervised.evaluate
    spy = lambda *a, **k: calls.append(k.get("desc")) or evaluate(*a, **k)  # noqa: E731
    for module in (evaluation.supervised, finetune):  # validation in the shared loop, the test in the script
        monkeypatch.setattr(module, "evaluate", spy)
    # 3 epochs of 1 step, validated after epochs 2 and 3: the kept weights have had >= 2 steps (the first step
    # moves only the classifier: with zero weights it sends no gradient back to the encoder)
    result = run(ckpt, paths, tmp_path, "--from-head-layer", "1", "--num-epochs", "3", "--val-fraction", "0.1",
                 "--val-freq", "2")
    assert calls == ["validation", "validation", "test"]
    original = backbone_state(load_checkpoint(ckpt))
    tuned = {k[len("backbone."):]: v for k, v in result["model"].state_dict().items() if k.startswith("backbone.")}
    assert tuned.keys() == original.keys()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        assert not torch.equal(tuned[key], original[key]), key
    saved = json.load(open(result["output"]))
    assert saved["num_labelled"] == 30 and saved["num_val"] == 3 and saved["num_train"] == 27
    assert saved["batch_size"] == 27 and saved["epochs"] == 3 and saved["reported_epoch"] in (2, 3)
    assert saved["reported_by"] == "best validation top-1" and saved["reported_val_top1"] is not None
    assert 0 <= saved["top1"] <= saved["top5"] <= 100 and len(saved["history"]) == 3
    # the subset written beside the result gives the same images when passed back
    subset = json.load(open(saved["subset_file"]))
    assert saved["subset_file"].endswith("r.subset.json") and len(subset["indices"]) == 30
    again = run(ckpt, paths, tmp_path, "--subset-file", saved["subset_file"], "--num-epochs", "1", name="again.json")
    assert again["subset_file"] == saved["subset_file"] and again["num_labelled"] == 30


def test_default_trains_on_whole_subset_and_reports_last_epoch(pretrained, tmp_path, monkeypatch):
    """The paper's and official protocol: no validation split, fixed epochs, the last epoch's weights."""
    ckpt, paths = pretrained
    states, evaluations = [], []
    train_one_epoch, evaluate = evaluation.supervised.train_one_epoch, evaluation.supervised.evaluate

    def record(model, *a, **k):
        out = train_one_epoch(model, *a, **k)
        states.append({key: v.clone() for key, v in model.state_dict().items()})
        return out

    monkeypatch.setattr(evaluation.supervised, "train_one_epoch", record)
    for module in (evaluation.supervised, finetune):
        monkeypatch.setattr(module, "evaluate", lambda *a, **k: evaluations.append(k.get("desc")) or evaluate(*a, **k))
    model = str(tmp_path / "m.pth")
    result = run(ckpt, paths, tmp_path, "--save-model", model)  # 2 epochs, every option at its default
    saved = json.load(open(result["output"]))
    written = load_checkpoint(model)  # weights_only
    assert written["summary"]["top1"] == saved["top1"] and state_equal(written["model"], result["model"].state_dict())
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f or ".probe" in f]
    assert saved["val_fraction"] == 0 and saved["num_val"] == 0
    assert saved["num_train"] == saved["num_labelled"] == saved["batch_size"] == 30
    assert saved["reported_epoch"] == 2 and saved["reported_by"] == "last epoch"
    assert saved["reported_val_top1"] is None and evaluations == ["test"]
    final = result["model"].state_dict()
    assert len(states) == 2 and all(torch.equal(final[k], states[-1][k]) for k in final)
    assert not all(torch.equal(final[k], states[0][k]) for k in final)  # epoch 2 moved the weights
    with pytest.raises(UserError, match="--val-freq goes with --val-fraction"):
        run(ckpt, paths, tmp_path, "--val-freq", "2")


@pytest.mark.parametrize("frozen_bn", ["train", "eval"])
def test_finetune_from_layer4_keeps_frozen_weights(pretrained, tmp_path, frozen_bn):
    """Frozen weights and BN affine never move; the frozen BN statistics follow the batches in train mode
    (the official code), stay as loaded in eval mode."""
    ckpt, paths = pretrained
    result = run(ckpt, paths, tmp_path, "--finetune-from", "layer4", "--frozen-bn", frozen_bn, "--optimizer", "sgd",
                 "--lr-scaling", "none", "--base-lr", "0.1")  # 2 steps
    original = backbone_state(load_checkpoint(ckpt))
    tuned = {k[len("backbone."):]: v for k, v in result["model"].state_dict().items() if k.startswith("backbone.")}
    frozen = [k for k in original if k.startswith(STEM_AND_BLOCKS)]
    stats = [k for k in frozen if "running_" in k or "num_batches_tracked" in k]
    assert any("running_var" in k for k in stats) and any("num_batches_tracked" in k for k in stats)
    assert all(torch.equal(tuned[k], original[k]) for k in frozen if k not in stats)  # weights, BN affine
    moved = [k for k in stats if not torch.equal(tuned[k], original[k])]
    assert moved == (stats if frozen_bn == "train" else [])
    assert not torch.equal(tuned["layer4.0.conv1.weight"], original["layer4.0.conv1.weight"])
    assert not torch.equal(tuned["layer4.0.bn1.running_mean"], original["layer4.0.bn1.running_mean"])
    model = result["model"].train()
    assert model.backbone.layer3.training == (frozen_bn == "train") and model.backbone.layer4.training
    assert not any(p.requires_grad for p in model.backbone.layer3.parameters())
    assert json.load(open(result["output"]))["frozen_bn"] == frozen_bn


@pytest.mark.parametrize("frozen_bn", ["train", "eval"])
def test_frozen_stem_against_plain_batch_norm(frozen_bn):
    """One step with the stem and layer1 frozen: the stem's output is conv -> F.batch_norm (batch statistics
    in train mode, running ones in eval mode) -> relu, its running statistics move as F.batch_norm's in train
    mode only, and no frozen parameter gets a gradient or moves."""
    torch.manual_seed(0)
    backbone = resnet18(stem="cifar")
    for m in backbone.modules():  # statistics and affine unlike a batch's, so that the two modes differ
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.normal_(1, 0.2)
            m.bias.data.normal_(0, 0.2)
    net = FineTuneNet(backbone, KeptHead(torch.nn.ModuleList()), 3, "layer2", frozen_bn).train()
    torch.nn.init.normal_(net.classifier.weight)  # not zero: gradients reach the trained stages
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    b, seen = net.backbone, {}
    b.layer1.register_forward_pre_hook(lambda m, inputs: seen.update(stem=inputs[0]))
    mean, var = b.bn1.running_mean.clone(), b.bn1.running_var.clone()
    before, frozen_before = copy.deepcopy(net.state_dict()), net.frozen_state()
    assert any("running_mean" in k for k in frozen_before) == (frozen_bn == "eval")
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()

    train = frozen_bn == "train"
    with torch.no_grad():  # F.batch_norm updates ref_mean and ref_var in place when training
        ref_mean, ref_var = mean.clone(), var.clone()
        ref = torch.relu(torch.nn.functional.batch_norm(b.conv1(x), ref_mean, ref_var, b.bn1.weight, b.bn1.bias,
                                                        training=train, momentum=b.bn1.momentum, eps=b.bn1.eps))
    assert torch.allclose(seen["stem"], ref, rtol=0, atol=1e-6) and not seen["stem"].requires_grad
    assert torch.equal(b.bn1.running_mean, ref_mean) and torch.equal(b.bn1.running_var, ref_var)
    assert torch.equal(b.bn1.running_mean, mean) != train
    after = net.state_dict()
    for name, p in [*b.conv1.named_parameters("conv1"), *b.bn1.named_parameters("bn1"),
                    *b.layer1.named_parameters("layer1")]:
        assert p.grad is None and torch.equal(p, before[f"backbone.{name}"]), name
    assert state_equal(net.frozen_state(), frozen_before)  # what finetune.py checks after training
    assert not torch.equal(after["backbone.layer2.0.conv1.weight"], before["backbone.layer2.0.conv1.weight"])
    stats = [k for k in after if k.startswith("backbone.layer1.") and "running_" in k]
    assert [k for k in stats if not torch.equal(after[k], before[k])] == (stats if train else [])


def test_from_scratch_baseline_and_errors(pretrained, tmp_path):
    ckpt, paths = pretrained
    base = ["--arch", "resnet18", "--dataset", "cifar10", "--image-size", "8", "--num-epochs", "1"]
    result = run(None, paths, tmp_path, "--from-scratch", *base, "--val-fraction", "0", name="s.json")
    saved = json.load(open(result["output"]))
    assert saved["from_scratch"] and saved["checkpoint"] is None and saved["num_val"] == 0
    assert saved["reported_epoch"] == 1 and saved["reported_val_top1"] is None and saved["num_train"] == 30
    subset = open(result["subset_file"]).read()
    with pytest.raises(UserError, match="pass --overwrite"):  # the result and its subset are kept unasked
        run(None, paths, tmp_path, "--from-scratch", *base, "--val-fraction", "0", name="s.json")
    again = run(None, paths, tmp_path, "--from-scratch", *base, "--val-fraction", "0", "--overwrite", name="s.json")
    assert again["top1"] == saved["top1"] and open(result["subset_file"]).read() == subset  # the same draw
    with pytest.raises(UserError, match="--batch-size 31 is larger"):
        run(None, paths, tmp_path, "--from-scratch", *base, "--val-fraction", "0", "--batch-size", "31")
    with pytest.raises(UserError, match="needs --arch and --dataset"):
        run(None, paths, tmp_path, "--from-scratch")
    with pytest.raises(UserError, match="--load-from is required"):
        run(None, paths, tmp_path)
    other = str(tmp_path / "other.json")
    write_subset(other, subset_record("cifar100", np.zeros(60, dtype=np.int64), 0.5, 0, np.arange(30)))
    with pytest.raises(UserError, match="not of 'cifar10'"):
        run(ckpt, paths, tmp_path, "--subset-file", other)
    with pytest.raises(UserError, match="disagrees"):
        run(ckpt, paths, tmp_path, "--subset-file", result["subset_file"], "--label-fraction", "0.1")
    # the command line reports bad input in one line, exit code 2
    proc = subprocess.run([sys.executable, "finetune.py", "--load-from", ckpt, "--dataset-paths", paths,
                           "--label-fraction", "1.5"], cwd=os.path.dirname(os.path.dirname(__file__)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: argument --label-fraction: expected a number in (0, 1], got 1.5 (see finetune.py --help)"]
