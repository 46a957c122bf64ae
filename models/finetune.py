"""The fine-tuning network (Chen et al. 2020, Sec. 4.2; SimCLRv2 Sec. 3): encoder -> the first K layers
of the pretrained projection head -> a new linear classifier, with the stages before a chosen one frozen."""
from __future__ import annotations

import torch
from torch import nn

from models.head import ProjectionHead
from models.resnet import ResNetBackbone
from utils.errors import UserError

# ResNet stages, head kept up to layer K: the first trained part (the official --fine_tune_after_block -1..4).
STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4", "head")
# BN of the frozen stages: "train" as the official code (batch statistics, running statistics updated),
# "eval" with their running statistics, frozen too.
FROZEN_BN = ("train", "eval")


class KeptHead(nn.Module):
    """The first K blocks of a ProjectionHead, under the same ``layers.<i>`` names (K may be 0)."""

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            h = block(h)
        return h


class FineTuneNet(nn.Module):
    """backbone -> kept head layers -> linear classifier (zero-initialised, as the official
    ``zero_init_logits_layer``). Parts before ``finetune_from`` are frozen: run under no_grad, their
    weights never updated. Their BN follows the model's mode with ``frozen_bn="train"``, as the official
    code (a stop_gradient before the first trained stage, every layer called with training=True), or stays
    in eval mode with ``"eval"``."""

    def __init__(self, backbone: ResNetBackbone, head: KeptHead, num_classes: int, finetune_from: str = "conv1",
                 frozen_bn: str = "train"):
        super().__init__()
        if frozen_bn not in FROZEN_BN:
            raise ValueError(f"frozen_bn must be one of {FROZEN_BN}, got {frozen_bn!r}")
        self.frozen_bn = frozen_bn
        self.backbone, self.head = backbone, head
        dim = head.layers[-1][0].out_features if len(head.layers) else backbone.num_features
        self.classifier = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        self.num_frozen = STAGES.index(finetune_from)
        for module in self.frozen_modules():
            module.requires_grad_(False)
            if frozen_bn == "eval":
                module.eval()

    def frozen_modules(self) -> list[nn.Module]:
        b = self.backbone
        stages = [[b.conv1, b.bn1], [b.layer1], [b.layer2], [b.layer3], [b.layer4]]
        return [m for stage in stages[:self.num_frozen] for m in stage]

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """Copies of what must never move, to check it: the frozen parameters (conv weights, BN affine), and
        with ``frozen_bn="eval"`` the BN statistics too (in train mode they follow the batches)."""
        return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(self.frozen_modules())
                for k, v in (m.state_dict() if self.frozen_bn == "eval" else dict(m.named_parameters())).items()}

    def train(self, mode: bool = True) -> "FineTuneNet":
        super().train(mode)
        if self.frozen_bn == "eval":
            for module in self.frozen_modules():
                module.eval()  # frozen BN keeps its running statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        stages = [lambda t: b.maxpool(b.relu(b.bn1(b.conv1(t)))), b.layer1, b.layer2, b.layer3, b.layer4]
        for i, stage in enumerate(stages):
            if i < self.num_frozen:
                with torch.no_grad():
                    x = stage(x)
            else:
                x = stage(x)
        h = torch.flatten(b.avgpool(x), 1)  # h: (B, num_features)
        return self.classifier(self.head(h))  # logits: (B, num_classes)


def head_state(state: dict) -> dict[str, torch.Tensor]:
    """The projection head's tensors of a simclr.py checkpoint (``head.*`` keys of ``model``, prefix removed)."""
    weights = state.get("model", state)
    return {k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")}


def build_head(in_dim: int, saved: dict, keep: int, state: dict | None) -> KeptHead:
    """The first ``keep`` blocks of the checkpoint's projection head, loaded strictly when ``state`` is given.

    Without a checkpoint (``saved`` empty) the head is ``keep`` Linear-BN-ReLU blocks of the encoder's width."""
    if keep == 0:
        return KeptHead(nn.ModuleList())
    layers = saved.get("proj_layers", keep + 1) if saved else keep + 1
    if keep > layers:
        raise UserError(f"--from-head-layer {keep} asks for more layers than the checkpoint's {layers}-layer "
                        f"projection head: use 0..{layers}")
    head = ProjectionHead(in_dim, saved.get("proj_hidden_dim") or in_dim, saved.get("proj_dim", 128), layers)
    if state is not None:
        weights = head_state(state)
        if not weights:
            raise UserError("the checkpoint holds no projection head (a plain backbone state_dict?): "
                            "use --from-head-layer 0")
        result = head.load_state_dict(weights, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise UserError(f"the checkpoint's head does not match a {layers}-layer head (proj_dim "
                            f"{saved.get('proj_dim')}, hidden {saved.get('proj_hidden_dim')}): missing keys "
                            f"{result.missing_keys[:4]}, unexpected keys {result.unexpected_keys[:4]}")
    return KeptHead(head.layers[:keep])
