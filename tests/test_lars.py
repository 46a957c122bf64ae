"""LARS step by step against the official TF formula, written independently in NumPy."""
import numpy as np
import pytest
import torch

from optim.groups import param_groups
from optim.lars import LARS


def holder(params):
    """A module holding ``params``, for optim.groups.param_groups."""
    return torch.nn.ParameterList(params)


def reference_lars(ws, grads_per_step, lr, m, wd, eta):
    """NumPy version of the TF LARS update for a list of parameters over several steps."""
    ws = [w.astype(np.float64).copy() for w in ws]
    vs = [np.zeros_like(w) for w in ws]
    for grads in grads_per_step:
        for i, (w, g) in enumerate(zip(ws, grads)):
            g = g.astype(np.float64)
            if w.ndim > 1:
                g = g + wd * w
                wn, gn = np.linalg.norm(w), np.linalg.norm(g)
                trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
                g = trust * g
            vs[i] = m * vs[i] + lr * g
            ws[i] = w - vs[i]
    return ws


@pytest.mark.parametrize("wd", [0.0, 1e-4, 0.1])
def test_matches_formula_over_steps(wd):
    rng = np.random.default_rng(0)
    shapes = [(4, 3, 3, 3), (5, 7), (7,), (7,)]  # conv, linear, BN weight, bias
    ws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ws.append(np.zeros((3, 2), np.float32))  # zero weight: trust ratio 1
    grads = [[rng.standard_normal(w.shape).astype(np.float32) for w in ws] for _ in range(4)]
    params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in ws]
    opt = LARS(param_groups(holder(params), wd), lr=0.7, momentum=0.9, trust_coefficient=1e-3)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    expected = reference_lars(ws, grads, 0.7, 0.9, wd, 1e-3)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-5, atol=1e-7)


def test_one_dim_params_get_plain_momentum_sgd_without_decay():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = LARS(param_groups(holder([p]), 0.5), lr=0.1, momentum=0.9)
    p.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -2.1, 2.9]))
    p.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.step()  # v = 0.9 * 0.1 + 0.1 = 0.19
    torch.testing.assert_close(p.detach(), torch.tensor([0.71, -2.29, 2.71]))


def test_trust_ratio_makes_update_scale_free():
    w = torch.randn(8, 8)
    g = torch.randn(8, 8)
    steps = []
    for scale in (1.0, 1000.0):
        p = torch.nn.Parameter(w.clone())
        opt = LARS([p], lr=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=1e-3)
        p.grad = g * scale
        opt.step()
        steps.append((w - p.detach()).norm().item())
    # |update| = lr * eta * |w| whatever the gradient's scale
    assert steps[0] == pytest.approx(1e-3 * w.norm().item(), rel=1e-5)
    assert steps[1] == pytest.approx(steps[0], rel=1e-5)


def test_rejects_bad_hyperparameters():
    p = [torch.nn.Parameter(torch.ones(2, 2))]
    with pytest.raises(ValueError):
        LARS(p, lr=0.0)
    with pytest.raises(ValueError):
        LARS(p, lr=0.1, weight_decay=-1)


def test_group_without_adaptation_gets_plain_momentum():
    """As the official code's ``head_supervised``: plain momentum for the classifier, with its L2 term's gradient
    when it decays, LARS for the rest."""
    w, c = torch.nn.Parameter(torch.full((2, 3), 2.0)), torch.nn.Parameter(torch.zeros(4, 3))
    d = torch.nn.Parameter(torch.full((4, 3), 1.0))
    opt = LARS([{"params": [w]}, {"params": [c], "adapt": False, "weight_decay": 0.0},
                {"params": [d], "adapt": False}], lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=1e-3)
    w.grad, c.grad, d.grad = torch.ones(2, 3), torch.ones(4, 3), torch.ones(4, 3)
    for _ in range(2):
        opt.step()
    assert torch.allclose(c, torch.full((4, 3), -(0.5 + 0.5 * 1.9)))  # v1 = lr g, v2 = 0.9 v1 + lr g
    d1 = 1.0 - 0.5 * (1 + 0.1 * 1.0)  # v1 = lr (g + wd d0)
    d2 = d1 - (0.9 * 0.5 * 1.1 + 0.5 * (1 + 0.1 * d1))  # v2 = 0.9 v1 + lr (g + wd d1)
    assert torch.allclose(d, torch.full((4, 3), d2))
    # LARS: each step moves every weight by lr * eta * ||w|| / ||g|| * g = lr * eta * w (all entries equal)
    v1 = 0.5 * 1e-3 * 2.0
    v2 = 0.9 * v1 + 0.5 * 1e-3 * (2.0 - v1)
    assert torch.allclose(w, torch.full((2, 3), 2.0 - v1 - v2), rtol=0, atol=1e-6)


