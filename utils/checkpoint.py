"""Checkpoints written atomically and read without running code from the file."""
from __future__ import annotations

import os
import subprocess
import time

import torch

from utils.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``:
    a crash while writing leaves the previous checkpoint intact."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> dict:
    """Load on the CPU with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} not found: check the path") from None
    except Exception as e:
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


def resume(filename: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, signature: dict,
           optimizer_name: str, steps_per_epoch: int) -> tuple[str, int, int]:
    """Load a checkpoint of ``simclr.py`` into ``model`` and ``optimizer``; returns (path, epochs done, step).

    Refused with a message naming the difference: another model (``signature``: the args the weights depend
    on), another optimizer, or another number of steps per epoch (batch size or dataset)."""
    path = find_checkpoint(filename)
    state = load_checkpoint(path)
    saved = state.get("args", {})
    held = {k: saved.get(k) for k in signature}
    if held != signature:
        raise UserError(f"{path} holds a different model ({held}) than asked for ({signature}): pass the same "
                        f"--arch/--stem/--proj-* options")
    if saved.get("optimizer") != optimizer_name:
        raise UserError(f"{path} was trained with --optimizer {saved.get('optimizer')}: resume with it")
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:
        raise UserError(f"{path}: its optimizer state does not fit this version's parameter groups ({e}); it was "
                        f"written by an older version of this code: resume with that version") from None
    epoch, step = state["epoch"], state["step"]
    if not 0 <= step - epoch * steps_per_epoch < steps_per_epoch:
        raise UserError(f"{path} was written with {step // max(epoch, 1)} steps per epoch, this run has "
                        f"{steps_per_epoch}: resume with the same --batch-size and dataset")
    return path, epoch, step


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
