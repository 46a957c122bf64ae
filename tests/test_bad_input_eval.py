"""Bad input to the evaluation scripts (lbfgs_linear_clf.py, gradient_linear_clf.py, finetune.py): each case is
refused before any compute with exit 2, one ``error:`` line naming the problem, and every file as it was."""
import json
import os

import numpy as np
import pytest
import torch

import finetune
import gradient_linear_clf
import lbfgs_linear_clf
from data import subsets
from data.subsets import subset_record, write_subset
from tests.bad_input import assert_refused, run_script, snapshot
from tests.tiny_data import tiny_checkpoint
from utils.checkpoint import load_checkpoint

SCRIPTS = {"lbfgs": lbfgs_linear_clf, "sgd": gradient_linear_clf, "finetune": finetune}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint, dataset-paths file): a 1-epoch resnet18 run on 3 classes x 8 images of 8x8, at 8 px."""
    return tiny_checkpoint(str(tmp_path_factory.mktemp("bad_eval")), 8, 8, "--proj-dim", "16", "--image-size", "8")


def base(script: str, ckpt: str, paths: str) -> list[str]:
    """Arguments of a cheap run of ``script``, which the cases extend (a later option wins)."""
    common = ["--load-from", ckpt, "--dataset-paths", paths, "--num-workers", "0", "--precision", "fp32"]
    return common + {"lbfgs": ["--l2-num", "1", "--max-iter", "5", "--val-fraction", "0.25"],
                     "sgd": ["--batch-size", "8", "--num-epochs", "1"],
                     "finetune": ["--label-fraction", "0.5", "--num-epochs", "1"]}[script]


def stamp(path: str) -> tuple:
    """What an in-place write or a rename over ``path`` changes."""
    s = os.stat(path)
    return s.st_ino, s.st_size, s.st_mtime_ns


def refused(script: str, argv: list[str], match: str, tiny, tmp_path, capsys) -> None:
    """Run and assert the refusal: files under tmp_path byte-identical, the checkpoint and data untouched."""
    ckpt, paths = tiny
    before, inputs = snapshot(str(tmp_path)), {p: stamp(p) for p in (ckpt, paths)}
    beside = set(os.listdir(os.path.dirname(ckpt)))
    code, lines = run_script(SCRIPTS[script], base(script, ckpt, paths) + argv, capsys)
    assert_refused(code, lines, match, before, str(tmp_path))
    assert {p: stamp(p) for p in inputs} == inputs and set(os.listdir(os.path.dirname(ckpt))) == beside


# ------------------------------------------------------------------------------------------- numeric options
NUMBERS = {
    "lbfgs": [("--image-size", "0"), ("--image-size", "-8"), ("--num-workers", "-1"), ("--batch-size", "0"),
              ("--l2-min", "0"), ("--l2-min", "nan"), ("--l2-max", "-1"), ("--l2-max", "inf"), ("--l2-num", "0"),
              ("--max-iter", "0"), ("--val-fraction", "0"), ("--val-fraction", "1"), ("--val-fraction", "nan")],
    "sgd": [("--image-size", "0"), ("--batch-size", "0"), ("--num-epochs", "0"), ("--num-epochs", "-1"),
            ("--base-lr", "0"), ("--base-lr", "-0.1"), ("--base-lr", "nan"), ("--momentum", "-0.1"),
            ("--weight-decay", "-1"), ("--weight-decay", "nan"), ("--num-workers", "-1")],
    "finetune": [("--width-multiplier", "0"), ("--image-size", "-1"), ("--label-fraction", "0"),
                 ("--label-fraction", "1.5"), ("--label-fraction", "nan"), ("--val-fraction", "1"),
                 ("--val-fraction", "-0.1"), ("--val-freq", "0"), ("--from-head-layer", "-1"), ("--num-epochs", "0"),
                 ("--batch-size", "1"), ("--momentum", "-1"), ("--trust-coefficient", "0"), ("--base-lr", "0"),
                 ("--base-lr", "nan"), ("--weight-decay", "-1e-3"), ("--num-workers", "-1")],
}


@pytest.mark.parametrize("script,option,value", [(s, o, v) for s, cases in NUMBERS.items() for o, v in cases])
def test_a_bad_number_is_one_parse_error(script, option, value, tiny, tmp_path, capsys):
    refused(script, [option, value, "--output", str(tmp_path / "r.json")], f"argument {option}: expected", tiny,
            tmp_path, capsys)


@pytest.mark.parametrize("script,argv,match", [
    ("lbfgs", ["--l2-min", "10", "--l2-max", "1"], "--l2-min 10 is above --l2-max 1"),
    ("finetune", ["--val-freq", "2"], "--val-freq goes with --val-fraction"),
    ("finetune", ["--nesterov"], "--nesterov goes with --optimizer sgd"),
])
def test_options_that_contradict_each_other(script, argv, match, tiny, tmp_path, capsys):
    refused(script, argv + ["--output", str(tmp_path / "r.json")], match, tiny, tmp_path, capsys)


# ------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_output_never_replaces_the_checkpoint(script, tiny, tmp_path, capsys):
    ckpt, paths = tiny
    refused(script, ["--output", ckpt], "is the same file as --load-from", tiny, tmp_path, capsys)
    link = str(tmp_path / "link.json")
    os.link(ckpt, link)  # another name of the same file
    refused(script, ["--output", link], "is the same file as --load-from", tiny, tmp_path, capsys)
    if script != "finetune":
        refused(script, ["--output", paths], "is the same file as --dataset-paths", tiny, tmp_path, capsys)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_an_existing_output_needs_overwrite(script, tiny, tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text('{"earlier": "result"}\n')
    refused(script, ["--output", str(out)], "pass --overwrite", tiny, tmp_path, capsys)


def test_sgd_batch_larger_than_the_training_set(tiny, tmp_path, capsys):
    """A given --batch-size above the training set's size is refused; the recipe's (512 for cifar10) is capped at
    it, and said."""
    ckpt, paths = tiny
    refused("sgd", ["--batch-size", "100", "--output", str(tmp_path / "r.json")],
            "--batch-size 100 is larger than the training set (24 images): use --batch-size 24 or less", tiny,
            tmp_path, capsys)
    argv = ["--load-from", ckpt, "--dataset-paths", paths, "--num-workers", "0", "--precision", "fp32",
            "--num-epochs", "1", "--output", str(tmp_path / "capped.json")]
    capsys.readouterr()
    gradient_linear_clf.main(gradient_linear_clf.get_args_parser().parse_args(argv))
    assert "batch_size=24: the recipe's 512 is more than the 24 training images" in capsys.readouterr().out
    saved = json.loads((tmp_path / "capped.json").read_text())
    assert saved["batch_size"] == 24 and saved["lr"] == pytest.approx(0.1 * 24 / 256)


def test_subsets_output_replaces_nothing_unasked(tiny, tmp_path, capsys):
    """python -m data.subsets: an existing --output, or --output naming the dataset-paths file, is refused with
    every file as it was; --overwrite replaces the file with the subset."""
    _, paths = tiny
    out = tmp_path / "s.json"
    out.write_text("my notes")
    before, stamp_paths = snapshot(str(tmp_path)), open(paths, "rb").read()
    argv = ["--dataset", "cifar10", "--dataset-paths", paths, "--label-fraction", "0.5"]
    for extra, match in ((["--output", str(out)], "pass --overwrite"),
                         (["--output", paths], "is the same file as --dataset-paths")):
        assert_refused(*run_script(subsets, argv + extra, capsys), match, before, str(tmp_path))
        assert open(paths, "rb").read() == stamp_paths
    code, _ = run_script(subsets, argv + ["--output", str(out), "--overwrite"], capsys)
    assert code == 0 and json.loads(out.read_text())["per_class"] == 4


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_an_unusable_output_location_is_refused_before_compute(script, tiny, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    refused(script, ["--output", str(tmp_path / "folder")], "is a folder", tiny, tmp_path, capsys)
    refused(script, ["--output", str(tmp_path / "new") + "/"], "is a folder", tiny, tmp_path, capsys)
    (tmp_path / "afile").write_text("a file, not a folder")
    refused(script, ["--output", str(tmp_path / "afile" / "r.json")], "cannot write --output", tiny, tmp_path,
            capsys)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused(tiny, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused("lbfgs", ["--output", str(locked / "r.json")], "cannot write --output", tiny, tmp_path, capsys)
    finally:
        locked.chmod(0o700)


def test_lbfgs_output_is_not_the_feature_cache(tiny, tmp_path, capsys):
    ckpt, _ = tiny
    cache = ckpt.replace(".pth", f".features-cifar10-{load_checkpoint(ckpt)['args']['image_size']}.pt")
    refused("lbfgs", ["--cache-features", "--output", cache], "is the same file as the feature cache", tiny,
            tmp_path, capsys)


def test_lbfgs_overwrite_replaces_the_output_and_cleans_orphans(tiny, tmp_path, capsys):
    """The one case that computes: --overwrite replaces an earlier result; a killed save's temp file is removed."""
    ckpt, paths = tiny
    out = tmp_path / "r.json"
    out.write_text('{"earlier": "result"}\n')
    orphan = tmp_path / "r.json.tmp999999999"  # no such process
    orphan.write_text("half a result")
    code, _ = run_script(lbfgs_linear_clf, base("lbfgs", ckpt, paths) + ["--output", str(out), "--overwrite"],
                         capsys)
    assert code == 0 and "test_acc" in json.loads(out.read_text())
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


