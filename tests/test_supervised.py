"""The shared supervised loop (evaluation/supervised.py) against plain reference loops; the linear probe."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from evaluation.supervised import evaluate, fit, train_one_epoch
from models.probe import LinearProbe
from utils.errors import UserError
from utils.precision import resolve_precision

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)


def tiny_problem(n=24, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)
    model = nn.Linear(d, classes)
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, d, generator=g))
        model.bias.copy_(torch.randn(classes, generator=g))
    return x, y, model


def test_one_epoch_equals_a_plain_sgd_loop():
    x, y, model = tiny_problem()
    reference = nn.Linear(5, 3)
    reference.load_state_dict(model.state_dict())
    lr_at = lambda step: 0.5 / (1 + step)  # noqa: E731  a different lr at every step
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, nesterov=True)
    mean_loss, step = train_one_epoch(model, batches, optimizer, lr_at, 3, FP32, CPU)

    w, b = reference.weight.detach().clone(), reference.bias.detach().clone()  # SGD with Nesterov, by hand
    vw, vb, losses = torch.zeros_like(w), torch.zeros_like(b), []
    for k, (xb, yb) in enumerate(batches):
        w.requires_grad_(True), b.requires_grad_(True)
        loss = F.cross_entropy(xb @ w.T + b, yb)
        gw, gb = torch.autograd.grad(loss, (w, b))
        losses.append(loss.item())
        with torch.no_grad():
            vw, vb = 0.9 * vw + gw if k else gw, 0.9 * vb + gb if k else gb
            w, b = w - lr_at(3 + k) * (gw + 0.9 * vw), b - lr_at(3 + k) * (gb + 0.9 * vb)
    assert step == 6
    assert mean_loss == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert torch.allclose(model.weight, w, atol=1e-6) and torch.allclose(model.bias, b, atol=1e-6)


def test_a_diverged_epoch_stops_training():
    x, y, model = tiny_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=math.inf)
    with pytest.raises(UserError, match="lower --base-lr"):
        for _ in range(2):
            train_one_epoch(model, [(x, y)], optimizer, lambda step: math.inf, 0, FP32, CPU)


def test_evaluate_matches_plain_scores_and_restores_the_mode():
    x, y, model = tiny_problem(n=30, classes=7)
    model.train()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    top1, top5, loss = evaluate(model, loader, CPU, FP32)
    with torch.no_grad():
        logits = model(x)
    assert top1 == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    assert top5 == pytest.approx(100 * (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item())
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert model.training


def test_fit_keeps_the_best_validated_epoch():
    x, y, model = tiny_problem(n=40)
    train = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=8, shuffle=False)
    val = DataLoader(TensorDataset(x[32:], y[32:]), batch_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)  # large steps: validation moves from epoch to epoch
    best, history = fit(model, optimizer, lambda step: 2.0, train, 6, FP32, CPU, val, val_freq=2)
    assert [row["epoch"] for row in history if "val_top1" in row] == [2, 4, 6]
    validated = [row for row in history if "val_top1" in row]
    expected = max(validated, key=lambda row: (row["val_top1"], -row["val_loss"]))  # first of equals
    assert best["epoch"] == expected["epoch"] and best["val_top1"] == expected["val_top1"]
    top1, _, loss = evaluate(model, val, CPU, FP32)  # the loaded weights are that epoch's
    assert top1 == expected["val_top1"] and loss == pytest.approx(expected["val_loss"], rel=1e-6)
    _, last = fit(model, optimizer, lambda step: 2.0, train, 2, FP32, CPU)
    assert all("val_top1" not in row for row in last)


class TinyBackbone(nn.Module):
    num_features = 4

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def test_linear_probe_keeps_the_backbone_frozen_and_the_classifier_fp32():
    probe = LinearProbe(TinyBackbone(), 3).train()
    before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    assert not probe.backbone.training and probe.classifier.training
    assert not any(p.requires_grad for p in probe.backbone.parameters())
    with resolve_precision("bf16", CPU).autocast():
        logits = probe(torch.randn(6, 3, 8, 8))
    assert logits.dtype == torch.float32 and logits.shape == (6, 3)
    logits.sum().backward()
    assert probe.classifier.weight.grad is not None
    assert all(torch.equal(v, before[k]) for k, v in probe.backbone.state_dict().items())  # BN statistics too
