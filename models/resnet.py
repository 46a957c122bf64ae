"""ResNet backbones for SimCLR, built on torchvision's ResNet so parameter names match it (minus ``fc``).

Stems (Chen et al. 2020, Sec. B.9 for CIFAR):
  - ``"imagenet"``: 7x7 conv stride 2 + 3x3 max-pool (torchvision's own stem),
  - ``"stl"``: 3x3 conv stride 1 + max-pool (for 96x96 STL-10 images),
  - ``"cifar"``: 3x3 conv stride 1, no max-pool (for 32x32 images).

``width_multiplier`` scales every width (stem, all blocks and the output), as in the paper's
ResNet-50 (2x) and (4x); it differs from torchvision's ``wide_resnet50_2``, which widens only the
bottleneck's inner convolutions.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

STEMS = ("cifar", "stl", "imagenet")


class ResNetBackbone(ResNet):
    """ResNet without ``fc``: maps (B, 3, H, W) images to (B, num_features) pooled features h."""

    def __init__(self, block: type[nn.Module], layers: list[int], stem: str = "imagenet",
                 width_multiplier: int = 1, zero_init_residual: bool = True) -> None:
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        nn.Module.__init__(self)
        # The attributes torchvision's _make_layer reads.
        self._norm_layer = nn.BatchNorm2d
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        width = 64 * width_multiplier
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = width * 8 * block.expansion
        self.stem = stem
        self.width_multiplier = width_multiplier

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # As the official TF ResNet: the last BN of every residual branch starts at gamma = 0.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)  # h: (B, num_features)


def resnet18(stem: str = "imagenet", width_multiplier: int = 1, **kw) -> ResNetBackbone:
    return ResNetBackbone(BasicBlock, [2, 2, 2, 2], stem, width_multiplier, **kw)


def resnet34(stem: str = "imagenet", width_multiplier: int = 1, **kw) -> ResNetBackbone:
    return ResNetBackbone(BasicBlock, [3, 4, 6, 3], stem, width_multiplier, **kw)


def resnet50(stem: str = "imagenet", width_multiplier: int = 1, **kw) -> ResNetBackbone:
    return ResNetBackbone(Bottleneck, [3, 4, 6, 3], stem, width_multiplier, **kw)


ARCHS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def build_backbone(arch: str, stem: str, width_multiplier: int = 1) -> ResNetBackbone:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch](stem=stem, width_multiplier=width_multiplier)
