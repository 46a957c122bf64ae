"""Checkpoints written atomically, read without running code from the file, and resumed exactly or refused."""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass

import torch

from utils import REPO_ROOT
from utils.errors import UserError
from utils.files import save_torch



def checkpoint_path(filename: str) -> str:
    """A bare file name goes into ``./checkpoint/`` (as in the original pytorch-simclr); a path is kept."""
    return filename if os.path.dirname(filename) else os.path.join("checkpoint", filename)


def find_checkpoint(filename: str) -> str:
    """The existing file for ``filename``, as given or under ``./checkpoint/``."""
    for path in (filename, checkpoint_path(filename)):
        if os.path.isfile(path):
            return path
    raise UserError(f"checkpoint {filename} not found (looked in . and ./checkpoint/): check the file name")


def save_checkpoint(state: dict, path: str) -> None:
    """Write atomically (utils/files.py): a crash or a full disk while writing leaves the previous checkpoint."""
    save_torch(path, state)


def load_checkpoint(path: str) -> dict:
    """Load on the CPU with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} not found: check the path") from None
    except Exception as e:
        code = re.search(r"GLOBAL (\S+)", str(e))  # weights_only's refusal of an object a pickle would build
        if code:
            raise UserError(f"checkpoint {path} refused: it holds a Python object ({code.group(1)}) that loading "
                            f"could run code for; checkpoints of this repository hold tensors and plain values "
                            f"only") from None
        raise UserError(f"cannot load checkpoint {path} ({type(e).__name__}): the file is corrupt or not a "
                        f"checkpoint of this repository") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a checkpoint of this repository (expected a dict)")
    return state


def git_commit() -> str:
    """The repository's HEAD commit, with ``-dirty`` when files differ from it; ``unknown`` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Options that do not change what is computed: they may differ on --resume (num_epochs may also grow); lr is
# derived from base_lr, batch_size and lr_scaling, which are compared.
RESUME_FREE = frozenset({"lr", "num_workers", "log_freq", "save_freq", "test_freq", "knn_k", "device", "precision",
                         "channels_last", "compile", "filename", "resume", "overwrite", "allow_changes",
                         "dataset_paths", "num_epochs", "tensorboard",
                         "test_fraction", "decode"})


# The value of args that checkpoints written before them lack: records of how the code computes (CODE_RECORDS, not
# options), and options added since, at the value that older code always used.
LEGACY_ARGS = {"crop_arithmetic": "float32",  # data/batched_augment.crop_box: float64 since issue 27
               "augment": "torchvision",  # --augment, since issue 28
               "batching": "epochs"}  # --batching, since issue 28
CODE_RECORDS = frozenset({"crop_arithmetic"})


def option_changes(saved: dict, now: dict) -> dict[str, tuple]:
    """{option: (checkpoint's value, this run's)} for the options that change the computation and differ;
    ``num_epochs`` only when it shrinks (a larger one extends the run); the number of processes only when BN
    statistics are not global (several processes without SyncBN) on one side. An arg of ``LEGACY_ARGS`` that
    the checkpoint lacks has its legacy value."""
    saved = {**LEGACY_ARGS, **saved}
    free = set(RESUME_FREE)
    if all(a.get("world_size") == 1 or a.get("sync_bn") for a in (saved, now)):
        free |= {"world_size", "sync_bn"}  # BN over the global batch either way: the same steps (views are global)
    changes = {k: (saved[k], v) for k, v in now.items() if k in saved and k not in free and saved[k] != v}
    if now.get("num_epochs", 0) < saved.get("num_epochs", 0):
        changes["num_epochs"] = (saved["num_epochs"], now["num_epochs"])
    return changes


# Args that no flag sets: the number of processes (torchrun's) and the stored size of the dataset's images.
DERIVED = {"world_size": "processes", "native_size": "stored image size"}


def change_text(key: str, old, new) -> str:
    """One change as the messages say it: an option as its flag, a record of the code (CODE_RECORDS) or an arg
    that no flag sets (DERIVED) by its name."""
    name = key if key in CODE_RECORDS else DERIVED.get(key, "--" + key.replace("_", "-"))
    return f"{name} {old} -> {new}"


