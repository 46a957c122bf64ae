"""The bad-input matrix of simclr.py (issue "No run is ever lost"): every case exits 2 with one ``error:`` line
and leaves every file that existed byte-identical. The data-file cases: test_bad_input_data.py; the evaluation
scripts': test_bad_input_eval.py. Then the guarantees that are not refusals: --overwrite, --allow-changes, a
longer run, a corrupt image mid-epoch, the kNN monitor after the save, SIGTERM under torchrun."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import simclr
from data.sampler import EpochSampler
from tests.bad_input import assert_refused, run_script, snapshot
from tests.dist_helpers import free_port
from tests.tiny_data import write_image_folder, write_paths
from utils.checkpoint import load_checkpoint
from utils.files import RunLock

TINY = ["--arch", "resnet18", "--batch-size", "8", "--num-workers", "0", "--precision", "fp32", "--device", "cpu",
        "--image-size", "8", "--warmup-epochs", "1", "--log-freq", "1", "--proj-dim", "16", "--test-freq", "0",
        "--num-epochs", "1"]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished 1-epoch run (run.pth, run.csv) on 20 tiny images, copied into each test's folder."""
    root = tmp_path_factory.mktemp("done")
    write_image_folder(str(root / "d"), classes=("a", "b", "c", "d"), per_class=5, size=8)
    write_paths(str(root / "paths.json"), {"cifar10": "d"})
    simclr.main(simclr.get_args_parser().parse_args(TINY + ["--dataset-paths", str(root / "paths.json"),
                                                            "--filename", str(root / "run.pth")]))
    return root


@pytest.fixture
def run_dir(done_run, tmp_path):
    for name in ("d", "paths.json", "run.pth", "run.csv"):
        (shutil.copytree if name == "d" else shutil.copy)(done_run / name, tmp_path / name)
    return tmp_path


def args(run_dir, *extra, filename="run.pth"):
    return TINY + ["--dataset-paths", str(run_dir / "paths.json"), "--filename", f"{run_dir}/{filename}", *extra]


NUMBERS = [("--image-size", "0"), ("--batch-size", "1"), ("--num-epochs", "0"), ("--num-epochs", "x"),
           ("--base-lr", "-1"), ("--base-lr", "nan"), ("--temperature", "0"), ("--momentum", "-0.1"),
           ("--weight-decay", "-1"), ("--trust-coefficient", "0"), ("--warmup-epochs", "-1"),
           ("--jitter-strength", "-1"), ("--proj-dim", "0"), ("--proj-hidden-dim", "0"), ("--proj-layers", "0"),
           ("--width-multiplier", "0"), ("--num-workers", "-1"), ("--test-freq", "-1"), ("--knn-k", "0"),
           ("--save-freq", "0"), ("--log-freq", "0"), ("--chunk-size", "-2")]


@pytest.mark.parametrize("option,value", NUMBERS)
def test_numbers_are_checked_at_parse_time(run_dir, capsys, option, value):
    before = snapshot(str(run_dir))
    code, lines = run_script(simclr, args(run_dir, option, value, filename="new.pth"), capsys)
    assert_refused(code, lines, f"argument {option}", before, str(run_dir))


