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
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        ckpt.load_checkpoint(path)
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="corrupt"):
        ckpt.load_checkpoint(str(tmp_path / "junk.pth"))
    with pytest.raises(UserError, match="not found"):
        ckpt.find_checkpoint(str(tmp_path / "missing.pth"))


def test_bare_names_go_to_the_checkpoint_folder():
    assert ckpt.checkpoint_path("output.pth") == os.path.join("checkpoint", "output.pth")
    assert ckpt.checkpoint_path("runs/a.pth") == "runs/a.pth"
