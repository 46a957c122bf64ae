"""simclr.py end to end on tiny data: training, checkpoints, exact resume, and bad input."""
import os
import subprocess
import sys

import pytest
import torch

import simclr
from models.simclr import SimCLR
from tests.dist_helpers import StopAfter
from tests.tiny_data import write_image_folder, write_paths
from utils.checkpoint import load_checkpoint
from utils.errors import UserError

TINY = ["--arch", "resnet18", "--batch-size", "8", "--num-workers", "0", "--precision", "fp32",
        "--warmup-epochs", "1", "--cosine-anneal", "--log-freq", "1", "--proj-dim", "16",
        "--device", "cpu"]  # bit-exact resumes are CPU facts: cuDNN's weight gradients need not be deterministic
PX8 = ["--image-size", "8"]  # the CPU runs train on the 8 px images at 8 px: the cifar10 recipe's 32 px costs ~8x


@pytest.fixture
def tiny(tmp_path):
    write_image_folder(str(tmp_path / "d"), classes=("a", "b", "c", "d"), per_class=5, size=8)
    return str(tmp_path), write_paths(str(tmp_path / "paths.json"), {"cifar10": "d"})


def run(argv):
    return simclr.main(simclr.get_args_parser().parse_args(argv))


def log_lines(checkpoint: str) -> list[str]:
    """Lines of the CSV log written beside a checkpoint, the header first."""
    with open(checkpoint.replace(".pth", ".csv")) as f:
        return f.read().splitlines()


def test_tiny_run_writes_checkpoint_and_log(tiny):
    root, paths = tiny
    ckpt = os.path.join(root, "run.pth")
    result = run(TINY + PX8 + ["--dataset-paths", paths, "--num-epochs", "2", "--filename", ckpt, "--test-freq", "1",
                               "--knn-k", "5"])
    state = load_checkpoint(ckpt)  # weights_only=True
    assert state["epoch"] == 2 and state["step"] == 6  # 20 * 2 // 8 + 1 steps: the official count
    assert state["args"]["arch"] == "resnet18" and state["args"]["lr"] == pytest.approx(1.0 * 8 / 256)
    assert state["args"]["temperature"] == 0.5 and state["git_commit"]
    assert set(state["model"]) == set(SimCLR("resnet18", "cifar", 16).state_dict())
    assert "momentum_buffer" in next(iter(state["optimizer"]["state"].values()))
    lines = open(os.path.join(root, "run.csv")).read().splitlines()
    assert lines[0] == ",".join(simclr.LOG_FIELDS) and len(lines) == 1 + 6 + 2  # 6 steps, 2 kNN rows
    assert len(result["knn"]) == 2 and all(0 <= a <= 100 for a in result["knn"])
    assert not [f for f in os.listdir(root) if ".tmp" in f]  # atomic write left no temp file


def test_resume_refuses_a_different_model(tiny):
    root, paths = tiny
    ckpt = os.path.join(root, "r.pth")
    run(TINY + PX8 + ["--dataset-paths", paths, "--num-epochs", "1", "--filename", ckpt, "--test-freq", "0"])
    with pytest.raises(UserError, match="different model"):
        run(TINY[:1] + ["resnet34"] + TINY[2:] + PX8 + ["--dataset-paths", paths, "--num-epochs", "2",
                                                        "--filename", ckpt, "--resume", "--test-freq", "0"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny):
    root, paths = tiny
    ckpt = os.path.join(root, "nan.pth")
    base = TINY + PX8 + ["--dataset-paths", paths, "--filename", ckpt, "--test-freq", "0"]
    run(base + ["--num-epochs", "1"])
    before = open(ckpt, "rb").read()
    with pytest.raises(UserError, match="not finite|loss is (nan|inf)"):
        run(base + ["--num-epochs", "3", "--resume", "--allow-changes", "--base-lr", "1e30",
                    "--lr-scaling", "none", "--warmup-epochs", "0"])
    assert open(ckpt, "rb").read() == before


def test_batch_larger_than_the_dataset(tiny):  # numbers out of range: tests/test_bad_input.py
    _, paths = tiny
    with pytest.raises(UserError, match="larger than the dataset"):
        run(TINY + ["--dataset-paths", paths, "--num-epochs", "1", "--test-freq", "0", "--batch-size", "64"])


def test_cli_prints_one_line_error_without_traceback(tmp_path, repo_root):
    paths = write_paths(str(tmp_path / "p.json"), {"cifar10": "does-not-exist"})
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "simclr.py"), "--dataset-paths", paths,
                           "--device", "cpu"], capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: dataset folder for 'cifar10' not found") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_asking_for_a_missing_gpu(tiny):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _, paths = tiny
    with pytest.raises(UserError, match="no GPU"):
        run(TINY + ["--dataset-paths", paths, "--device", "cuda"])


