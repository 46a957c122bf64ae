"""Features h of a frozen backbone, computed once, batched, without augmentation; a cache of them keyed by
the content of what produced them."""
from __future__ import annotations

import contextlib
import hashlib
import sys

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils.device import shm_workers
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
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda",
                        **shm_workers(dataset, 0, batch_size, num_workers))
    feats, labels = [], []
    for x, y in tqdm(loader, desc=desc, disable=desc is None, leave=False):
        x = x.to(device, non_blocking=True)
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            h = backbone(x)
        feats.append(h.float().cpu())
        labels.append(y)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of ``module.state_dict()``: every tensor's name, dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def read_feature_cache(path: str, key: str) -> dict | None:
    """The features saved in ``path`` under ``key``; None (recompute) if there are none, they were computed
    from other weights, data or settings, or the file cannot be read (a warning, not an error)."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated or not a cache: a cache is never worth stopping a run for
        print(f"warning: cannot read the feature cache {path} ({type(e).__name__}): recomputing the features",
              file=sys.stderr)
        return None
    if not isinstance(cached, dict) or cached.get("key") != key:
        print(f"{path} holds features of other weights, data or settings: recomputing them")
        return None
    print(f"features from {path}")
    return cached
