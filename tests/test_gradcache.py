"""Gradient caching (training/gradcache.py): the full-batch NT-Xent step, chunk by chunk.

Without BatchNorm (or with BN in eval mode) a step equals the full-batch step. With BN in training
mode the statistics are those of each chunk's view-1 images and, separately, of its view-2 images, so
the references are (a) an explicit computation in one process (every chunk's two views forwarded with
their graphs, one loss over all embeddings) and (b) a 2-process run without SyncBN, one chunk per
process, each process forwarding its two views separately, spawned with gloo on the CPU.
"""
import os

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from models.loss import NTXentLoss
from tests.dist_helpers import TinyNet, grads, max_rel_err, spawn, tiny_batch
from training.gradcache import CachedEmbedding
from utils.distributed import DistInfo, gather_pairs, gather_with_grad
from utils.precision import PrecisionNet, Precision

PAIRS, WORLD = 8, 2
LOSS = NTXentLoss(0.5)


def full_batch(model, x1, x2):
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    loss = LOSS(z1, z2)
    loss.backward()
    return loss.item(), grads(model)


def per_chunk_reference(model, x1, x2, chunk):
    """Each chunk's view-1 images and its view-2 images forwarded as two batches, with their graphs (BN
    statistics per chunk and view: no BN batch holds both views of a pair); one loss over all embeddings."""
    z1s, z2s = [], []
    for a in range(0, x1.shape[0], chunk):
        b = min(a + chunk, x1.shape[0])
        z1s.append(model(x1[a:b]))  # (c, d)
        z2s.append(model(x2[a:b]))
    loss = LOSS(torch.cat(z1s), torch.cat(z2s))
    loss.backward()
    return loss.item(), grads(model)


def gradcache_step(net, x1, x2, loss_fn, chunk, gather=None):
    """The forward/backward of training.loop.train_step with gradient caching."""
    embed = CachedEmbedding(net, chunk)
    z1, z2 = embed.forward(x1, x2)
    if gather is not None:
        z1, z2 = gather_pairs(z1, z2, gather)
    loss = loss_fn(z1, z2)
    embed.backward(loss)
    return loss.detach()


def cached(model, x1, x2, chunk, wrapper=None, **kw):
    loss = gradcache_step(wrapper(model) if wrapper else model, x1, x2, LOSS, chunk, **kw)
    return loss.item(), grads(model)


def fresh(**kw):
    torch.manual_seed(0)
    return TinyNet(**kw)


@pytest.mark.parametrize("chunk", [1, 3, 4, 8])
def test_without_batchnorm_equals_the_full_batch(chunk):
    x1, x2 = tiny_batch(PAIRS)
    loss, ref = full_batch(fresh(bn=False), x1, x2)
    got_loss, got = cached(fresh(bn=False), x1, x2, chunk)
    assert got_loss == pytest.approx(loss, rel=1e-6)
    assert max_rel_err(got, ref) < 1e-5


def test_batchnorm_in_eval_mode_equals_the_full_batch():
    x1, x2 = tiny_batch(PAIRS)
    loss, ref = full_batch(fresh().eval(), x1, x2)
    got_loss, got = cached(fresh().eval(), x1, x2, 3)
    assert got_loss == pytest.approx(loss, rel=1e-6) and max_rel_err(got, ref) < 1e-5


