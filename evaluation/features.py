"""Features h of a frozen backbone, computed once, batched, without augmentation."""
from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.precision import Precision


@torch.inference_mode()
def extract_features(backbone: torch.nn.Module, dataset, device: torch.device, batch_size: int = 512,
                     num_workers: int = 0, precision: Precision | None = None,
                     desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (features (N, D) float32, labels (N,) int64) on the CPU, in dataset order, in eval mode, the
    backbone run under ``precision``'s autocast (fp32 without one).

    The backbone's train/eval mode is restored afterwards."""
    was_training = backbone.training
    backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, disable=desc is None, leave=False):
        x = x.to(device, non_blocking=True)
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            h = backbone(x)
        feats.append(h.float().cpu())
        labels.append(y)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)
