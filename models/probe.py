"""Linear probe: a trainable linear layer on a frozen backbone (Chen et al. 2020, App. B.6)."""
from __future__ import annotations

import torch
from torch import nn


class LinearProbe(nn.Module):
    """``classifier(backbone(x))`` with the backbone frozen: eval-mode BN in train mode too, no gradients,
    no graph. The classifier runs in fp32 outside any autocast, on the features cast to fp32."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.classifier = nn.Linear(backbone.num_features, num_classes)

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.backbone.eval()  # its BN statistics must not move
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.backbone(x)  # h: (B, D)
        with torch.autocast(x.device.type, enabled=False):
            return self.classifier(h.float())  # logits: (B, num_classes)