CASES = {  # name: (extra options, filename, expected words of the error line)
    "existing run without --resume": ([], "run.pth", "exists: pass --resume"),
    "chunk of one pair": (["--chunk-size", "1"], "new.pth", "--chunk-size"),
    "allow-changes without resume": (["--allow-changes"], "new.pth", "goes with --resume"),
    "filename is a folder": ([], "d", "is a folder"),
    "filename is the paths file": (["--overwrite"], "paths.json", "same file as --dataset-paths"),
    "filename ends in a separator": ([], "newdir/", "is a folder"),
    "folder under a file": ([], "run.csv/x/y.pth", "run.csv is a file, not a folder"),
    "resume with another temperature": (["--resume", "--temperature", "0.2"], "run.pth", "--temperature 0.5 -> 0.2"),
    "resume with another seed and weight decay": (["--resume", "--seed", "3", "--weight-decay", "0.1"], "run.pth",
                                                  "--weight-decay 0.0001 -> 0.1, --seed 0 -> 3"),
    "resume with another image size": (["--resume", "--image-size", "16"], "run.pth", "--image-size 8 -> 16"),
    "resume with another momentum, trust": (["--resume", "--momentum", "0.5", "--trust-coefficient", "0.01"],
                                            "run.pth", "--momentum 0.9 -> 0.5, --trust-coefficient 0.001 -> 0.01"),
    "resume with fewer epochs": (["--resume", "--num-epochs", "1", "--warmup-epochs", "0"], "run.pth",
                                 "--warmup-epochs 1.0 -> 0.0"),
    "resume with another batch, same steps": (["--resume", "--batch-size", "9"], "run.pth", "--batch-size 8 -> 9"),
    "resume another model": (["--resume", "--proj-dim", "8"], "run.pth", "different model"),
    "resume a checkpoint without a step": (["--resume", "NOSTEP"], "new.pth", "no model, optimizer or step"),
    "resume a missing checkpoint": (["--resume"], "none.pth", "not found"),
    "resume another run into an existing one": (["--resume", "RUN"], "other.pth", "holds another run"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_anything_is_touched(run_dir, capsys, case):
    extra, filename, words = CASES[case]
    if case == "resume another run into an existing one":
        shutil.copy(run_dir / "run.pth", run_dir / "other.pth")  # a copy: the same run id, another file
        extra = ["--resume", str(run_dir / "run.pth")]
    if case == "resume a checkpoint without a step":
        state = load_checkpoint(str(run_dir / "run.pth"))
        del state["step"]
        torch.save(state, run_dir / "nostep.pth")
        extra = ["--resume", str(run_dir / "nostep.pth")]
    before = snapshot(str(run_dir))
    code, lines = run_script(simclr, args(run_dir, *extra, filename=filename), capsys)
    assert_refused(code, lines, words, before, str(run_dir))
    assert not list(run_dir.glob("*.lock"))  # the refused run's lock is gone with it


def test_a_full_disk_is_found_before_compute(run_dir, capsys, monkeypatch):
    """Room for the probe but not for a checkpoint: refused once the model's size is known, before any step."""
    monkeypatch.setattr("utils.files.shutil.disk_usage", lambda folder: shutil._ntuple_diskusage(10**12, 10**12, 10**6))
    before = snapshot(str(run_dir))
    code, lines = run_script(simclr, args(run_dir, filename="new.pth"), capsys)
    assert_refused(code, lines, "MiB free, --filename", before, str(run_dir))
    assert not os.path.exists(run_dir / "new.csv")


def test_a_second_writer_is_refused(run_dir, capsys):
    lock = RunLock(str(run_dir / "run.pth")).acquire("run.pth")  # another open file: as another process
    try:
        before = snapshot(str(run_dir))
        code, lines = run_script(simclr, args(run_dir, "--resume"), capsys)
        assert_refused(code, lines, f"another run (pid {os.getpid()}) is writing", before, str(run_dir))
    finally:
        lock.release()


def _foreign_log(src, dst, run_id="0123456789ab"):
    """The log ``src`` with its rows stamped as another run's."""
    lines = open(src).read().splitlines()
    with open(dst, "w") as f:
        f.write("\n".join([lines[0]] + [row.rsplit(",", 1)[0] + "," + run_id for row in lines[1:]]) + "\n")


@pytest.mark.parametrize("into", ["run.pth", "fresh.pth"])
def test_a_log_of_another_run_is_refused_on_resume(run_dir, capsys, into):
    """Resuming run.pth (into itself, or into fresh.pth) where the log holds another run's rows: refused, not
    spliced."""
    _foreign_log(run_dir / "run.csv", run_dir / into.replace(".pth", ".csv"))
    before = snapshot(str(run_dir))
    code, lines = run_script(simclr, args(run_dir, "--resume", str(run_dir / "run.pth"), "--num-epochs", "2",
                                          filename=into), capsys)
    assert_refused(code, lines, "belongs to another run (run id 0123456789ab", before, str(run_dir))


def test_overwrite_replaces_and_a_resume_continues_the_log(run_dir):
    old = load_checkpoint(str(run_dir / "run.pth"))
    simclr.main(simclr.get_args_parser().parse_args(args(run_dir, "--overwrite", "--seed", "5")))
    new = load_checkpoint(str(run_dir / "run.pth"))
    assert new["run_id"] != old["run_id"] and new["args"]["seed"] == 5
    rows = open(run_dir / "run.csv").read().splitlines()[1:]
    assert len(rows) == 3 and all(r.endswith("," + new["run_id"]) for r in rows)  # the old rows are gone
    simclr.main(simclr.get_args_parser().parse_args(args(run_dir, "--resume", "--seed", "5", "--num-epochs", "2")))
    state = load_checkpoint(str(run_dir / "run.pth"))
    assert state["run_id"] == new["run_id"] and state["step"] == 6  # 20 * 2 // 8 + 1
    assert state["history"][-1]["changed"] == {"num_epochs": [1, 2]}
    rows = open(run_dir / "run.csv").read().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f or ".probe" in f or ".lock" in f]


def test_allow_changes_applies_them_and_records_them(run_dir, capsys):
    """The optimizer's saved hyperparameters are replaced by the new ones (they were silently kept before)."""
    result = simclr.main(simclr.get_args_parser().parse_args(args(
        run_dir, "--resume", "--allow-changes", "--num-epochs", "2", "--weight-decay", "0.5", "--momentum", "0.7",
        "--trust-coefficient", "0.02", "--temperature", "0.3")))
    assert "--temperature 0.5 -> 0.3" in capsys.readouterr().out and len(result["losses"]) == 1
    state = load_checkpoint(str(run_dir / "run.pth"))
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]  # the decay split: weights, then BN and biases
    assert {g["momentum"] for g in groups} == {0.7} and {g["trust_coefficient"] for g in groups} == {0.02}
    changed = state["history"][-1]["changed"]
    assert changed == {"weight_decay": [1e-4, 0.5], "momentum": [0.9, 0.7], "trust_coefficient": [1e-3, 0.02],
                       "temperature": [0.5, 0.3], "num_epochs": [1, 2]}
    assert state["history"][-1]["step"] == 3 and state["args"]["temperature"] == 0.3