def _refusal(path: str, changes: dict[str, tuple], commit: str) -> str:
    """Why a resume is refused: the options that differ as command-line flags, the processes or data that differ,
    then the records of the code (``CODE_RECORDS``: only the code that wrote the checkpoint continues it exactly)."""
    options = [change_text(k, *v) for k, v in changes.items() if k not in CODE_RECORDS and k not in DERIVED]
    setting = [change_text(k, *v) for k, v in changes.items() if k in DERIVED]
    code = [change_text(k, *v) for k, v in changes.items() if k in CODE_RECORDS]
    said, fix = [], []
    if options:
        said.append(f"other options ({', '.join(options)})")
        fix.append("pass the checkpoint's values")
    if setting:
        said.append(f"other processes or data ({', '.join(setting)})")
        fix.append("run on as many processes (torchrun --nproc_per_node) with the same dataset files")
    if code:
        said.append(f"another version of the code ({', '.join(code)})")
        fix.append(f"run the code that wrote it (commit {commit})")
    return (f"{path} was trained with {' and '.join(said)}: {' and '.join(fix)} to continue it exactly, or "
            f"--allow-changes to apply these from here on (recorded in the checkpoint)")


@dataclass
class Resumed:
    path: str
    epoch: int  # epochs completed
    step: int  # optimizer steps done (further than the epoch's first step after a mid-epoch stop)
    run_id: str | None  # None: a checkpoint written before run ids
    history: list  # the checkpoint's record of changes made on resume, this one's last
    changes: dict  # {option: [checkpoint's value, this run's]} of this resume: allowed changes, a longer run


def resume(filename: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, args: dict,
           model_keys: list[str], starts: list[int], allow_changes: bool) -> Resumed:
    """Load a checkpoint of ``simclr.py`` into ``model`` and ``optimizer`` to continue it exactly.

    Refused, with the list of differences, when an option that changes the computation differs from the
    checkpoint's (``option_changes``), unless ``allow_changes``: then the new values are applied (the optimizer's
    hyperparameters are this run's, not the saved ones) and recorded in the history. Always refused: another
    model (``model_keys``), another optimizer, a step outside its epoch's steps (``starts``: the first step of
    each epoch and the run's end, data/sampler.epoch_starts)."""
    path = find_checkpoint(filename)
    state = load_checkpoint(path)
    saved = state.get("args", {})
    if not isinstance(saved, dict) or "model" not in state or "optimizer" not in state or "step" not in state:
        raise UserError(f"{path} is not a checkpoint of simclr.py (no model, optimizer or step): resume from the "
                        f"file that simclr.py wrote")
    held, asked = {k: saved.get(k) for k in model_keys}, {k: args[k] for k in model_keys}
    if held != asked:
        raise UserError(f"{path} holds a different model ({held}) than asked for ({asked}): pass the same "
                        f"--arch/--stem/--proj-* options")
    if saved.get("optimizer") != args["optimizer"]:
        raise UserError(f"{path} was trained with --optimizer {saved.get('optimizer')}: resume with it")
    changes = option_changes(saved, args)
    if changes and not allow_changes:
        raise UserError(_refusal(path, changes, state.get("git_commit", "unknown")))
    epoch, step = state["epoch"], state["step"]
    last = len(starts) - 1  # this run's epochs: one that has them all done (or more) has nothing left to do
    if not (starts[epoch] <= step < starts[epoch + 1] if epoch < last else step >= starts[last]):
        raise UserError(f"{path} stopped at step {step} after {epoch} epochs, which this run's epochs do not hold "
                        f"(another batch size, dataset or --batching): resume with the checkpoint's")
    model.load_state_dict(state["model"])
    ours = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:
        raise UserError(f"{path}: its optimizer state does not fit this version's parameter groups ({e}); it was "
                        f"written by an older version of this code: resume with that version") from None
    for group, hyper in zip(optimizer.param_groups, ours):  # this run's weight decay, momentum, trust, not the file's
        group.update(hyper)
    record = {k: [old, new] for k, (old, new) in changes.items()}
    if args.get("num_epochs", 0) > saved.get("num_epochs", args.get("num_epochs", 0)):
        record["num_epochs"] = [saved["num_epochs"], args["num_epochs"]]
    history = list(state.get("history", [])) + ([{"step": step, "changed": record, "git_commit": git_commit()}]
                                                if record else [])
    return Resumed(path, epoch, step, state.get("run_id"), history, record)


class Saver:
    """Writes the checkpoint every ``freq`` epochs, or (``freq`` None) after an epoch once 100 times the last
    write's duration has passed since it (under 1% of the run); always at the end and when forced."""

    def __init__(self, save, freq: int | None, num_epochs: int) -> None:
        self.save, self.freq, self.num_epochs = save, freq, num_epochs
        self.last, self.cost = time.perf_counter(), 0.0

    def __call__(self, done: int, force: bool = False) -> None:
        due = (done % self.freq == 0) if self.freq else time.perf_counter() - self.last >= 100 * self.cost
        if force or due or done == self.num_epochs:
            start = time.perf_counter()
            self.save(done)
            self.last, self.cost = time.perf_counter(), time.perf_counter() - start