def test_a_longer_run_and_a_stop_mid_epoch_resume_exactly(tiny, monkeypatch):
    """20 images in batches of 4, stream batching: 1 epoch is 20 // 4 + 1 = 6 steps (the official count: one batch
    into the second epoch's order; warmup 5 steps, so its schedule is the 3-epoch run's), extended to 3 epochs
    (steps 5, 10, 16 end them), stopped mid-epoch after step 9, then at the end of epoch 2 (a stop at an epoch's
    last step completes the epoch), and resumed: bit-identical to the uninterrupted 3 epochs, the same log rows."""
    root, paths = tiny
    full, part = os.path.join(root, "full.pth"), os.path.join(root, "part.pth")
    common = TINY + PX8 + ["--dataset-paths", paths, "--test-freq", "0", "--batch-size", "4", "--seed", "1"]
    run(common + ["--num-epochs", "3", "--filename", full])
    run(common + ["--num-epochs", "1", "--filename", part])
    assert (load_checkpoint(part)["epoch"], load_checkpoint(part)["step"]) == (1, 6)
    monkeypatch.setattr(simclr, "StopRequest", StopAfter)
    for asks, done in ((2, (1, 9)), (0, (2, 10))):  # a stop at the (asks+1)-th ask, after every step
        monkeypatch.setattr(StopAfter, "n", asks)
        with pytest.raises(SystemExit) as stopped:
            run(common + ["--num-epochs", "3", "--filename", part, "--resume"])
        assert stopped.value.code == 143
        mid = load_checkpoint(part)
        assert (mid["epoch"], mid["step"]) == done and mid["history"][-1]["changed"] == {"num_epochs": [1, 3]}
    monkeypatch.undo()
    run(common + ["--num-epochs", "3", "--filename", part, "--resume"])
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (3, 16)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    losses = [[line.split(",")[1:4] for line in log_lines(f)] for f in (full, part)]
    assert losses[0] == losses[1]  # step, lr, loss of every row (the 1-epoch run's step 6 is in its epoch 1)


def test_a_stop_that_completes_an_epoch_keeps_its_knn_row(tiny, monkeypatch):
    """A stop at an epoch's last step completes the epoch: its line and kNN row are written before the run exits
    (after the checkpoint), so the resumed run's log has every epoch's kNN top-1, equal to the straight run's."""
    root, paths = tiny
    full, part = os.path.join(root, "full.pth"), os.path.join(root, "part.pth")
    common = TINY + PX8 + ["--dataset-paths", paths, "--test-freq", "1", "--knn-k", "3", "--batch-size", "8",
                           "--seed", "1", "--num-epochs", "2"]
    result = run(common + ["--filename", full])
    monkeypatch.setattr(simclr, "StopRequest", StopAfter)
    monkeypatch.setattr(StopAfter, "n", 2)  # asked after steps 1, 2, 3: epoch 1 (20 // 8 + 1 steps) ends at step 3
    with pytest.raises(SystemExit) as stopped:
        run(common + ["--filename", part])
    assert stopped.value.code == 143 and load_checkpoint(part)["step"] == 3
    monkeypatch.undo()
    run(common + ["--filename", part, "--resume"])
    knn = [[line.split(",")[:6] for line in log_lines(f)[1:] if line.split(",")[5]] for f in (full, part)]
    assert knn[0] == knn[1] and [row[0] for row in knn[1]] == ["1", "2"] and len(result["knn"]) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_a_resume_on_cuda_follows_the_straight_run(tiny):
    """On CUDA a resume is exact up to cuDNN, whose algorithms (cudnn.benchmark: the fastest by timing) need not
    give the same bits twice: stopped after 1 epoch of 3 and resumed, within 1e-3 of the straight run per tensor."""
    root, paths = tiny
    common = TINY[:-1] + ["cuda", "--dataset-paths", paths, "--test-freq", "0", "--batch-size", "4", "--seed", "1"]
    full, part = os.path.join(root, "full.pth"), os.path.join(root, "part.pth")
    run(common + ["--num-epochs", "3", "--filename", full])
    run(common + ["--num-epochs", "1", "--filename", part])
    run(common + ["--num-epochs", "3", "--filename", part, "--resume"])
    a, b = load_checkpoint(full)["model"], load_checkpoint(part)["model"]
    for k in a:
        if a[k].is_floating_point():
            assert float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) < 1e-3, k
        else:
            assert torch.equal(a[k], b[k]), k


def test_image_tree_from_disk_with_device_finish_resumes_exactly(tmp_path):
    write_image_folder(str(tmp_path / "in"), classes=("a", "b"), per_class=6, size=12, splits=("train", "val"))
    paths = write_paths(str(tmp_path / "paths.json"), {"imagenet": "in"})
    common = TINY + ["--dataset", "imagenet", "--dataset-paths", paths, "--image-size", "8", "--test-freq", "0"]
    full, part = str(tmp_path / "full.pth"), str(tmp_path / "part.pth")
    run(common + ["--num-epochs", "2", "--filename", full])
    run(common + ["--num-epochs", "1", "--filename", part])
    run(common + ["--num-epochs", "2", "--filename", part, "--resume"])
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert a["args"]["stem"] == "imagenet"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_compile_trains_the_same_model(tiny):
    """--compile (Inductor) against the eager run: same losses and weights to float32 tolerance, and a
    checkpoint with the plain model's keys."""
    root, paths = tiny
    common = TINY + PX8 + ["--dataset-paths", paths, "--test-freq", "0", "--seed", "2", "--num-epochs", "1"]
    eager, compiled = os.path.join(root, "eager.pth"), os.path.join(root, "compiled.pth")
    run(common + ["--filename", eager])
    run(common + ["--filename", compiled, "--compile"])
    a, b = load_checkpoint(eager), load_checkpoint(compiled)
    assert set(a["model"]) == set(b["model"])
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=5e-5, msg=lambda m, k=k: f"{k}: {m}")
    la, lb = log_lines(eager)[1:], log_lines(compiled)[1:]
    loss = simclr.LOG_FIELDS.index("loss")
    for ra, rb in zip(la, lb, strict=True):
        assert float(rb.split(",")[loss]) == pytest.approx(float(ra.split(",")[loss]), rel=1e-4)
