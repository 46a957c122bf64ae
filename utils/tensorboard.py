"""Optional TensorBoard logging beside the CSV log: the same rows, as event files a ``tensorboard --logdir`` reads.

The CSV log (utils/csvlog.py) stays the run's record (resume keeps it exact, plots and tests read it); TensorBoard is
a view of it for watching a run live, and needs the ``tensorboard`` package only when asked for (``--tensorboard
DIR``). What goes into DIR (``events.out.tfevents.*`` files, flushed at least every 30 s and at close):

- every numeric field of a logged row (``loss``, ``lr``, ``images_per_s``, ``knn_top1``, ...) as a scalar of that
  name at the row's ``step``; ``epoch``, ``step`` and ``run_id`` are the row's coordinates, not scalars;
- images: :func:`view_pairs_grid`'s picture of the two augmented views of the first images (a wrong augmentation
  shows at a glance).

:class:`Logs` tees one ``write(**row)`` to several logs, so a script writes each row once; :func:`open_tensorboard`
gives rank 0 its log (None elsewhere, and without ``--tensorboard``) after checking the folder before any compute.
"""
from __future__ import annotations

import glob
import numbers
import os
from typing import Sequence

import torch

from utils.errors import UserError
from utils.files import check_output

NOT_SCALARS = ("step", "epoch", "run_id")  # a row's coordinates
FLUSH_SECS = 30
MISSING = "--tensorboard needs the tensorboard package: pip install tensorboard"


def _summary_writer() -> type:
    """torch's SummaryWriter, imported only when TensorBoard is asked for; a one-line UserError without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if e.name and not e.name.startswith(("tensorboard", "torch.utils.tensorboard")):  # installed, but broken
            raise UserError(f"--tensorboard: the tensorboard package does not import ({e}): "
                            f"pip install -U tensorboard") from None
        raise UserError(MISSING) from None
    return SummaryWriter


def check_log_dir(log_dir: str) -> None:
    """A one-line UserError now, before any compute, if TensorBoard cannot write into ``log_dir``: the package is
    missing, ``log_dir`` is a file, or the folder cannot be created or written (a probe file is written and
    removed)."""
    _summary_writer()
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise UserError(f"--tensorboard {log_dir} is a file: give a folder for the event files")
    try:
        os.makedirs(log_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write --tensorboard {log_dir} ({e.strerror or e}): choose a writable folder "
                        f"(checked before any compute)") from None
    check_output(os.path.join(log_dir, "events"), "--tensorboard's events in")  # a probe file written and removed


def event_files(log_dir: str) -> list[str]:
    """The TensorBoard event files directly in ``log_dir`` (those of earlier runs written there)."""
    return sorted(glob.glob(os.path.join(glob.escape(log_dir), "events.out.tfevents.*")))


def claim_log_dir(log_dir: str, overwrite: bool, resume: bool | None = None) -> None:
    """Before any compute: ``log_dir`` can take events (:func:`check_log_dir`) and holds none of another run, unless
    ``overwrite`` (they are removed when the run starts: :func:`remove_events`) or ``resume`` (the run continued
    there; None: the script has no --resume)."""
    check_log_dir(log_dir)
    if event_files(log_dir) and not (overwrite or resume):
        also = "" if resume is None else "--resume to continue that run, "
        raise UserError(f"--tensorboard {log_dir} holds the events of another run: pass {also}--overwrite to replace "
                        f"them, or choose another --tensorboard")


def remove_events(log_dir: str) -> None:
    """The event files of earlier runs in ``log_dir`` removed (``--overwrite``, as the run starts)."""
    for old in event_files(log_dir):
        os.remove(old)


class TensorBoardLog:
    """The rows of a CSV log as TensorBoard scalars, and images, in ``log_dir``."""

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's first step; TensorBoard then drops the events that earlier files hold
        from that step on (written after the checkpoint by the run that stopped), as the CSV log drops its rows."""
        self.log_dir = log_dir
        self.writer = _summary_writer()(log_dir=log_dir, flush_secs=FLUSH_SECS, purge_step=purge_step)

    def write(self, **row) -> None:
        """Every numeric field but ``step``, ``epoch`` and ``run_id`` as a scalar of its name at ``row["step"]``;
        None, empty and non-numeric values (and booleans) are left out."""
        step = int(row["step"])
        for tag, value in row.items():
            if tag in NOT_SCALARS:
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), global_step=step)

    def image(self, tag: str, grid: torch.Tensor, step: int = 0) -> None:
        """``grid``: (3, H, W), float in [0, 1] (e.g. :func:`view_pairs_grid`)."""
        if grid.ndim != 3 or grid.shape[0] != 3:
            raise ValueError(f"an image is (3, H, W), got {tuple(grid.shape)}")
        self.writer.add_image(tag, grid.detach().float().cpu().clamp(0, 1), global_step=step, dataformats="CHW")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class Logs:
    """One ``write(**row)`` and ``close()`` sent to each of ``logs`` (None entries left out): a CSV log and a
    TensorBoard log written as one."""

    def __init__(self, *logs) -> None:
        self.logs = [log for log in logs if log is not None]

    def write(self, **row) -> None:
        for log in self.logs:
            log.write(**row)

    def close(self) -> None:
        for log in self.logs:
            log.close()


def view_pairs_grid(x1: torch.Tensor, x2: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    n: int = 8) -> torch.Tensor:
    """The first ``n`` images' two views, un-normalised (``x * std + mean``, clamped to [0, 1]) on the CPU in fp32:
    view 1 in the top row, view 2 below, pair i in column i, 2 px between images and around them.
    x1, x2: (B, 3, S, S), normalised by ``mean``/``std``; returns (3, 2 (S + 2) + 2, n (S + 2) + 2)."""
    from torchvision.utils import make_grid

    n = min(n, len(x1), len(x2))
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    views = torch.cat([x1[:n], x2[:n]]).detach().float().cpu()  # (2n, 3, S, S): row 1, then row 2
    return make_grid((views * s + m).clamp(0, 1), nrow=n, padding=2, pad_value=1.0)


def open_tensorboard(log_dir: str | None, is_main: bool = True, purge_step: int | None = None
                     ) -> TensorBoardLog | None:
    """The TensorBoard log of ``log_dir`` on rank 0 (its folder checked first: :func:`check_log_dir`); None
    without ``log_dir`` and on the other ranks."""
    if log_dir is None or not is_main:
        return None
    check_log_dir(log_dir)
    return TensorBoardLog(log_dir, purge_step)