@pytest.mark.parametrize("chunk,wrapper", [(3, None), (4, None), (4, nn.DataParallel)])
def test_batchnorm_in_train_mode_equals_per_chunk_batchnorm(chunk, wrapper):
    """chunk 3 does not divide the 8 pairs: chunks of 3, 3, 2."""
    x1, x2 = tiny_batch(PAIRS)
    ref_model, model = fresh(), fresh()
    loss, ref = per_chunk_reference(ref_model, x1, x2, chunk)
    got_loss, got = cached(model, x1, x2, chunk, wrapper)
    assert got_loss == pytest.approx(loss, rel=1e-6) and max_rel_err(got, ref) < 1e-5
    # Running statistics updated once per chunk and view (the first pass leaves no trace), as in the reference.
    n_forwards = 2 * -(-PAIRS // chunk)
    buffers, ref_buffers = dict(model.named_buffers()), dict(ref_model.named_buffers())
    for k, v in ref_buffers.items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == int(buffers[k]) == n_forwards, k
        else:
            torch.testing.assert_close(buffers[k], v, rtol=1e-5, atol=1e-7, msg=k)
    full_loss, _ = full_batch(fresh(), x1, x2)
    assert abs(full_loss - loss) > 1e-4  # per-chunk BN is indeed a different computation


def test_no_bn_batch_holds_both_views_of_a_pair():
    """Every batch the network sees holds images of one view only (the first pass and the second)."""
    x1, x2 = tiny_batch(PAIRS)
    seen = []
    model = fresh()
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    cached(model, x1, x2, 3)
    assert len(seen) == 2 * 2 * 3  # 3 chunks, 2 views, 2 passes
    for batch in seen:
        from_view1 = [any(torch.equal(img, x) for x in x1) for img in batch]
        from_view2 = [any(torch.equal(img, x) for x in x2) for img in batch]
        assert all(from_view1) != all(from_view2) and (all(from_view1) or all(from_view2))


def test_both_passes_replay_the_same_randomness():
    x1, x2 = tiny_batch(PAIRS)
    torch.manual_seed(5)
    ref_model = fresh(bn=False, dropout=0.5)
    torch.manual_seed(5)
    loss, ref = per_chunk_reference(ref_model, x1, x2, 3)
    model = fresh(bn=False, dropout=0.5)
    torch.manual_seed(5)
    got_loss, got = cached(model, x1, x2, 3)
    assert got_loss == pytest.approx(loss, rel=1e-6) and max_rel_err(got, ref) < 1e-5


def test_bf16_autocast():
    x1, x2 = tiny_batch(PAIRS)
    ref_model = fresh()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, ref = per_chunk_reference(ref_model, x1, x2, 4)
    got_loss, got = cached(fresh(), x1, x2, 4, wrapper=lambda m: PrecisionNet(m, Precision("bf16", False, "cpu")))
    assert got_loss == pytest.approx(loss, rel=1e-3) and max_rel_err(got, ref) < 2e-2
    assert all(g.dtype == torch.float32 for g in got.values())


def test_chunk_bounds_never_leave_a_single_pair_alone():
    from training.gradcache import chunk_bounds
    assert chunk_bounds(8, 3) == [(0, 3), (3, 6), (6, 8)]
    assert chunk_bounds(7, 3) == [(0, 3), (3, 7)]
    assert chunk_bounds(1, 1) == [(0, 1)] and chunk_bounds(4, 1) == [(0, 1), (1, 2), (2, 4)]


def test_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        gradcache_step(fresh(), *tiny_batch(2), LOSS, 0)


def _counting_hook(state: dict, bucket):
    state["all_reduces"] += 1
    return allreduce_hook(None, bucket)


def _gradcache_worker(info: DistInfo, out_dir: str) -> None:
    rows = slice(info.rank * PAIRS // WORLD, (info.rank + 1) * PAIRS // WORLD)
    x1, x2 = tiny_batch(PAIRS)
    out = {}
    # Without SyncBN, each process's view-1 images and its view-2 images two BN batches; gradients averaged.
    model = fresh()
    z1, z2 = gather_pairs(model(x1[rows]), model(x2[rows]), gather_with_grad)
    loss = LOSS(z1, z2)
    loss.backward()
    for p in (p for p in model.parameters() if p.grad is not None):
        dist.all_reduce(p.grad)
        p.grad /= WORLD
    out["separate_views"] = (loss.item(), grads(model))
    # DDP, one plain step: the number of gradient all-reduces of a step.
    model = fresh()
    ddp = DistributedDataParallel(model)
    state = {"all_reduces": 0}
    ddp.register_comm_hook(state, _counting_hook)
    z1, z2 = ddp(torch.cat([x1[rows], x2[rows]])).chunk(2)
    loss = LOSS(*gather_pairs(z1, z2))
    loss.backward()
    out["ddp"] = (loss.item(), grads(model), state["all_reduces"])
    # DDP with gradient caching, chunks of 2 pairs per process, embeddings gathered once.
    model = fresh()
    ddp = DistributedDataParallel(model)
    state = {"all_reduces": 0}
    ddp.register_comm_hook(state, _counting_hook)
    loss = gradcache_step(ddp, x1[rows], x2[rows], LOSS, 2, gather=gather_with_grad)
    out["ddp_gradcache"] = (loss.item(), grads(model), state["all_reduces"])
    assert dist.get_world_size() == WORLD
    torch.save(out, os.path.join(out_dir, f"rank{info.rank}.pt"))


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("gradcache_ddp"))
    spawn(_gradcache_worker, WORLD, out_dir)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]


def test_equals_processes_without_syncbn_one_chunk_per_process(ddp_results):
    x1, x2 = tiny_batch(PAIRS)
    loss, got = cached(fresh(), x1, x2, PAIRS // WORLD)
    for r in ddp_results:
        ddp_loss, ddp_grads = r["separate_views"]
        assert ddp_loss == pytest.approx(loss, rel=1e-6) and max_rel_err(ddp_grads, got) < 1e-5


def test_under_ddp_chunks_per_process_and_one_all_reduce(ddp_results):
    x1, x2 = tiny_batch(PAIRS)
    loss, ref = per_chunk_reference(fresh(), x1, x2, 2)  # chunks of 2 over the global batch, rank-major
    for r in ddp_results:
        got_loss, got, all_reduces = r["ddp_gradcache"]
        assert got_loss == pytest.approx(loss, rel=1e-6) and max_rel_err(got, ref) < 1e-5
        assert all_reduces == r["ddp"][2] >= 1  # 2 chunks, but one gradient all-reduce as a plain step


def test_simclr_script_with_chunk_size(tmp_path):
    import simclr
    from tests.tiny_data import write_image_folder, write_paths
    from utils.checkpoint import load_checkpoint
    write_image_folder(str(tmp_path / "d"), classes=("a", "b"), per_class=8, size=8)
    paths = write_paths(str(tmp_path / "paths.json"), {"cifar10": "d"})
    argv = ["--arch", "resnet18", "--batch-size", "8", "--num-workers", "0", "--precision", "fp32", "--device", "cpu",
            "--proj-dim", "16", "--image-size", "8", "--test-freq", "0", "--num-epochs", "1", "--dataset-paths", paths,
            "--filename", str(tmp_path / "c.pth"), "--chunk-size", "3"]
    result = simclr.main(simclr.get_args_parser().parse_args(argv))
    state = load_checkpoint(str(tmp_path / "c.pth"))
    assert state["step"] == 3 and state["args"]["chunk_size"] == 3  # 16 // 8 + 1: the official count
    assert torch.isfinite(torch.tensor(result["losses"])).all()
    bn = state["model"]["backbone.bn1.num_batches_tracked"]
    assert int(bn) == 3 * 3 * 2  # 3 steps of 3 chunks (3, 3, 2 pairs) of 2 views, each counted once
    with pytest.raises(simclr.UserError, match="--chunk-size must be 0"):  # -1: tests/test_bad_input.py
        simclr.main(simclr.get_args_parser().parse_args(argv[:-3] + [str(tmp_path / "d.pth"), "--chunk-size", "1"]))
