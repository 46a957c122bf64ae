"""Checkpoints written atomically and read without running code from the file."""
from __future__ import annotations

import os
import subprocess

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
