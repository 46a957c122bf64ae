"""TensorBoard logging (utils/tensorboard.py, finetune.py --tensorboard): what is written is read back with
TensorBoard's own reader (EventAccumulator), a second implementation."""
import csv
import os
import sys

import numpy as np
import pytest
import torch
from torchvision import transforms as T

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import finetune  # noqa: E402
from data.augment import train_linear_transform  # noqa: E402
from data.datasets import ArrayImages  # noqa: E402
from data.sampler import EpochSampler  # noqa: E402
from data.views import SeededTransformed  # noqa: E402
from tests.test_finetune import run  # noqa: E402
from tests.tiny_data import write_image_folder, write_paths  # noqa: E402
from utils.csvlog import CSVLog  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.tensorboard import (MISSING, Logs, TensorBoardLog, event_files, open_tensorboard,  # noqa: E402
                               view_pairs_grid)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def read_events(log_dir: str) -> EventAccumulator:
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "images": 0})  # 0: keep every event
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator) -> dict:
    """tag -> [(step, value)]"""
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(x) -> float:
    return float(np.float32(x))


def test_rows_become_scalars_at_their_step(tmp_path):
    """The rows simclr.py and training/loop.py log: each numeric field but step/epoch/run_id a scalar of its name
    at the row's step, float32; None, empty and non-numeric values left out."""
    log = TensorBoardLog(str(tmp_path))
    log.write(epoch=1, step=10, lr=0.3, loss=5.25, images_per_s=1234.5)
    log.write(epoch=1, step=20, lr=torch.tensor(0.25), loss=np.float32(4.75), images_per_s=None)
    log.write(epoch=1, step=20, knn_top1=12.5, run_id="abc", note="text", flag=True, empty="")
    log.close()
    assert scalars(read_events(str(tmp_path))) == {
        "lr": [(10, f32(0.3)), (20, f32(0.25))], "loss": [(10, f32(5.25)), (20, f32(4.75))],
        "images_per_s": [(10, f32(1234.5))], "knn_top1": [(20, 12.5)]}


def test_image_is_written_with_its_shape(tmp_path):
    log = TensorBoardLog(str(tmp_path))
    log.image("views", torch.rand(3, 22, 42), step=3)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        log.image("bad", torch.rand(1, 3, 8, 8))
    log.close()
    [image] = read_events(str(tmp_path)).Images("views")
    assert (image.step, image.height, image.width) == (3, 22, 42)
    assert image.encoded_image_string.startswith(b"\x89PNG")


def test_logs_writes_each_row_to_the_csv_and_tensorboard(tmp_path):
    path, tb_dir = str(tmp_path / "log.csv"), str(tmp_path / "tb")
    log = Logs(CSVLog(path, ["epoch", "step", "lr", "loss", "knn_top1", "run_id"], "r1"), None, TensorBoardLog(tb_dir))
    log.write(epoch=1, step=4, lr=0.5, loss=3.0)
    log.write(epoch=1, step=4, knn_top1=40.0)
    log.close()
    rows = list(csv.DictReader(open(path)))
    assert [(r["step"], r["lr"], r["loss"], r["knn_top1"], r["run_id"]) for r in rows] == [
        ("4", "0.5", "3", "", "r1"), ("4", "", "", "40", "r1")]
    assert scalars(read_events(tb_dir)) == {"lr": [(4, 0.5)], "loss": [(4, 3.0)], "knn_top1": [(4, 40.0)]}


