"""Projection head g(h) of SimCLR (Chen et al. 2020, Sec. 2.1; official code's ``projection_head``)."""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """``num_layers - 1`` blocks Linear-BN-ReLU, then Linear-BN where the last BN has a scale but no shift.

    As the official TF code: linear layers have no bias (BN follows each). 2048-2048-128 for
    ResNet-50; ``num_layers=3`` is SimCLRv2's head. ``layers[i]`` is the i-th Linear-BN(-ReLU) block
    (fine-tuning keeps the first K: models/finetune.py).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        blocks = []
        dim = in_dim
        for _ in range(num_layers - 1):
            blocks.append(nn.Sequential(nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                                        nn.ReLU(inplace=True)))
            dim = hidden_dim
        last_bn = nn.BatchNorm1d(out_dim)
        last_bn.bias.requires_grad_(False)  # "center=False": the shift stays 0 and is never trained
        blocks.append(nn.Sequential(nn.Linear(dim, out_dim, bias=False), last_bn))
        self.layers = nn.ModuleList(blocks)
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            h = block(h)
        return h  # z: (B, out_dim)
