"""Seeded, stratified train/validation split of labelled samples: used wherever a hyperparameter or
an epoch is chosen on held-out training data (L-BFGS l2 sweep, fine-tuning's best epoch)."""
from __future__ import annotations

import torch


def stratified_split(y: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split of sample indices into (train_idx, val_idx).

    For every class with ``n_c`` samples, ``round(val_fraction * n_c)`` randomly chosen samples go to
    validation, clamped to ``[1, n_c - 1]`` when ``n_c >= 2`` (every class is seen in both splits);
    singleton classes stay in train. The permutation comes from a CPU ``torch.Generator`` seeded with
    ``seed``, so the split is identical across devices and runs.

    Args:
        y: (n,) integer labels (any device).
        val_fraction: fraction in [0, 1) of each class held out.
        seed: RNG seed.

    Returns:
        ``train_idx`` (n - n_val,) and ``val_idx`` (n_val,), sorted int64 CPU tensors, disjoint, whose
        union is ``arange(n)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    y_cpu = y.detach().to("cpu").reshape(-1).long()
    gen = torch.Generator().manual_seed(int(seed))
    train_parts: list[torch.Tensor] = []
    val_parts: list[torch.Tensor] = []
    for c in torch.unique(y_cpu).tolist():  # sorted classes -> deterministic RNG consumption
        idx = torch.nonzero(y_cpu == c, as_tuple=False).reshape(-1)
        n_c = idx.numel()
        perm = idx[torch.randperm(n_c, generator=gen)]
        n_val = int(round(val_fraction * n_c))
        if n_c >= 2 and val_fraction > 0:
            n_val = min(max(n_val, 1), n_c - 1)
        else:
            n_val = 0
        val_parts.append(perm[:n_val])
        train_parts.append(perm[n_val:])
    empty = torch.empty(0, dtype=torch.long)
    train_idx = torch.sort(torch.cat(train_parts) if train_parts else empty).values
    val_idx = torch.sort(torch.cat(val_parts) if val_parts else empty).values
    return train_idx, val_idx
