"""training/ (the step and the epoch loop), the precision wrapper, the model wrapping and the save policy,
against plain references and against the behaviour of the torch code they guard against."""
import threading

import pytest
import torch
from torch import nn

from models.loss import NTXentLoss
from optim.groups import build_optimizer
from tests.dist_helpers import TinyNet, max_rel_err, spawn, tiny_batch
from training.build import PlainEmbedding, Pretraining
from training.loop import NonFiniteLoss, train_one_epoch
from utils.checkpoint import Saver
from utils.distributed import DistInfo, wrap_model
from utils.errors import UserError
import utils.precision
from utils.precision import PrecisionNet, Precision, resolve_precision

LOSS = NTXentLoss(0.5)
CPU = torch.device("cpu")


def batches(n_batches, pairs=8):
    return [tiny_batch(pairs, seed=b) for b in range(n_batches)]


def lr_at(step):
    return 0.1 / (1 + step)


def pretraining(net, optimizer, gather=None) -> Pretraining:
    """The step's parts around a tiny network, as training/build.py puts them together for simclr.py."""
    return Pretraining(net, net, optimizer, LOSS, PlainEmbedding(net), gather, resolve_precision("fp32", CPU), "")


class Rows:
    def __init__(self):
        self.rows = []

    def write(self, **row):
        self.rows.append(row)


class StopAt:
    """A stop request that turns true at the ``n``-th time it is asked."""

    def __init__(self, n):
        self.n, self.asked = n, 0

    @property
    def requested(self):
        self.asked += 1
        return self.asked == self.n


def test_epoch_equals_a_plain_loop():
    """train_one_epoch (device-side loss sum, reads every 2 steps) against the textbook loop: same losses,
    weights."""
    torch.manual_seed(0)
    ref, net = TinyNet(), TinyNet()
    net.load_state_dict(ref.state_dict())
    ref_opt = build_optimizer(ref, "lars", 0.1, 1e-4)
    losses = []
    for step, (x1, x2) in enumerate(batches(5)):
        for g in ref_opt.param_groups:
            g["lr"] = lr_at(step)
        ref_opt.zero_grad()
        z1, z2 = ref(torch.cat([x1, x2])).chunk(2)
        loss = LOSS(z1, z2)
        loss.backward()
        ref_opt.step()
        losses.append(loss.item())
    log = Rows()
    run = pretraining(net, build_optimizer(net, "lars", 0.1, 1e-4))
    step, mean, stopped = train_one_epoch(run, batches(5), lr_at, 0, 0, device=CPU, images_per_step=8, log=log,
                                          log_every=2, show=False)
    assert (step, stopped) == (5, False)
    assert mean == pytest.approx(sum(losses) / 5, rel=1e-6)
    assert [r["step"] for r in log.rows] == [2, 4, 5]  # every 2 steps, and the remainder
    assert [r["loss"] for r in log.rows] == pytest.approx([sum(losses[:2]) / 2, sum(losses[2:4]) / 2, losses[4]],
                                                          rel=1e-6)
    assert max_rel_err(dict(net.named_parameters()), dict(ref.named_parameters())) < 1e-6


def test_stop_is_asked_after_every_step_and_the_steps_since_the_last_read_are_logged():
    log, stop, net = Rows(), StopAt(4), TinyNet()
    run = pretraining(net, build_optimizer(net, "sgd", 0.1, 0.0))
    step, _, stopped = train_one_epoch(run, batches(7), lr_at, 0, 10, device=CPU, images_per_step=8, log=log,
                                       stop=stop, log_every=3, show=False)
    assert (step, stopped, stop.asked) == (14, True, 4)
    assert [r["step"] for r in log.rows] == [13, 14]


def test_non_finite_loss_raises():
    net = TinyNet()
    x1, x2 = tiny_batch(8)
    with pytest.raises(NonFiniteLoss, match="nan"):
        train_one_epoch(pretraining(net, build_optimizer(net, "sgd", 0.1, 0.0)), [(x1 * float("nan"), x2)], lr_at,
                        0, 0, device=CPU, images_per_step=8, show=False)


def _count_collectives(info, result_file):
    """A 2-process DDP epoch of 6 steps: the all_reduce calls made from Python (the flags; DDP's own
    gradient all-reduce runs in its C++ reducer, the gather's in autograd) and their tensors' devices."""
    calls = []
    real = torch.distributed.all_reduce

    def counting(tensor, *args, **kwargs):
        if tensor.numel() == 1:  # the flags; the gather's backward all-reduces (2N, d) gradients
            calls.append(tensor.device.type)
        return real(tensor, *args, **kwargs)

    torch.distributed.all_reduce = counting
    import utils.distributed as d
    torch.manual_seed(0)
    net, _ = wrap_model(TinyNet(), info)
    train_one_epoch(pretraining(net, build_optimizer(net, "sgd", 0.1, 0.0), d.gather_with_grad),
                    batches(6, pairs=4), lr_at, 0, 0, device=CPU, images_per_step=8, stop=StopAt(0), dist_info=info,
                    log_every=3, show=False)
    torch.save(calls, result_file)