def loop_step(groups: list[dict], state: dict) -> None:
    """LARS as a plain loop over the parameters, the reference of the multi-tensor update."""
    from optim.lars import _trust
    for group in groups:
        lr, m, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["trust_coefficient"]
        for p in (p for p in group["params"] if p.grad is not None):
            g = p.grad
            g = g.add(p, alpha=wd) if wd else g
            if group["adapt"]:
                g = g * _trust(torch.linalg.vector_norm(p), torch.linalg.vector_norm(g), eta)
            v = state.setdefault(p, torch.zeros_like(p))
            v.mul_(m).add_(g, alpha=lr)
            p.data.sub_(v)


def test_foreach_update_equals_the_loop_on_a_network():
    """Multi-tensor update vs the per-parameter loop: two groups (one without adaptation), a parameter
    without a gradient, a zero weight, several steps with changing lr; equal bit for bit (on the CPU a foreach op
    loops over its tensors with the ops of the loop; spreading the trust ratios changes no product)."""
    from models.simclr import SimCLR

    torch.manual_seed(0)
    nets = [SimCLR("resnet18", "cifar", 16) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for net in nets:
        net.head.layers[0][0].weight.data.zero_()
    opt = LARS(param_groups(nets[0], 1e-4, unadapted=nets[0].head.layers[1]), lr=0.3)
    ref_groups = [{**g, "params": [dict(nets[1].named_parameters())[n] for n in names]}
                  for g, names in zip(opt.param_groups, name_groups(nets[0], opt))]
    ref_state = {}
    for step in range(3):
        grads = [torch.randn_like(p) for p in nets[0].parameters()]
        for net in nets:
            for k, (p, g) in enumerate(zip(net.parameters(), grads)):
                p.grad = None if k == 1 else g.clone()  # the first BN scale gets no gradient
        for group in opt.param_groups + ref_groups:
            group["lr"] = 0.3 / (step + 1)
        opt.step()
        with torch.no_grad():
            loop_step(ref_groups, ref_state)
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        assert torch.equal(a, b), name
    zeroed = nets[0].head.layers[0][0].weight
    assert not torch.equal(zeroed, torch.zeros_like(zeroed))  # moved by the plain step (trust ratio 1)


def _fast_route(lists: list[list[torch.Tensor]]) -> bool:
    """torch's ``can_use_fast_route`` (ATen/native/ForeachUtils.h) for a foreach op over these tensor lists: one
    dtype and device, dense tensors, and at each index the same sizes and the same strides (where a size is not 1).
    On a GPU it decides between one fused multi-tensor kernel and one kernel per tensor."""
    from torch._prims_common import is_non_overlapping_and_dense_or_false as dense

    first = lists[0][0]
    if any(t.dtype != first.dtype or t.device != first.device or not dense(t)
           for ts in lists for t in ts):
        return False
    return all(t.shape == ts[0].shape and all(n == 1 or a == b for n, a, b in zip(t.shape, t.stride(), ts[0].stride()))
               for ts in zip(*lists) for t in ts)


def _step_probe():
    """A dispatch mode recording the ops that launch kernels (views launch none), the host round trips on a GPU,
    and the foreach ops over two or more tensor lists that miss the fast route."""
    from torch.utils._python_dispatch import TorchDispatchMode

    round_trips = {"lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "nonzero", "masked_select"}

    class Probe(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.launched, self.round_trips, self.slow = [], [], []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if not func.is_view:
                self.launched.append(name)
            if name in round_trips:
                self.round_trips.append(name)
            lists = [a for a in [*args, *(kwargs or {}).values()]
                     if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
            if name.startswith("_foreach_") and len(lists) >= 2 and not _fast_route(lists):
                self.slow.append(name)
            return func(*args, **(kwargs or {}))

    return Probe()


def _mixed_params(copies: int) -> list[torch.nn.Parameter]:
    """``copies`` times a channels_last conv weight (as under bf16), a linear weight and a BN-like vector."""
    params = []
    for _ in range(copies):
        params += [torch.nn.Parameter(torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)),
                   torch.nn.Parameter(torch.randn(5, 7)), torch.nn.Parameter(torch.randn(7))]
    return params


def test_update_keeps_each_layout_and_equals_the_loop():
    """Channels_last and contiguous weights, weight decay on, three steps: bit for bit the per-parameter loop."""
    torch.manual_seed(0)
    params = _mixed_params(2)
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]  # clone keeps the layout
    opt = LARS(param_groups(holder(params), 0.1), lr=0.5, momentum=0.9)
    ref_groups, ref_state = param_groups(holder(ref), 0.1), {}
    for group in ref_groups:
        group.update(lr=0.5, momentum=0.9, trust_coefficient=1e-3)
    for _ in range(3):
        for p, r in zip(params, ref):
            p.grad = torch.randn_like(p)
            r.grad = p.grad.clone()
        opt.step()
        with torch.no_grad():
            loop_step(ref_groups, ref_state)
    for p, r in zip(params, ref):
        assert torch.equal(p, r) and p.stride() == r.stride()


def _probed_step(copies: int):
    """The second LARS step (the first makes the momentum buffers) on ``_mixed_params(copies)``, weight decay on:
    the probe of that step."""
    torch.manual_seed(0)
    params = _mixed_params(copies)
    opt = LARS(param_groups(holder(params), 0.1), lr=0.5, momentum=0.9)
    for p in params:
        p.grad = torch.randn_like(p)  # the layout of p, as autograd's
    opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    with _step_probe() as probe:
        opt.step()
    return probe


def test_every_foreach_op_takes_the_fast_route_with_no_host_round_trip():
    """Each foreach op over two or more lists pairs tensors alike in size and stride (a 0-dim trust ratio against a
    gradient does not: one kernel per parameter on a GPU), no op reads back or uploads data, and the ops of a step
    are the same for 2 and for 6 parameters of each kind: one launch per op whatever the number of parameters."""
    small, large = _probed_step(2), _probed_step(6)
    assert small.slow == [] and large.slow == []
    assert small.round_trips == [] and large.round_trips == []
    assert small.launched == large.launched
    assert {"_foreach_mul", "_foreach_mul_", "_foreach_add_", "_foreach_sub_"} <= set(small.launched)
    with _step_probe() as probe:  # the probe sees them
        torch._foreach_mul([torch.ones(2, 2)], [torch.ones(())])
        torch.ones(1).nonzero()
    assert probe.slow == ["_foreach_mul"] and probe.round_trips == ["nonzero"]


def name_groups(net, opt) -> list[list[str]]:
    names = {id(p): n for n, p in net.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in opt.param_groups]


def test_param_groups_split_by_shape_and_exclude_frozen_and_plain():
    """Weights decay and adapt; BN parameters and biases do neither; the ``plain`` module (the fine-tuning
    classifier) does not adapt, and its weights decay; frozen parameters are in no group."""
    from models.simclr import SimCLR

    net = SimCLR("resnet18", "cifar", 16)
    net.backbone.conv1.requires_grad_(False)
    groups = param_groups(net, 1e-4, unadapted=net.head.layers[1])
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    plain = ids(p for p in net.head.layers[1].parameters() if p.requires_grad)  # its last BN has no trained shift
    trained = [p for p in net.parameters() if p.requires_grad]
    assert [(g["weight_decay"], g["adapt"]) for g in groups] == [(1e-4, True), (0.0, False), (1e-4, False),
                                                                  (0.0, False)]
    assert ids(groups[0]["params"]) == {id(p) for p in trained if p.ndim > 1 and id(p) not in plain}
    assert ids(groups[1]["params"]) == {id(p) for p in trained if p.ndim <= 1 and id(p) not in plain}
    assert ids(groups[2]["params"]) | ids(groups[3]["params"]) == plain
    assert all(p.ndim > 1 for p in groups[2]["params"]) and all(p.ndim <= 1 for p in groups[3]["params"])
    assert id(net.backbone.conv1.weight) not in set().union(*(ids(g["params"]) for g in groups))


class _Tiny(torch.nn.Module):
    """A small SimCLR-shaped network whose parameter names carry the official exclusions ('bn', 'bias')."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def official_step(model: torch.nn.Module, x1, x2, t, lr, m, wd, eta, steps) -> dict:
    """``steps`` steps of the official code, written from its sources: the loss of ``objective.py``
    (mean over the N pairs of loss_a + loss_b) and the update of ``lars_optimizer.py``, weight decay and
    the trust ratio for every variable whose name holds neither 'bn' (batch_normalization) nor 'bias'."""
    params = dict(model.named_parameters())
    vs = {k: torch.zeros_like(p) for k, p in params.items()}
    for _ in range(steps):
        z = torch.nn.functional.normalize(model(torch.cat([x1, x2])), dim=1)
        a, b = z.chunk(2)
        n = a.shape[0]
        masked = torch.eye(n) * 1e9
        labels = torch.arange(n)
        loss_a = torch.nn.functional.cross_entropy(torch.cat([a @ b.T / t, a @ a.T / t - masked], 1), labels,
                                                   reduction="none")
        loss_b = torch.nn.functional.cross_entropy(torch.cat([b @ a.T / t, b @ b.T / t - masked], 1), labels,
                                                   reduction="none")
        grads = torch.autograd.grad((loss_a + loss_b).mean(), list(params.values()))
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads):
                trust = 1.0
                if "bn" not in name and "bias" not in name:
                    g = g + wd * p
                    w_norm, g_norm = p.norm(), g.norm()
                    trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
                vs[name] = m * vs[name] + lr * trust * g
                p -= vs[name]
    return {k: p.detach() for k, p in params.items()}


@pytest.mark.parametrize("steps", [1, 2])
def test_simclr_step_and_lars_equal_the_official_update(steps):
    """simclr.py's pieces (NTXentLoss at its default scale, optim.groups + LARS, training.loop.train_step) move every
    parameter as the official code does: at the paper's scale (half the gradient) the BN parameters and biases
    would move half as far and weight decay would weigh twice as much in the trust ratio."""
    from models.loss import NTXentLoss
    from optim.groups import build_optimizer
    from training.build import PlainEmbedding, Pretraining
    from training.loop import train_step
    from utils.precision import resolve_precision

    torch.manual_seed(0)
    ours, ref = _Tiny().double(), _Tiny().double()
    ref.load_state_dict(ours.state_dict())
    x1, x2 = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    lr, m, wd, eta, t = 0.5, 0.9, 1e-2, 1e-3, 0.5
    optimizer = build_optimizer(ours, "lars", lr, wd, m, eta)
    run = Pretraining(ours, ours, optimizer, NTXentLoss(t), PlainEmbedding(ours), None,
                      resolve_precision("fp32", torch.device("cpu")), "")
    for _ in range(steps):
        train_step(run, x1, x2, lr)
    expected = official_step(ref, x1, x2, t, lr, m, wd, eta, steps)
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-7, msg=name)  # loss in fp32
