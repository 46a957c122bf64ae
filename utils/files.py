"""Every file the project writes goes through here: written atomically, checked before any compute, never
over one of the run's inputs, and (for a pretraining run) by one writer at a time.

- ``atomic_write``: a temporary file in the same folder, flushed and fsynced, renamed over the target, then
  the folder fsynced. A crash or a full disk at any point leaves the previous file whole.
- ``check_output``: the output location is usable (not a folder, the folder writable, room on the disk),
  tried with a probe file before the run computes anything.
- ``refuse_existing`` / ``refuse_same``: an output never replaces an existing file unasked, nor an input.
- ``RunLock``: an exclusive lock beside a run's checkpoint; the kernel drops it when the process dies.
"""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
from typing import Callable

import torch

from utils.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; RunLock then locks nothing
    fcntl = None


def _tmp_name(path: str) -> str:
    return f"{path}.tmp{os.getpid()}"


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; the rename is all it offers
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """``write(f)`` into a new file at ``path`` (its folder made), flushed to the disk."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then put it in place in one rename."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = _tmp_name(path)
    try:
        _write_synced(tmp, write)
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}): free some space or choose another location; "
                        f"the file that was there (if any) is untouched") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(path: str, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def save_torch(path: str, obj) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def clean_orphans(path: str) -> list[str]:
    """Remove the temporary files that a killed save of ``path`` left (their process is gone); returns them."""
    removed = []
    for tmp in glob.glob(glob.escape(path) + ".tmp*"):
        pid = tmp[len(path) + 4:]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            try:
                os.remove(tmp)
                removed.append(tmp)
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # a process of another user, or no way to tell: leave its file alone
    return True


def check_output(path: str, what: str, need_bytes: int = 0, example: str | None = "run.pth") -> None:
    """A UserError now, before any compute, if ``path`` cannot be written: it is a folder (or ends in a
    separator; ``example``: the file name the message suggests in it, if any), its folder cannot be created or
    written (a probe file is written and removed), or the disk has less than ``need_bytes`` free."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder: give a file name" +
                        (f", e.g. {os.path.join(path, example)}" if example else " (in it, if you like)"))
    folder = os.path.dirname(os.path.abspath(path))
    above = folder
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise UserError(f"cannot write {what} {path}: {above} is a file, not a folder; choose another location")
    probe = os.path.join(folder, f".{os.path.basename(path)}.probe{os.getpid()}")
    try:
        _write_synced(probe, lambda f: f.write(b"probe"))
    except OSError as e:
        raise UserError(f"cannot write {what} {path} ({e.strerror or e}): choose a writable location "
                        f"(checked before any compute)") from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UserError(f"{folder} has {free / 2**20:.0f} MiB free, {what} {path} needs about "
                        f"{need_bytes / 2**20:.0f} MiB: free some space or choose another location")


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same resolved path, or the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def refuse_same(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """A UserError if an output (option -> path) is the same file as an input."""
    for out_name, out in outputs.items():
        for in_name, src in inputs.items():
            if out and src and same_file(out, src):
                raise UserError(f"{out_name} {out} is the same file as {in_name} {src}: an output never replaces an "
                                f"input; choose another {out_name}")


def refuse_existing(path: str, overwrite: bool, what: str = "--output", instead: str | None = None) -> None:
    """A UserError if ``path`` exists and ``overwrite`` was not asked for; ``instead``: the other way out
    (default: choose another ``what``)."""
    if os.path.exists(path) and not overwrite:
        instead = instead or f"choose another {what}"
        raise UserError(f"{path} exists ({what}): pass --overwrite to replace it, or {instead}")


class RunLock:
    """An exclusive ``flock`` on ``<path>.lock``, held until ``release()`` (which removes the file) or until the
    process ends: the kernel drops the lock then, so a killed run never blocks the next (its file, holding its
    pid, stays until then)."""

    def __init__(self, path: str) -> None:
        self.path, self.fd = f"{path}.lock", None

    def acquire(self, what: str) -> "RunLock":
        if fcntl is None:
            return self
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UserError(f"another run (pid {holder}) is writing {what}: wait for it to end, or pass another "
                                f"--filename") from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break  # the file is still the one at the path: not removed by a run that just ended
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.remove(self.path)  # while still held: a run that opened it meanwhile sees it gone and retries
            except OSError:
                pass
            os.close(self.fd)  # closing drops the flock
            self.fd = None