def test_ddp_ranks_agree_on_a_stop_after_every_step_with_a_cpu_flag(tmp_path):
    """Two all-reduces of a one-element CPU tensor per step (under nccl too: a gloo group), without a GPU
    synchronisation: before it, whether every rank read its batch (training.loop.every_rank_read); after it,
    whether to stop, so that SIGTERM stops every rank at the next step."""
    out = str(tmp_path / "calls.pt")
    spawn(_count_collectives, 2, out)
    assert torch.load(out) == ["cpu"] * 12


class _DtypeProbe(nn.Module):
    def forward(self, x):
        return nn.functional.linear(x, torch.ones(4, x.shape[1]))


def test_autocast_inside_the_wrapper_survives_a_replica_thread():
    """DataParallel's parallel_apply runs each replica in a thread under ``autocast(enabled=True)`` only, which
    on CUDA means fp16; the wrapper must still compute in bf16. Simulated on CPU with an fp16 outer autocast."""
    seen = {}
    wrapped = PrecisionNet(_DtypeProbe(), Precision("bf16", False, "cpu"))
    wrapped.module.register_forward_hook(lambda m, i, out: seen.update(dtype=out.dtype))

    def replica():
        with torch.autocast("cpu", dtype=torch.float16):
            seen["out"] = wrapped(torch.randn(2, 3))

    t = threading.Thread(target=replica)
    t.start()
    t.join()
    assert seen["dtype"] == torch.bfloat16 and seen["out"].dtype == torch.float32


