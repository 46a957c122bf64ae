"""Multi-process training (utils/distributed.py, simclr.py under torchrun) on the CPU with gloo.

A 2-process DDP step with SyncBN and gathered embeddings must equal the step of one process on
the whole batch: same loss, same gradient for every parameter; the common wrong gathers must not.
A SyncBN layer on 2 processes must equal BatchNorm over their concatenated batches, without reading
any tensor back on the host.
simclr.py on 2 processes must train as on 1 (views keyed by image), and resume on another number
of processes from a stop in the middle of an epoch.
"""
import csv
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import simclr
from models.simclr import SimCLR
from models.loss import NTXentLoss
from optim.groups import param_groups
from optim.lars import LARS
from tests.dist_helpers import (HostReads, StopAfter, TinyNet, free_port, grads, max_rel_err, rel_err, spawn,
                                tiny_batch)
from tests.test_bad_input import _image_tree
from tests.tiny_data import write_image_folder, write_paths
from utils.checkpoint import load_checkpoint
from utils.distributed import (DistInfo, convert_sync_batchnorm, gather_pairs, gather_with_grad, init_distributed,
                               wrap_model)

WORLD, PAIRS, STEPS = 2, 8, 3


def plain_all_gather(x):
    """The usual mistake: all_gather (no gradient) with this rank's rows put back in place."""
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    out[dist.get_rank()] = x
    return torch.cat(out)


class _GatherNoReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):  # slices without summing the other ranks' gradients
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


GATHERS = {"correct": gather_with_grad, "plain_all_gather": plain_all_gather, "no_all_reduce": _GatherNoReduce.apply}


def step_loss(net, x1, x2, gather=None):
    z1, z2 = net(torch.cat([x1, x2])).chunk(2)  # (n, 8) each
    if gather is not None:
        z1, z2 = gather_pairs(z1, z2, gather)
    return NTXentLoss(0.5)(z1, z2)


BN_BATCH, BN_STEPS, BN_MOMENTA = 8, 2, (0.1, None)  # None: the cumulative average over num_batches_tracked


def bn_step_data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of the BN layer's step (neither centred nor of unit variance) and its output's gradient."""
    g = torch.Generator().manual_seed(10 + step)
    x = 3 + 2 * torch.randn(BN_BATCH, 3, 4, 4, generator=g)
    return x, torch.randn(BN_BATCH, 3, 4, 4, generator=g)  # (B, C, H, W) each


def bn_layer(momentum: float | None) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(3, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 3))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, 3))
    return bn


def bn_steps(bn: nn.Module, rows: slice) -> list[dict]:
    """Forward and backward of ``rows`` of each step's batch: the output and the gradients, per step."""
    out = []
    for s in range(BN_STEPS):
        x, grad_y = bn_step_data(s)
        x = x[rows].requires_grad_()
        y = bn(x)
        y.backward(grad_y[rows])
        out.append({"y": y.detach(), "x": x.grad, "weight": bn.weight.grad, "bias": bn.bias.grad})
        bn.zero_grad(set_to_none=True)
    return out


