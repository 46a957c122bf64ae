"""Checkpoints: atomic writes, safe loading."""
import os

import pytest
import torch

import utils.checkpoint as ckpt
from utils.errors import UserError


def test_crash_while_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pth")
    ckpt.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = open(path, "rb").read()

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(UserError, match="disk full.*untouched"):
        ckpt.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["c.pth"]  # no temporary file left behind
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1


def test_load_is_weights_only_and_reports_corrupt_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = str(tmp_path / "evil.pth")
    torch.save({"x": Evil()}, path)
    with pytest.raises(UserError, match=r"refused: it holds a Python object \(.*system\) that loading could run code"):
        ckpt.load_checkpoint(path)
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="corrupt"):
        ckpt.load_checkpoint(str(tmp_path / "junk.pth"))
    with pytest.raises(UserError, match="not found"):
        ckpt.find_checkpoint(str(tmp_path / "missing.pth"))


def test_bare_names_go_to_the_checkpoint_folder():
    assert ckpt.checkpoint_path("output.pth") == os.path.join("checkpoint", "output.pth")
    assert ckpt.checkpoint_path("runs/a.pth") == "runs/a.pth"


def test_a_checkpoint_without_a_code_record_has_its_legacy_value(tmp_path):
    """crop_arithmetic (data/batched_augment.crop_box's, not an option) was float32 before checkpoints saved it: a
    checkpoint without it differs from this code, one with it does not; its resume is refused naming the code, or,
    with allow_changes, continues with the change recorded."""
    now = {"arch": "tiny", "optimizer": "sgd", "seed": 0, "crop_arithmetic": "float64"}
    old = {k: v for k, v in now.items() if k != "crop_arithmetic"}
    assert ckpt.LEGACY_ARGS["crop_arithmetic"] == "float32"
    assert ckpt.option_changes(old, now) == {"crop_arithmetic": ("float32", "float64")}
    assert ckpt.option_changes(now, now) == {} and ckpt.option_changes(old, old) == {}
    assert ckpt.option_changes(old, {**now, "seed": 1}) == {"crop_arithmetic": ("float32", "float64"), "seed": (0, 1)}

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for name, args in (("old", old), ("new", now)):
        ckpt.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1,
                              "step": 2, "args": args, "git_commit": "0123abc"}, str(tmp_path / f"{name}.pth"))
    resume = lambda name, args, allow: ckpt.resume(str(tmp_path / f"{name}.pth"), model, optimizer,  # noqa: E731
                                                    args, ["arch"], [0, 2, 4], allow_changes=allow)
    assert resume("new", now, False).changes == {}
    with pytest.raises(UserError) as refused:
        resume("old", now, False)
    assert str(refused.value) == (f"{tmp_path / 'old.pth'} was trained with another version of the code "
                                  f"(crop_arithmetic float32 -> float64): run the code that wrote it (commit 0123abc) "
                                  f"to continue it exactly, or --allow-changes to apply these from here on (recorded "
                                  f"in the checkpoint)")
    with pytest.raises(UserError, match=r"other options \(--seed 0 -> 1\) and another version of the code "
                                        r"\(crop_arithmetic float32 -> float64\): pass the checkpoint's values and "
                                        r"run the code that wrote it"):
        resume("old", {**now, "seed": 1}, False)
    resumed = resume("old", now, True)
    assert resumed.changes == {"crop_arithmetic": ["float32", "float64"]}
    assert resumed.history[-1]["changed"] == {"crop_arithmetic": ["float32", "float64"]}


def test_processes_and_data_are_named_as_such_not_as_flags():
    """world_size and native_size are set by torchrun and the dataset's files, not by flags: the refusal names them
    and says how to match them."""
    saved = {"batch_size": 256, "world_size": 2, "sync_bn": False, "native_size": 32}
    now = {"batch_size": 512, "world_size": 1, "sync_bn": False, "native_size": 96}
    changes = ckpt.option_changes(saved, now)
    assert changes == {"batch_size": (256, 512), "world_size": (2, 1), "native_size": (32, 96)}
    text = ckpt._refusal("r.pth", changes, "0123abc")
    assert text.startswith("r.pth was trained with other options (--batch-size 256 -> 512) and other processes or "
                           "data (processes 2 -> 1, stored image size 32 -> 96): pass the checkpoint's values and run "
                           "on as many processes (torchrun --nproc_per_node) with the same dataset files")
    assert "--world-size" not in text and "--native-size" not in text