def test_view_pairs_grid_unnormalises_and_lays_out_pairs():
    """Pair i's view 1 at row 0, column i, its view 2 below, 2 px apart; the known images come back within 1e-6."""
    torch.manual_seed(0)
    b, s, n = 5, 6, 3
    img1, img2 = torch.rand(b, 3, s, s), torch.rand(b, 3, s, s)
    img1[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.5])  # the ends of [0, 1] come back too
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x1 = ((img1 - mean) / std).to(torch.float64)  # any dtype
    x2 = ((img2 - mean) / std).to(torch.bfloat16).float()  # rounded: no longer within 1e-6, checked coarsely
    grid = view_pairs_grid(x1, x2, MEAN, STD, n=n)
    assert grid.shape == (3, 2 * (s + 2) + 2, n * (s + 2) + 2) and grid.dtype == torch.float32
    assert grid.min() >= 0 and grid.max() <= 1

    def cell(row: int, col: int) -> torch.Tensor:
        top, left = 2 + row * (s + 2), 2 + col * (s + 2)
        return grid[:, top:top + s, left:left + s]

    for i in range(n):
        assert torch.allclose(cell(0, i), img1[i], rtol=0, atol=1e-6), i
        assert torch.allclose(cell(1, i), img2[i], rtol=0, atol=0.02), i
    assert torch.equal(grid[:, :2], torch.ones(3, 2, grid.shape[2]))  # the gaps
    assert torch.equal(grid[:, s + 2:s + 4], torch.ones(3, 2, grid.shape[2]))
    clamped = view_pairs_grid(torch.full((2, 3, s, s), 9.0), torch.full((2, 3, s, s), -9.0), MEAN, STD)
    assert clamped.shape[2] == 2 * (s + 2) + 2  # n above the batch: the batch
    assert clamped[:, 2:2 + s, 2:2 + s].min() == 1.0
    assert clamped[:, s + 4:2 * s + 4, 2:2 + s].max() == 0.0


@pytest.mark.parametrize("module", ["torch.utils.tensorboard", "tensorboard"])
def test_missing_package_is_one_line(tmp_path, monkeypatch, module):
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)  # imported afresh
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    for make in (lambda: TensorBoardLog(str(tmp_path / "a")), lambda: open_tensorboard(str(tmp_path / "b"))):
        with pytest.raises(UserError) as e:
            make()
        assert str(e.value) == MISSING == "--tensorboard needs the tensorboard package: pip install tensorboard"
    assert not os.listdir(tmp_path)  # nothing made


def test_open_tensorboard_on_rank_0_only_and_checks_the_folder(tmp_path):
    assert open_tensorboard(None) is None
    assert open_tensorboard(str(tmp_path / "r1"), is_main=False) is None and not os.listdir(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file: give a folder"):
        open_tensorboard(str(tmp_path / "file"))
    with pytest.raises(UserError, match="cannot write --tensorboard"):
        open_tensorboard(str(tmp_path / "file" / "sub"))
    log = open_tensorboard(str(tmp_path / "new" / "tb"))
    log.close()
    assert len(event_files(str(tmp_path / "new" / "tb"))) == 1
    assert [f for f in os.listdir(tmp_path / "new" / "tb") if "probe" in f] == []


def test_finetune_augmentation_grid_is_the_first_training_batch():
    """The picture's bottom row is epoch 1's first batch as training sees it (keyed views, no RNG consumed)."""
    rng = np.random.default_rng(0)
    images = ArrayImages(rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), np.arange(6) % 2, ["a", "b"])
    loader = torch.utils.data.DataLoader(SeededTransformed(images, train_linear_transform(8, MEAN, STD), 3),
                                         batch_size=4, sampler=EpochSampler(6, seed=3), drop_last=True)
    unaugmented = T.Compose(train_linear_transform(8, MEAN, STD).transforms[-2:])  # ToTensor, Normalize
    state = torch.get_rng_state()
    grid = finetune.augmentation_grid(loader, unaugmented, MEAN, STD, n=4)
    assert torch.equal(torch.get_rng_state(), state)
    loader.sampler.set_epoch(0)
    batch, _ = next(iter(loader))
    expected = view_pairs_grid(batch, batch, MEAN, STD, n=4)
    assert torch.equal(grid[:, 12:], expected[:, 12:])  # the bottom row (and its border)
    order = loader.sampler.order(0)[:4]
    plain = torch.from_numpy(images.images[order]).permute(0, 3, 1, 2) / 255.0
    assert torch.allclose(grid[:, 2:10, 2:42].reshape(3, 8, 4, 10)[..., :8].permute(2, 0, 1, 3), plain, atol=1e-6)