def test_auto_is_bf16_only_on_gpus_with_native_bf16(monkeypatch):
    cuda = torch.device("cuda")
    for capability, expected in (((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        p = resolve_precision("auto", cuda)
        assert (p.name, p.channels_last) == (expected, expected == "bf16")
    assert p.label == "bf16 (GPU of compute capability 9.0)"
    assert resolve_precision("bf16", torch.device("cpu"), channels_last=False).memory_format == torch.preserve_format


def test_auto_is_bf16_only_on_cpus_with_bf16_units(monkeypatch):
    """On the CPU bf16 is fast only with AMX (Intel Sapphire Rapids and later) or AVX512-BF16 (AMD Zen 4); without
    either it is emulated and slower."""
    cpu = torch.device("cpu")
    for amx, avx, expected, reason in ((True, True, "bf16", "CPU with AMX"), (False, True, "bf16", "CPU with "
                                       "AVX512-BF16"), (False, False, "fp32", "CPU without AMX or AVX512-BF16")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda a=amx: a, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda a=avx: a, raising=False)
        p = resolve_precision("auto", cpu)
        assert (p.name, p.channels_last, p.label) == (expected, expected == "bf16", f"{expected} ({reason})")
    assert resolve_precision("fp32", cpu).label == "fp32"  # an explicit choice needs no reason


def test_bf16_units_fall_back_to_cpuinfo_without_torch_probes(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(utils.precision, "open", lambda path: open(cpuinfo if path == "/proc/cpuinfo" else path),
                        raising=False)
    for flags, expected in (("fpu avx512f amx_bf16 amx_tile", "bf16"), ("fpu avx512f avx512_bf16", "bf16"),
                            ("fpu avx2", "fp32")):
        cpuinfo.write_text(f"flags\t\t: {flags}\n")
        assert resolve_precision("auto", torch.device("cpu")).name == expected


def test_compile_is_refused_under_data_parallel(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="torchrun"):
        wrap_model(TinyNet(), DistInfo(device=torch.device("cuda")), compiled=True)


def test_saver_by_time_costs_under_one_percent(monkeypatch):
    """Without --save-freq a checkpoint is written once 100x the last write's duration has passed."""
    clock = [0.0]
    monkeypatch.setattr("utils.checkpoint.time.perf_counter", lambda: clock[0])
    written = []

    def save(done):
        written.append(done)
        clock[0] += 1.0  # each write takes 1 s

    saver = Saver(save, None, num_epochs=1000)
    for epoch in range(1, 400):
        clock[0] += 10.0  # 10 s epochs
        saver(epoch)
    assert written[0] == 1 and all(b - a == 10 for a, b in zip(written, written[1:]))  # 10 epochs: 100 s
    saver(400, force=True)
    assert written[-1] == 400
    every = []
    fixed = Saver(every.append, 3, num_epochs=10)
    for epoch in range(1, 11):
        fixed(epoch)
    assert every == [3, 6, 9, 10]


def test_resume_refuses_an_optimizer_state_of_other_groups(tmp_path):
    """A checkpoint written when LARS had one group of all parameters: refused with the reason, not a traceback."""
    from optim.lars import LARS
    from utils.checkpoint import resume, save_checkpoint

    model = TinyNet()
    path = str(tmp_path / "old.pth")
    save_checkpoint({"model": model.state_dict(), "optimizer": LARS(model.parameters(), lr=0.1).state_dict(),
                     "epoch": 1, "step": 2, "args": {"arch": "tiny", "optimizer": "lars"}}, path)
    with pytest.raises(UserError, match="older version"):
        resume(path, model, build_optimizer(model, "lars", 0.1, 1e-4), {"arch": "tiny", "optimizer": "lars"},
               ["arch"], [0, 2, 4], allow_changes=False)


def test_defaults_live_in_one_place():
    """simclr.py's parser has no defaults of its own (training/config.py's fill what was not given), and every
    '(default: X)' of its help that names a value is the configuration's."""
    import re

    import simclr
    from training.config import DEFAULTS, resolve_pretrain
    parser = simclr.get_args_parser()
    assert vars(parser.parse_args([])) == {}
    for action in parser._actions:
        said = re.search(r"\(default: ([-\w.]+)\)", action.help or "")
        dest = action.dest
        if said and dest in DEFAULTS and DEFAULTS[dest] is not None:
            value = DEFAULTS[dest]
            if isinstance(value, bool):
                assert said.group(1) == ("on" if value else "off"), dest
            else:
                assert type(value)(said.group(1)) == value, dest
    cfg = resolve_pretrain({"dataset": "cifar10", "batch_size": 256, "temperature": 0.2})
    assert (cfg.temperature, cfg.weight_decay, cfg.lr, cfg.momentum) == (0.2, 1e-4, 1.0, 0.9)
    assert cfg.sources["temperature"] == "given" and cfg.sources["weight_decay"] == "from the recipe of cifar10"
    assert "momentum" not in cfg.sources


def test_the_step_makes_no_host_round_trip():
    """Augmentation of both views and one update (forward, NT-Xent, backward, LARS) under a dispatch mode that
    records the ops that are host round trips on a GPU (a tensor from Python data, a scalar read back, data-
    dependent shapes): none. The per-epoch ones (the key upload, the loss read every --log-freq steps) are
    outside the step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from data.batched_augment import BatchedSimCLRAugment
    from data.keyed_random import ViewKeys
    from training.build import build_pretraining, step_config
    from training.loop import train_step

    round_trips = {"lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "nonzero", "masked_select"}

    class Probe(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in round_trips:
                self.seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    run = build_pretraining(step_config("cifar10", 8, arch="resnet18", proj_dim=16), DistInfo(),
                            resolve_precision("fp32", CPU), 8)
    augment, keys = BatchedSimCLRAugment(32, 0.5, True), torch.arange(8)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    train_step(run, augment(images, ViewKeys(keys, 0, 0, 0)), augment(images, ViewKeys(keys, 0, 0, 1)), 0.1)
    with Probe() as probe:  # the second step: the optimizer state exists
        train_step(run, augment(images, ViewKeys(keys, 0, 1, 0)), augment(images, ViewKeys(keys, 0, 1, 1)), 0.1)
    assert probe.seen == []
    with Probe() as probe:  # the probe sees them
        torch.tensor([1.0]).sum().item()
    assert probe.seen == ["lift_fresh", "_local_scalar_dense"]


def test_compile_with_syncbn_under_torchrun_is_refused():
    from training.build import build_pretraining, step_config
    cfg = step_config("cifar10", 8, arch="resnet18", compile=True, sync_bn=True)
    with pytest.raises(UserError, match="--compile with SyncBN under torchrun is refused"):
        build_pretraining(cfg, DistInfo(world_size=2, distributed=True), resolve_precision("fp32", CPU), 4)


@pytest.mark.parametrize("major,warned", [(7, True), (8, False)])
def test_bf16_on_a_gpu_without_fast_bf16_warns(monkeypatch, capsys, major, warned):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    precision = resolve_precision("bf16", torch.device("cuda"))
    err = capsys.readouterr().err
    assert precision.name == "bf16"
    assert ("warning: --precision bf16 on a GPU of compute capability 7.0" in err) is warned
    assert resolve_precision("auto", torch.device("cuda")).name == ("fp32" if warned else "bf16")


@pytest.mark.parametrize("cores,local,workers", [(16, 1, 15), (64, 1, 16), (16, 8, 2), (2, 1, 2), (32, 2, 15)])
def test_default_workers_leave_a_core_to_each_process(monkeypatch, cores, local, workers):
    import os

    from utils.device import default_workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
    assert default_workers() == workers
