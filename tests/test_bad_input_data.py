"""Bad input at the level of ``load_split`` / ``load_train_test``: each malformed or crafted file is refused at
load with one line that names the file and the fix, nothing in the data folder changes, and no code in a data
file or checkpoint runs."""
from __future__ import annotations

import builtins
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from data.datasets import _unpickle, load_train_test
from tests.bad_input import snapshot
from tests.tiny_data import (Call, write_cifar10_pickles, write_cifar100_pickles, write_gray16, write_image_folder,
                             write_paths, write_pickle, write_stl_binary)
from utils.checkpoint import load_checkpoint
from utils.errors import UserError

C10 = "cifar-10-batches-py"
C100 = "cifar-100-python"


def touch(marker: str) -> dict:
    """Payloads whose unpickling would create ``marker``, one per way of running code."""
    return {"os.system": Call(os.system, f"touch {marker}"),
            "exec": Call(builtins.exec, f"open({marker!r}, 'w').close()"),
            "eval": Call(builtins.eval, f"open({marker!r}, 'w').close()"),
            "subprocess": Call(subprocess.call, ["touch", marker])}


def pickled(folder: str, name: str, edit):
    """A case: the tiny CIFAR copy with file ``folder/name`` replaced by ``edit(its object, marker path)``."""
    def setup(root: str) -> str:
        (write_cifar10_pickles if folder == C10 else write_cifar100_pickles)(root)
        path = os.path.join(root, folder, name)
        write_pickle(path, edit(_unpickle(path), os.path.join(root, "pwned")))
        return "cifar10" if folder == C10 else "cifar100"
    return setup


def written(folder: str, name: str, raw: bytes):
    """A case: the tiny CIFAR copy with file ``folder/name`` holding ``raw``."""
    def setup(root: str) -> str:
        (write_cifar10_pickles if folder == C10 else write_cifar100_pickles)(root)
        with open(os.path.join(root, folder, name), "wb") as f:
            f.write(raw)
        return "cifar10" if folder == C10 else "cifar100"
    return setup


def stl(edit):
    """A case: the tiny STL-10 copy, then ``edit(its folder)``."""
    def setup(root: str) -> str:
        write_stl_binary(root)
        edit(os.path.join(root, "stl10_binary"))
        return "stl10"
    return setup


def tree(edit):
    """A case: a tiny ImageFolder tree (train/, test/) read as cifar10, then ``edit(its train folder)``."""
    def setup(root: str) -> str:
        write_image_folder(root, per_class=2)
        edit(os.path.join(root, "train"))
        return "cifar10"
    return setup


def without(key: bytes):
    return lambda b, _: {k: v for k, v in b.items() if k != key}


def relabel(key: bytes, change):
    return lambda b, _: {**b, key: change(list(b[key]))}


def set_byte(path: str, i: int, value: int) -> None:
    raw = bytearray(open(path, "rb").read())
    raw[i] = value
    with open(path, "wb") as f:
        f.write(raw)


def cut(path: str, n: int) -> None:
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[:-n])