def test_finetune_writes_its_history_and_test_scores(tmp_path):
    """One short fine-tuning with --tensorboard: every epoch's scalars equal the result's history, the test scores
    its top1/top5/test_loss at the reported epoch; a folder with events is refused unless --overwrite, which
    replaces them."""
    write_image_folder(str(tmp_path / "d"), classes=("a", "b", "c"), per_class=10, size=8)
    paths = write_paths(str(tmp_path / "paths.json"), {"cifar10": "d"})
    tb = str(tmp_path / "tb")
    base = ["--from-scratch", "--arch", "resnet18", "--dataset", "cifar10", "--image-size", "8", "--tensorboard", tb]
    result = run(None, paths, tmp_path, *base, "--val-fraction", "0.2")  # 2 epochs of 1 step, validated
    acc = read_events(tb)
    got = scalars(acc)
    history = result["history"]
    assert len(history) == 2 and result["reported_epoch"] in (1, 2)
    for tag in ("loss", "lr", "val_top1", "val_top5", "val_loss"):
        assert got[tag] == [(row["epoch"], f32(row[tag])) for row in history], tag
    for tag in ("top1", "top5", "test_loss"):
        assert got[tag] == [(result["reported_epoch"], f32(result[tag]))], tag
    assert set(got) == {"loss", "lr", "val_top1", "val_top5", "val_loss", "top1", "top5", "test_loss"}
    [image] = acc.Images("augmentation")
    assert (image.step, image.height, image.width) == (0, 2 * 10 + 2, 8 * 10 + 2)  # 8 pairs of 8x8 images
    [first] = event_files(tb)
    with pytest.raises(UserError, match="holds the events of another run: pass --overwrite"):
        run(None, paths, tmp_path, *base, name="again.json")
    assert event_files(tb) == [first]
    again = run(None, paths, tmp_path, *base, "--num-epochs", "1", "--overwrite", name="again.json")
    [replaced] = event_files(tb)  # the earlier run's events removed, only this run's shown
    assert replaced != first and scalars(read_events(tb))["loss"] == [(1, f32(again["history"][0]["loss"]))]


def test_simclr_writes_the_log_rows_and_a_resume_after_a_crash_replaces_the_lost_steps(tmp_path):
    """simclr.py --tensorboard: the view pairs once, and one loss scalar per step equal to the CSV's. A crash after
    the checkpoint (here: epoch 2 logged, then the epoch-1 checkpoint put back) is resumed from that checkpoint;
    the CSV drops the rows after it and TensorBoard purges the events (purge_step), so each step is there once."""
    import shutil

    import simclr
    write_image_folder(str(tmp_path / "d"), classes=("a", "b"), per_class=8, size=8, splits=("",))
    board = str(tmp_path / "tb")
    ckpt = str(tmp_path / "run.pth")
    argv = ["--dataset", str(tmp_path / "d"), "--arch", "resnet18", "--batch-size", "8", "--num-workers", "0",
            "--precision", "fp32", "--device", "cpu", "--warmup-epochs", "1", "--log-freq", "1", "--proj-dim", "16",
            "--test-freq", "0", "--filename", ckpt, "--tensorboard", board]
    run = lambda *extra: simclr.main(simclr.get_args_parser().parse_args(argv + list(extra)))  # noqa: E731
    run("--num-epochs", "1")
    shutil.copy(ckpt, str(tmp_path / "epoch1.pth"))
    run("--num-epochs", "2", "--resume")
    shutil.copy(str(tmp_path / "epoch1.pth"), ckpt)  # the crash: epoch 2 is in both logs, not in the checkpoint
    run("--num-epochs", "2", "--resume")
    with open(ckpt.replace(".pth", ".csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["loss"]]
    acc = read_events(board)
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows] == list(range(1, 6))  # 16 * 2 // 8 + 1 steps
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-5)  # CSV: 6 digits
    assert acc.Tags()["images"] == ["view_pairs"]
    # Another run into the same folder: refused before any compute, the events untouched; --overwrite replaces them.
    before = {f: open(f, "rb").read() for f in event_files(board)}
    with pytest.raises(UserError, match="holds the events of another run: pass --resume to continue that run, "
                                        "--overwrite to replace them"):
        run("--num-epochs", "1", "--filename", str(tmp_path / "other.pth"))
    assert {f: open(f, "rb").read() for f in event_files(board)} == before
    run("--num-epochs", "1", "--filename", str(tmp_path / "other.pth"), "--overwrite")
    assert len(event_files(board)) == 1 and not set(event_files(board)) & set(before)