# ------------------------------------------------------------------------------------------- finetune's files
def test_save_model_never_replaces_an_input_or_another_output(tiny, tmp_path, capsys):
    """--save-model equal to --load-from replaced the pretraining checkpoint; no output may be an input or
    another output: --output, --save-model, the subset file drawn beside --output, --subset-file."""
    ckpt, _ = tiny
    out, drawn, subset = str(tmp_path / "r.json"), str(tmp_path / "r.subset.json"), str(tmp_path / "s.json")
    labels = np.repeat(np.arange(3), 8)
    write_subset(subset, subset_record("cifar10", labels, 0.5, 0, np.array([0, 8, 16])))
    for argv, match in [
        (["--save-model", ckpt], f"--save-model {ckpt} is the same file as --load-from"),
        (["--save-model", out], f"--output {out} is the same file as --save-model"),
        (["--save-model", drawn], f"--save-model {drawn} is the same file as the subset file of --output"),
        (["--subset-file", subset, "--save-model", subset], f"--save-model {subset} is the same file as --subset-file"),
        (["--subset-file", subset, "--output", subset], f"--output {subset} is the same file as --subset-file"),
    ]:
        refused("finetune", ["--output", out] + argv, match, tiny, tmp_path, capsys)


def test_finetune_existing_save_model_or_subset_needs_overwrite(tiny, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    model = tmp_path / "m.pth"
    model.write_bytes(b"earlier weights")
    refused("finetune", ["--output", out, "--save-model", str(model)], "pass --overwrite", tiny, tmp_path, capsys)
    refused("finetune", ["--output", out, "--save-model", str(tmp_path / "dir") + "/"], "is a folder", tiny,
            tmp_path, capsys)
    model.unlink()
    (tmp_path / "r.subset.json").write_text("an earlier subset")
    refused("finetune", ["--output", out], f"--subset-file {tmp_path / 'r.subset.json'} to train on it", tiny,
            tmp_path, capsys)


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_a_checkpoint_without_what_evaluation_needs(script, tiny, tmp_path, capsys):
    plain, corrupt = str(tmp_path / "plain.pth"), str(tmp_path / "corrupt.pth")
    torch.save({"model": {}}, plain)
    with open(corrupt, "wb") as f:
        f.write(b"PK\x03\x04 not a whole checkpoint")
    out = ["--output", str(tmp_path / "r.json")]
    refused(script, ["--load-from", plain] + out, "pass --arch and --stem", tiny, tmp_path, capsys)
    refused(script, ["--load-from", plain, "--arch", "resnet18", "--stem", "cifar"] + out, "missing keys", tiny,
            tmp_path, capsys)
    refused(script, ["--load-from", corrupt] + out, "cannot load checkpoint", tiny, tmp_path, capsys)
    refused(script, ["--load-from", str(tmp_path / "none.pth")] + out, "not found", tiny, tmp_path, capsys)

