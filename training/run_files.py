"""A pretraining run's files, before its first step: the checkpoint's location claimed for this run alone (or
the run refused), and the run it continues, resumed exactly (or refused with the differences)."""
from __future__ import annotations

import os
import uuid

from training.build import Pretraining
from training.config import PretrainConfig
from utils.checkpoint import change_text, resume
from utils.distributed import DistInfo, any_rank
from utils.errors import UserError
from utils.files import RunLock, check_output, clean_orphans, refuse_same, same_file
from utils.tensorboard import claim_log_dir


def claim_run(cfg: PretrainConfig, path: str, log_path: str, dist_info: DistInfo) -> RunLock | None:
    """Rank 0, before any compute: the location is writable, no other run writes there (a lock held until this
    process ends), and an existing run there is continued (--resume) or replaced (--overwrite), never silently.
    A refusal on rank 0 stops every rank."""
    lock, refusal = None, None
    if dist_info.is_main:
        try:
            refuse_same({"--filename": path, "its log": log_path}, {"--dataset-paths": cfg.dataset_paths})
            check_output(path, "--filename")
            lock = RunLock(path).acquire(path)
            for p in (path, log_path):
                clean_orphans(p)  # temporary files of a save that was killed
            existing = [p for p in (path, log_path) if os.path.exists(p)]
            if existing and not cfg.resume and not cfg.overwrite:
                raise UserError(f"{existing[0]} exists: pass --resume to continue that run, --overwrite to replace "
                                f"it, or another --filename")
            if cfg.tensorboard is not None:
                claim_log_dir(cfg.tensorboard, cfg.overwrite, bool(cfg.resume))
        except UserError as e:
            refusal = e
            if lock is not None:
                lock.release()
    if any_rank(refusal is not None, dist_info):
        raise refusal or UserError("rank 0 refused the run (its error says why)")
    return lock


def continued(cfg: PretrainConfig, dist_info: DistInfo, run: Pretraining, path: str, starts: list[int],
              model_keys: list[str]) -> tuple[int, int, str, list]:
    """(epochs done, step, run id, history): of the checkpoint with --resume (utils/checkpoint.resume: exactly, or
    refused with the differences), else of a new run. ``starts``: each epoch's first step (data/sampler.py)."""
    if not cfg.resume:
        return 0, 0, uuid.uuid4().hex[:12], []
    resumed = resume(cfg.filename if cfg.resume is True else cfg.resume, run.model, run.optimizer, cfg.as_dict(),
                     model_keys, starts, cfg.allow_changes)
    if dist_info.is_main and os.path.exists(path) and not same_file(resumed.path, path) and not cfg.overwrite:
        raise UserError(f"{path} holds another run than {resumed.path}: pass --overwrite to replace it with the "
                        f"continued run, or another --filename")
    epoch, step = resumed.epoch, resumed.step
    skip = step - starts[epoch] if epoch < cfg.num_epochs else 0  # > 0 after a mid-epoch stop
    if dist_info.is_main:
        print(f"resumed from {resumed.path}: epoch {epoch}, step {step}"
              + (f" ({skip} steps into epoch {epoch + 1})" if skip else "")
              + (f"; nothing to do: --num-epochs is {cfg.num_epochs}" if epoch >= cfg.num_epochs else "")
              + "".join(f"; {change_text(k, *v)}" for k, v in resumed.changes.items())
              + ("; the lr schedule is recomputed for the new --num-epochs" if "num_epochs" in resumed.changes
                 else ""))
    return epoch, step, resumed.run_id or uuid.uuid4().hex[:12], resumed.history  # no id: written before ids