def nested_truncated(train: str) -> None:
    os.makedirs(os.path.join(train, "dog", "more"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(train, "dog", "more", "x.png"))
    cut(os.path.join(train, "dog", "more", "x.png"), 30)


def truncated_16_bit(train: str) -> None:
    path = write_gray16(os.path.join(train, "cat", "deep.png"), np.full((8, 8), 40000, np.uint16))
    cut(path, 30)


CASES = {
    # 1: a crafted pickle names a function: refused before it runs
    **{f"crafted batch ({how})": (pickled(C10, "data_batch_3", lambda b, m, how=how: {**b, b"data": touch(m)[how]}),
                                  "data_batch_3 holds a pickled") for how in ("os.system", "exec", "eval",
                                                                              "subprocess")},
    "crafted meta": (pickled(C10, "batches.meta", lambda b, m: touch(m)["exec"]),
                     "batches.meta holds a pickled builtins.exec"),
    "crafted test batch": (pickled(C10, "test_batch", lambda b, m: [b, touch(m)["subprocess"]]),
                           "test_batch holds a pickled subprocess.call"),
    "crafted cifar100": (pickled(C100, "train", lambda b, m: {**b, b"coarse_labels": touch(m)["eval"]}),
                         "train holds a pickled builtins.eval"),
    "crafted numpy global": (pickled(C10, "data_batch_1", lambda b, m: {**b, b"data": Call(np.load, m)}),
                             "holds a pickled numpy.load"),
    # 2: malformed batches
    "batch not a dict": (pickled(C10, "data_batch_2", lambda b, _: list(b.values())), "data_batch_2 holds a list"),
    "no data": (pickled(C10, "data_batch_2", without(b"data")), "data_batch_2 has no b'data' entry"),
    "no labels": (pickled(C10, "data_batch_4", without(b"labels")), "data_batch_4 has no b'labels' entry"),
    "no fine labels": (pickled(C100, "test", without(b"fine_labels")), "test has no b'fine_labels' entry"),
    "data 1024 wide": (pickled(C10, "data_batch_1", lambda b, _: {**b, b"data": b[b"data"][:, :1024]}),
                       "data_batch_1: b'data' is a uint8 array of shape (4, 1024)"),
    "data float": (pickled(C10, "data_batch_1", lambda b, _: {**b, b"data": b[b"data"].astype(np.float32)}),
                   "not N x 3072 uint8"),
    "data 3-d": (pickled(C10, "data_batch_1", lambda b, _: {**b, b"data": b[b"data"].reshape(4, 3, 1024)}),
                 "not N x 3072 uint8"),
    "data bytes": (pickled(C10, "data_batch_1", lambda b, _: {**b, b"data": b[b"data"].tobytes()}),
                   "b'data' is a bytes"),
    "fewer labels": (pickled(C10, "data_batch_5", relabel(b"labels", lambda y: y[:-1])),
                     "data_batch_5 has 3 labels for 4 images"),
    "more labels": (pickled(C10, "test_batch", relabel(b"labels", lambda y: y + [0])),
                    "test_batch has 5 labels for 4 images"),
    "label -1": (pickled(C10, "data_batch_2", relabel(b"labels", lambda y: [-1] + y[1:])),
                 "data_batch_2: 1 of 4 labels are not a class 0..9 (image 0 has -1)"),
    "label 10": (pickled(C10, "test_batch", relabel(b"labels", lambda y: y[:3] + [10])),
                 "test_batch: 1 of 4 labels are not a class 0..9 (image 3 has 10)"),
    "label 100": (pickled(C100, "train", relabel(b"fine_labels", lambda y: [100] * len(y))),
                  "train: 6 of 6 labels are not a class 0..99 (image 0 has 100)"),
    "labels float": (pickled(C10, "data_batch_3", relabel(b"labels", lambda y: [0.5] * len(y))),
                     "data_batch_3: b'labels' is not a list of integers"),
    "labels bytes": (pickled(C10, "data_batch_3", lambda b, _: {**b, b"labels": bytes(4)}),
                     "b'labels' is not a list of integers"),
    "meta not a dict": (pickled(C10, "batches.meta", lambda b, _: b[b"label_names"]),
                        "batches.meta holds a list, not CIFAR class names"),
    "meta without names": (pickled(C100, "meta", without(b"fine_label_names")),
                           "meta holds a dict without b'fine_label_names'"),
    "meta names not a list": (pickled(C10, "batches.meta", lambda b, _: {b"label_names": 10}),
                              "b'label_names' is not a list of class names"),
    "meta no names": (pickled(C10, "batches.meta", lambda b, _: {b"label_names": []}),
                      "b'label_names' is not a list of class names"),
    "batch not a pickle": (written(C10, "data_batch_1", b"hello"), "cannot read"),
    "batch empty": (written(C100, "test", b""), "cannot read"),
    # 3 and 4: a corrupt image is named, in a subfolder of a class and as 16-bit grayscale
    "corrupt image in a subfolder": (tree(nested_truncated), "dog/more/x.png"),
    "corrupt 16-bit png": (tree(truncated_16_bit), "cat/deep.png"),
    # 6: STL-10
    "stl fewer labels": (stl(lambda f: cut(os.path.join(f, "train_y.bin"), 1)),
                         "train_y.bin holds 2 labels for the 3 images of"),
    "stl more labels": (stl(lambda f: open(os.path.join(f, "test_y.bin"), "ab").write(b"\x01")),
                        "test_y.bin holds 4 labels for the 3 images of"),
    "stl label 0": (stl(lambda f: set_byte(os.path.join(f, "test_y.bin"), 1, 0)),
                    "test_y.bin: 1 of 3 labels are not a class 1..10 (image 1 has 0)"),
    "stl label 11": (stl(lambda f: set_byte(os.path.join(f, "train_y.bin"), 0, 11)),
                     "train_y.bin: 1 of 3 labels are not a class 1..10 (image 0 has 11)"),
    "stl no test labels": (stl(lambda f: os.remove(os.path.join(f, "test_y.bin"))), "missing file"),
    "stl empty class names": (stl(lambda f: open(os.path.join(f, "class_names.txt"), "w").close()),
                              "class_names.txt is empty"),
    "stl truncated images": (stl(lambda f: cut(os.path.join(f, "test_X.bin"), 7)), "test_X.bin is truncated"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_refused_at_load_with_one_line(tmp_path, case):
    setup, match = CASES[case]
    name = setup(str(tmp_path))
    paths = write_paths(str(tmp_path / "p.json"), {name: "."})
    before = snapshot(str(tmp_path))
    with pytest.raises(UserError) as e:
        load_train_test(name, paths)
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    assert any(fix in msg for fix in ("again", "delete or replace", "unpack")), msg
    assert not (tmp_path / "pwned").exists(), "a data file ran code"
    assert snapshot(str(tmp_path)) == before


def test_the_crafted_payloads_do_run_under_plain_pickle(tmp_path):
    """The payloads of the matrix are live: plain ``pickle.load`` runs each (so their refusal above means
    something)."""
    import pickle
    for how, payload in touch(str(tmp_path / "pwned")).items():
        pickle.loads(pickle.dumps(payload))
        assert (tmp_path / "pwned").exists(), how
        os.remove(tmp_path / "pwned")


@pytest.mark.parametrize("how", ["os.system", "exec", "subprocess"])
def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, how):
    """``torch.load(weights_only=True)``: a checkpoint whose pickle calls a function is refused, one line."""
    path = str(tmp_path / "ckpt.pth")
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": touch(str(tmp_path / "pwned"))[how]}, path)
    before = snapshot(str(tmp_path))
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and path in str(e.value) and "could run code" in str(e.value)
    assert not (tmp_path / "pwned").exists(), "the checkpoint ran code"
    assert snapshot(str(tmp_path)) == before
    with open(path, "wb") as f:  # a damaged file is told apart from a crafted one
        f.write(b"not a checkpoint at all")
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        load_checkpoint(path)
