"""The SimCLR network: encoder f (ResNet) and projection head g; z = g(f(x)) (Chen et al. 2020, Fig. 2)."""
from __future__ import annotations

import torch
from torch import nn

from models.head import ProjectionHead
from models.resnet import build_backbone


class SimCLR(nn.Module):
    def __init__(self, arch: str = "resnet50", stem: str = "imagenet", proj_dim: int = 128,
                 proj_hidden_dim: int | None = None, proj_layers: int = 2, width_multiplier: int = 1) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, stem, width_multiplier)
        d = self.backbone.num_features
        self.head = ProjectionHead(d, proj_hidden_dim or d, proj_dim, proj_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # z: (B, proj_dim)