def _image_tree(root, corrupt_split: str, position: int = 4):
    """An 'imagenet' tree of two image sizes (so it is read from disk by the loader, not decoded at start) with
    one corrupt image in ``corrupt_split``: in train, the ``position``-th of epoch 1's stream (4: the first image
    of the second batch of 4)."""
    write_image_folder(str(root / "in"), classes=("a", "b"), per_class=8, size=12, splits=("train", "val"))
    Image.new("RGB", (10, 10)).save(root / "in" / "train" / "a" / "0000.png")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root / "in" / corrupt_split) for f in fs)
    victim = files[EpochSampler(len(files), seed=0).order(0)[position]] if corrupt_split == "train" else files[-1]
    with open(victim, "wb") as f:
        f.write(b"\x89PNG not an image")
    return write_paths(str(root / "paths.json"), {"imagenet": "in"}), victim


def test_a_corrupt_training_image_mid_epoch_saves_the_steps_done(tmp_path, capsys):
    paths, victim = _image_tree(tmp_path, "train")
    argv = TINY[:2] + ["--batch-size", "4"] + TINY[4:] + ["--dataset", "imagenet", "--dataset-paths", paths,
                                                          "--filename", f"{tmp_path}/r.pth"]
    code, lines = run_script(simclr, argv, capsys)
    assert code == 2 and lines[-1].startswith("error: cannot decode image " + victim)
    assert "the 1 steps done are saved in" in lines[-1]
    state = load_checkpoint(str(tmp_path / "r.pth"))
    assert (state["epoch"], state["step"]) == (0, 1)


def test_the_knn_monitor_runs_after_the_save(tmp_path, capsys):
    paths, victim = _image_tree(tmp_path, "val")
    argv = TINY[:-4] + ["--test-freq", "1", "--knn-k", "3", "--num-epochs", "1", "--dataset", "imagenet",
                        "--dataset-paths", paths, "--filename", str(tmp_path / "r.pth")]
    code, lines = run_script(simclr, argv, capsys)
    assert code == 2 and lines[-1].startswith("error: cannot decode image " + victim)
    assert load_checkpoint(str(tmp_path / "r.pth"))["epoch"] == 1  # the epoch is kept


def test_sigterm_under_torchrun_stops_at_the_next_step(tmp_path):
    """2 gloo processes with a log interval of 1000 steps: SIGTERM to torchrun reaches both, they agree at the
    next step (not the next log read) and rank 0 writes a loadable checkpoint well within torchrun's 30 s."""
    write_image_folder(str(tmp_path / "d"), classes=("a", "b", "c", "d"), per_class=5, size=8)
    paths = write_paths(str(tmp_path / "paths.json"), {"cifar10": "d"})
    ckpt = str(tmp_path / "sig.pth")
    argv = TINY[:-6] + ["--log-freq", "1000", "--num-epochs", "1000", "--test-freq", "0", "--proj-dim", "16",
                        "--dataset-paths", paths, "--filename", ckpt]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}", simclr.__file__] + argv, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(ckpt.replace(".pth", ".csv")):  # written at the start
        time.sleep(0.2)
    time.sleep(1.5)  # a step or two in
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert time.time() - sent < 20, err[-2000:]
    assert "Resume with the same command plus --resume" in out, out[-2000:] + err[-2000:]
    state = load_checkpoint(ckpt)
    assert 1 <= state["step"] < 1000 and state["args"]["world_size"] == 2
    assert torch.isfinite(next(iter(state["model"].values()))).all()
