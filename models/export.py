"""A pretrained backbone in torchvision's format: ``torchvision.models.resnet18/34/50()`` load it with
``load_state_dict(state, strict=False)``, which reports exactly ``fc.weight`` and ``fc.bias`` missing (a classifier
to train); with ``fc = nn.Identity()`` the torchvision network then computes the backbone's features h.

models/resnet.py builds on torchvision's ResNet, so the names are torchvision's already (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0`` ...): nothing is renamed, and the check below keeps it so. Only the
ImageNet stem at width 1 has a torchvision twin: the CIFAR stem is a 3x3 stride-1 conv without max-pool, the STL
stem a 3x3 stride-1 conv with max-pool, where torchvision's conv1 is 7x7 stride 2; and ResNet-50 (2x)/(4x) widen
every layer, torchvision's ``wide_resnet50_2`` only the bottlenecks' inner convolutions.
"""
from __future__ import annotations

import torch
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

from models.resnet import ResNetBackbone
from utils.errors import UserError

# (block, blocks per stage) -> the torchvision constructor of that network
TWINS = {(BasicBlock, (2, 2, 2, 2)): "resnet18", (BasicBlock, (3, 4, 6, 3)): "resnet34",
         (Bottleneck, (3, 4, 6, 3)): "resnet50"}
STEM_SHAPES = {"cifar": "a 3x3 stride-1 conv without max-pool", "stl": "a 3x3 stride-1 conv with max-pool"}


def torchvision_arch(backbone: ResNetBackbone) -> str:
    """The name of ``backbone``'s twin in ``torchvision.models``; a one-line UserError saying why there is none."""
    depths = tuple(len(getattr(backbone, f"layer{i}")) for i in range(1, 5))
    arch = TWINS.get((type(backbone.layer1[0]), depths))
    if arch is None:
        raise UserError(f"a ResNet of {type(backbone.layer1[0]).__name__}s {depths} has no torchvision twin: "
                        f"only resnet18, resnet34 and resnet50 export")
    rebuild = (f"load the .pth itself with models.resnet.build_backbone({arch!r}, {backbone.stem!r}"
               f"{f', {backbone.width_multiplier}' if backbone.width_multiplier != 1 else ''}) instead "
               f"(evaluation/load.load_backbone reads it)")
    if backbone.stem != "imagenet":
        raise UserError(f"the {backbone.stem} stem ({STEM_SHAPES.get(backbone.stem, backbone.stem)}) has no "
                        f"torchvision twin, whose conv1 is 7x7 stride 2 with max-pool: only imagenet-stem backbones "
                        f"export; {rebuild}")
    if backbone.width_multiplier != 1:
        raise UserError(f"{arch} ({backbone.width_multiplier}x) widens every layer, torchvision's wide ResNets only "
                        f"the bottlenecks' inner convolutions: no torchvision twin; {rebuild}")
    return arch


def torchvision_state_dict(backbone: ResNetBackbone) -> dict[str, torch.Tensor]:
    """``backbone``'s weights and BN statistics (CPU copies) under the names of its torchvision twin
    (:func:`torchvision_arch`), which loads them with ``strict=False`` missing only ``fc.weight`` and ``fc.bias``.
    Anything the twin lacks is left out."""
    arch = torchvision_arch(backbone)
    with torch.device("meta"):  # the twin's names and shapes, without allocating or initialising its weights
        twin = {k: v.shape for k, v in getattr(torchvision.models, arch)().state_dict().items()}
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items() if k in twin}
    wrong = [k for k in twin if not k.startswith("fc.") and (k not in state or state[k].shape != twin[k])]
    if wrong:  # models/resnet.py no longer follows torchvision's names: map them here
        raise RuntimeError(f"{arch}: tensors missing or of other shapes than torchvision's: {wrong[:4]}")
    return state
