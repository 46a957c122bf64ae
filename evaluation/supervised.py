"""The supervised loop of linear evaluation and fine-tuning: epochs of cross-entropy training, with the
epoch of the best validation top-1 kept, and top-1/top-5/loss on a held-out loader."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from evaluation.accuracy import classification_scores
from training.loop import LossMeter, NonFiniteLoss
from utils.precision import Precision


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    lr_at: Callable[[int], float], step: int, precision: Precision, device: torch.device,
                    desc: str = "train") -> tuple[float, int]:
    """One pass over ``loader``: the lr of every group set to ``lr_at(step)`` before each step, the model
    under ``precision``'s autocast, the loss in fp32. Returns (mean loss, next step).

    The loss is summed on the device and read back once, at the end: no host sync per step. A loss that
    is not finite stops training with a message (a diverged run is worth nothing past that point)."""
    model.train()
    meter = LossMeter()
    for x, y in tqdm(loader, desc=desc, leave=False):
        for group in optimizer.param_groups:  # the lr for this step
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        x = x.to(device, non_blocking=True).contiguous(memory_format=precision.memory_format)
        y = y.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(x)  # logits: (B, C)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        meter.add(loss.detach())
        step += 1
    try:
        mean_loss = meter.read(step)[0] if meter.n else 0.0
    except NonFiniteLoss as e:
        raise NonFiniteLoss(f"{e} in {desc}: lower --base-lr") from None
    return mean_loss, step


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, precision: Precision,
             desc: str = "test") -> tuple[float, float, float]:
    """Top-1 (%), top-5 (%) and mean cross-entropy of ``model`` in eval mode on ``loader``; the model's
    train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()

    def logits(x: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return model(x).float()

    scores = classification_scores(logits, loader, device, desc)
    model.train(was_training)
    return scores


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float], train_loader: DataLoader,
        epochs: int, precision: Precision, device: torch.device, val_loader: DataLoader | None = None,
        val_freq: int = 1, log=None) -> tuple[dict, list[dict]]:
    """Train ``epochs`` epochs from step 0, validating every ``val_freq`` epochs and after the last. The
    weights of the best validated epoch (top-1, then loss) are loaded back; without validation, the last
    epoch's stay. Returns ({epoch, val_top1, val_loss, state (None without validation)}, per-epoch rows); each
    row also goes to ``log.write(step=epoch, **row)`` as it is made (e.g. utils/tensorboard.TensorBoardLog)."""
    set_epoch = getattr(train_loader.sampler, "set_epoch", None)  # data/sampler.EpochSampler: an order per epoch
    best = {"epoch": epochs, "val_top1": None, "val_loss": None, "state": None}
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        if set_epoch is not None:
            set_epoch(epoch - 1)
        loss, step = train_one_epoch(model, train_loader, optimizer, lr_at, step, precision, device,
                                     desc=f"epoch {epoch}/{epochs}")
        row, message = {"epoch": epoch, "loss": loss, "lr": lr_at(step)}, f"epoch {epoch}/{epochs}: loss {loss:.4f}"
        if val_loader is not None and (epoch % val_freq == 0 or epoch == epochs):
            v1, v5, vloss = evaluate(model, val_loader, device, precision, desc="validation")
            row.update(val_top1=v1, val_top5=v5, val_loss=vloss)
            message += f", validation top-1 {v1:.2f}% top-5 {v5:.2f}% loss {vloss:.4f}"
            if best["state"] is None or (v1, -vloss) > (best["val_top1"], -best["val_loss"]):
                best.update(epoch=epoch, val_top1=v1, val_loss=vloss,
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})
                message += " (best)"
        history.append(row)
        if log is not None:
            log.write(step=epoch, **row)
        print(message, flush=True)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return best, history