def _syncbn_layer(info: DistInfo) -> dict:
    """This rank's outputs, gradients and final state of a SyncBN layer on its slice of each step's batch, and the
    host reads seen during its forwards and backwards."""
    rows = slice(info.rank * BN_BATCH // WORLD, (info.rank + 1) * BN_BATCH // WORLD)
    out = {}
    for momentum in BN_MOMENTA:
        bn = convert_sync_batchnorm(bn_layer(momentum))
        with HostReads() as reads:
            steps = bn_steps(bn, rows)
        out[momentum] = {"steps": steps, "state": bn.state_dict(), "host_reads": reads.seen}
    return out


def _ddp_worker(info: DistInfo, out_dir: str) -> None:
    rows = slice(info.rank * PAIRS // WORLD, (info.rank + 1) * PAIRS // WORLD)  # this rank's pairs
    x1, x2 = tiny_batch(PAIRS)
    out = {}
    for name, gather in GATHERS.items():
        torch.manual_seed(0)
        model = convert_sync_batchnorm(TinyNet())
        ddp = DistributedDataParallel(model)  # kept alive until backward: its reducer averages the gradients
        loss = step_loss(ddp, x1[rows], x2[rows], gather)
        loss.backward()
        out[name] = {"loss": loss.item(), "grads": grads(model)}
    torch.manual_seed(0)
    model = convert_sync_batchnorm(TinyNet())
    ddp, _ = wrap_model(model, info, sync_bn=True)  # the running statistics must stay equal unbroadcast
    out["broadcast_buffers"] = ddp.broadcast_buffers, wrap_model(TinyNet(), info)[0].broadcast_buffers
    opt = LARS(param_groups(model, 1e-4), lr=2.0, momentum=0.9, trust_coefficient=0.02)
    for s in range(STEPS):
        x1, x2 = tiny_batch(PAIRS, seed=1 + s)
        opt.zero_grad()
        step_loss(ddp, x1[rows], x2[rows], gather_with_grad).backward()
        opt.step()
    out["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    out["syncbn"] = _syncbn_layer(info)
    torch.save(out, os.path.join(out_dir, f"rank{info.rank}.pt"))


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    spawn(_ddp_worker, WORLD, out_dir)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


def single_process_step():
    torch.manual_seed(0)
    model = TinyNet()
    loss = step_loss(model, *tiny_batch(PAIRS))
    loss.backward()
    return loss.item(), grads(model)


def test_ddp_step_with_syncbn_equals_one_process_on_the_global_batch(ddp_results):
    loss, ref = single_process_step()
    for r in ddp_results:
        assert r["correct"]["loss"] == pytest.approx(loss, rel=1e-6)
        assert max_rel_err(r["correct"]["grads"], ref) < 1e-5
    for k in ref:  # DDP's averaged gradients are the same on every rank
        assert torch.equal(ddp_results[0]["correct"]["grads"][k], ddp_results[1]["correct"]["grads"][k]), k


@pytest.mark.parametrize("wrong", ["plain_all_gather", "no_all_reduce"])
def test_a_wrong_gather_fails_the_comparison(ddp_results, wrong):
    loss, ref = single_process_step()
    r = ddp_results[0][wrong]
    assert r["loss"] == pytest.approx(loss, rel=1e-6)  # the forward is right: only the gradients are off
    assert max_rel_err(r["grads"], ref) > 0.3  # 1/world of the right gradient
    assert max_rel_err({k: WORLD * g for k, g in r["grads"].items()}, ref) < 1e-5


def test_parameters_stay_identical_across_ranks_and_follow_one_process(ddp_results):
    """With SyncBN, DDP does not broadcast the buffers (wrap_model): the running statistics stay equal anyway."""
    assert [r["broadcast_buffers"] for r in ddp_results] == [(False, True)] * WORLD  # with and without SyncBN
    a, b = ddp_results[0]["state"], ddp_results[1]["state"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    torch.manual_seed(0)
    model = TinyNet()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = LARS(param_groups(model, 1e-4), lr=2.0, momentum=0.9, trust_coefficient=0.02)
    for s in range(STEPS):
        opt.zero_grad()
        step_loss(model, *tiny_batch(PAIRS, seed=1 + s)).backward()
        opt.step()
    ref = model.state_dict()
    assert max(float((ref[k].float() - init[k].float()).abs().max()) for k in ref) > 1e-3  # training moved
    floats = {k: v for k, v in ref.items() if v.is_floating_point()}  # weights and SyncBN running statistics
    assert max_rel_err({k: a[k] for k in floats}, floats) < 2e-5  # fp32 sums in another order, over 4 steps
    assert all(torch.equal(a[k], v) for k, v in ref.items() if k not in floats)  # num_batches_tracked


@pytest.mark.parametrize("momentum", BN_MOMENTA)
def test_syncbn_layer_equals_batchnorm_on_the_global_batch_without_host_reads(ddp_results, momentum):
    """Output and input gradient: the ranks' rows of one BatchNorm's over the concatenated batch; weight and bias
    gradients: each rank's share, which add up to BatchNorm's (DDP averages them over the ranks); running
    statistics: the same on each rank and as BatchNorm's, also as a cumulative average (momentum None)."""
    bn = bn_layer(momentum)
    ref = bn_steps(bn, slice(None))
    ranks = [r["syncbn"][momentum] for r in ddp_results]
    for s in range(BN_STEPS):
        got = [r["steps"][s] for r in ranks]
        for k in ("y", "x"):
            assert rel_err(torch.cat([g[k] for g in got]), ref[s][k]) < 1e-6, (s, k)
        for k in ("weight", "bias"):
            assert rel_err(sum(g[k] for g in got), ref[s][k]) < 1e-6, (s, k)
    for k, v in bn.state_dict().items():
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k
        assert torch.allclose(ranks[0]["state"][k], v, rtol=1e-6, atol=0), k
    assert [r["host_reads"] for r in ranks] == [[]] * WORLD  # no .item(), torch.tensor(list), nonzero, mask


def _one_gpu_worker(info: DistInfo, out_dir: str) -> None:
    """The correct gather and SyncBN of _ddp_worker, both ranks on cuda:0 over gloo (CUDA tensors), as on a
    machine with one GPU: the DDP step and the SyncBN layer, with the host reads seen in the layer."""
    from utils.precision import configure_backends
    configure_backends(torch.device("cuda"))  # fp32 without TF32, as the scripts
    cuda = torch.device("cuda", 0)
    rows = slice(info.rank * PAIRS // WORLD, (info.rank + 1) * PAIRS // WORLD)
    x1, x2 = (x.to(cuda) for x in tiny_batch(PAIRS))
    torch.manual_seed(0)
    model = convert_sync_batchnorm(TinyNet()).to(cuda)
    ddp = DistributedDataParallel(model, device_ids=[0], broadcast_buffers=False)
    loss = step_loss(ddp, x1[rows], x2[rows], gather_with_grad)
    loss.backward()
    out = {"loss": loss.item(), "grads": {k: g.cpu() for k, g in grads(model).items()}}
    bn_rows = slice(info.rank * BN_BATCH // WORLD, (info.rank + 1) * BN_BATCH // WORLD)
    bn = convert_sync_batchnorm(bn_layer(0.1)).to(cuda)
    with HostReads() as reads:
        y = bn(bn_step_data(0)[0][bn_rows].to(cuda))
        y.backward(bn_step_data(0)[1][bn_rows].to(cuda))
    out["bn"] = {"y": y.detach().cpu(), "host_reads": reads.seen, "state": {k: v.cpu() for k, v in
                                                                          bn.state_dict().items()}}
    torch.save(out, os.path.join(out_dir, f"rank{info.rank}.pt"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_two_ranks_on_one_cuda_gpu_equal_one_process(tmp_path):
    """CUDA tensors over gloo, 2 processes sharing cuda:0: the gather with gradients and the SyncBN of a DDP step
    equal one process on the whole batch on the CPU (fp32, TF32 off), and the SyncBN layer reads nothing back."""
    spawn(_one_gpu_worker, WORLD, str(tmp_path))
    results = [torch.load(os.path.join(str(tmp_path), f"rank{r}.pt")) for r in range(WORLD)]
    loss, ref = single_process_step()
    bn = bn_layer(0.1)
    ref_y = bn(bn_step_data(0)[0]).detach()  # one step, as the ranks'
    for r in results:
        assert r["loss"] == pytest.approx(loss, rel=1e-5)
        assert max_rel_err(r["grads"], ref) < 1e-4
        assert r["bn"]["host_reads"] == []
        assert torch.allclose(r["bn"]["state"]["running_var"], bn.running_var, rtol=1e-5)
    assert rel_err(torch.cat([r["bn"]["y"] for r in results]), ref_y) < 1e-5


def test_single_process_without_torchrun():
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


TINY = ["--arch", "resnet18", "--batch-size", "8", "--num-workers", "0", "--precision", "fp32", "--device", "cpu",
        "--warmup-epochs", "1", "--log-freq", "1", "--proj-dim", "16", "--seed", "3", "--image-size", "8"]


def torchrun(argv, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", f"--master_port={free_port()}",
           os.path.join(simclr.__file__)] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def assert_models_close(got: dict, ref: dict) -> None:
    """Float tensors within 1% of their norm, integer buffers equal. Each tensor as a whole: the last BN of a
    block starts at weight 0 and bias 0, so its values are its movement, and at 8 px its statistics come from
    16 values (1x1 maps) per channel, where float noise grows fastest over the steps (worst seen: 0.5%, the
    bias of layer4.1.bn2). A wrong view, gather or resume moves the losses, compared to 1e-4 first."""
    floats = [k for k, v in ref.items() if v.is_floating_point()]
    errors = {k: rel_err(got[k], ref[k]) for k in floats}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-2, (worst, errors[worst])
    assert all(torch.equal(got[k], v) for k, v in ref.items() if k not in floats)


def csv_losses(path):
    with open(path, newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """(dataset-paths file, checkpoint): 20 tiny images and the uninterrupted 2-epoch run on them in one process
    (the default, on-device augmentation), which the 2-process runs below must follow."""
    root = tmp_path_factory.mktemp("one")
    write_image_folder(str(root / "d"), classes=("a", "b", "c", "d"), per_class=5, size=8)
    paths = write_paths(str(root / "paths.json"), {"cifar10": "d"})
    ckpt = str(root / "one.pth")
    simclr.main(simclr.get_args_parser().parse_args(TINY + ["--dataset-paths", paths, "--filename", ckpt,
                                                            "--test-freq", "0", "--num-epochs", "2"]))
    return paths, ckpt


def test_torchrun_two_processes_write_one_checkpoint_and_resume(tmp_path, one_process):
    paths, one = one_process
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ckpt = str(run_dir / "ddp.pth")
    common = TINY + ["--dataset-paths", paths, "--filename", ckpt, "--test-freq", "1", "--knn-k", "5"]
    out = torchrun(common + ["--num-epochs", "1"], str(tmp_path))
    assert out.count("epoch 1/1: loss") == 1  # rank 0 alone prints
    assert sorted(os.listdir(run_dir)) == ["ddp.csv", "ddp.pth"]  # one checkpoint, one log, no temp or lock file
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["step"], state["args"]["world_size"], state["args"]["sync_bn"]) == (1, 3, 2, True)
    assert set(state["model"]) == set(SimCLR("resnet18", "cifar", 16).state_dict())  # plain keys

    out = torchrun(common + ["--num-epochs", "2", "--resume"], str(tmp_path))
    assert out.count("resumed from") == 1 and out.count("epoch 2/2: loss") == 1
    assert sorted(os.listdir(run_dir)) == ["ddp.csv", "ddp.pth"]
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["step"]) == (2, 6)  # 20 * 2 // 8 + 1
    lines = open(ckpt.replace(".pth", ".csv")).read().splitlines()
    assert len(lines) == 1 + 6 + 2  # 6 steps and 2 kNN rows, each written once

    # The same run in one process (one_process): the global batches, their views (keyed by image, not by rank or
    # batch) and, with SyncBN, the steps are the same.
    assert csv_losses(one.replace(".pth", ".csv")) == pytest.approx(csv_losses(ckpt.replace(".pth", ".csv")), rel=1e-4)
    assert_models_close(state["model"], load_checkpoint(one)["model"])


def _stopped_run(info: DistInfo, argv: list, out_dir: str) -> None:
    """simclr.train on this process group until StopAfter stops it at its 5th ask (after steps 1-3, at the end of
    epoch 1, after step 4); writes the exit code of each rank."""
    simclr.StopRequest, StopAfter.n = StopAfter, 4  # this spawned process only
    try:
        simclr.train(simclr.resolve_args(simclr.get_args_parser().parse_args(argv)), info)
        code = 0
    except SystemExit as e:
        code = e.code
    with open(os.path.join(out_dir, f"rank{info.rank}.code"), "w") as f:
        f.write(str(code))


def test_stopped_mid_epoch_on_two_processes_resumes_on_one(tmp_path, one_process):
    """Epoch 1 (3 steps: 20 // 8 + 1, the official count) and the first step of epoch 2 on 2 processes, stopped
    there, the rest on 1 process: the uninterrupted 1-process run (one_process) to float tolerance (the sampler's
    keys and every view are global)."""
    paths, full = one_process
    common = TINY + ["--dataset-paths", paths, "--test-freq", "0", "--num-epochs", "2"]
    part = str(tmp_path / "part.pth")
    spawn(_stopped_run, WORLD, common + ["--filename", part], str(tmp_path))
    assert [open(tmp_path / f"rank{r}.code").read() for r in range(WORLD)] == ["143"] * WORLD
    mid = load_checkpoint(part)
    assert (mid["epoch"], mid["step"], mid["args"]["world_size"]) == (1, 4, 2)  # epochs end at steps 3 and 6
    simclr.main(simclr.get_args_parser().parse_args(common + ["--filename", part, "--resume"]))
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 6)
    assert csv_losses(part.replace(".pth", ".csv")) == pytest.approx(csv_losses(full.replace(".pth", ".csv")),
                                                                     rel=1e-4)
    assert_models_close(b["model"], a["model"])


def _corrupt_run(info: DistInfo, argv: list, out_dir: str) -> None:
    """simclr.train on this process group; writes each rank's error line."""
    try:
        simclr.train(simclr.resolve_args(simclr.get_args_parser().parse_args(argv)), info)
        message = "no error"
    except simclr.UserError as e:
        message = str(e)
    with open(os.path.join(out_dir, f"rank{info.rank}.error"), "w") as f:
        f.write(message)


def test_a_corrupt_image_on_rank_1_saves_the_steps_done(tmp_path):
    """The image rank 1 reads at step 2 (stream position 5: batch 4, 2 a rank, rank 1 takes the odd ones) is
    corrupt: both processes leave before step 2's collectives, rank 1 naming the file, rank 0 naming rank 1 and
    the checkpoint of step 1 it saved (before, rank 0 waited in the gather until torchrun killed it unsaved)."""
    paths, victim = _image_tree(tmp_path, "train", position=5)
    argv = TINY + ["--batch-size", "4", "--seed", "0", "--dataset", "imagenet", "--dataset-paths", paths,
                   "--test-freq", "0", "--num-epochs", "1", "--filename", str(tmp_path / "r.pth")]
    spawn(_corrupt_run, WORLD, argv, str(tmp_path))
    rank0, rank1 = (open(tmp_path / f"rank{r}.error").read() for r in range(WORLD))
    assert rank1.startswith(f"cannot decode image {victim}")
    assert rank0.startswith("process 1 could not read its batch") and "the 1 steps done are saved in" in rank0
    state = load_checkpoint(str(tmp_path / "r.pth"))
    assert (state["epoch"], state["step"], state["args"]["world_size"]) == (0, 1, 2)


def test_global_batch_must_divide_among_processes(tmp_path):
    write_image_folder(str(tmp_path / "d"), classes=("a", "b"), per_class=5, size=8)
    paths = write_paths(str(tmp_path / "paths.json"), {"cifar10": "d"})
    with pytest.raises(simclr.UserError, match="divisible by the number of processes"):
        simclr.train(simclr.resolve_args(simclr.get_args_parser().parse_args(
            TINY[:2] + ["--batch-size", "5"] + TINY[4:] + ["--dataset-paths", paths])), DistInfo(world_size=2))
