"""What a pretraining step needs, built in one place for simclr.py and every bench: the model, the network the
step calls (precision, compile, DDP or DataParallel), the optimizer, the loss, how the batch is embedded and
back-propagated (plainly, or by gradient caching: chosen once here), and the gather of the global batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from models.loss import NTXentLoss
from models.simclr import SimCLR
from optim.groups import build_optimizer
from training.config import PretrainConfig, resolve_pretrain
from training.gradcache import CachedEmbedding
from utils.errors import UserError
from utils.distributed import DistInfo, convert_sync_batchnorm, gather_with_grad, wrap_model
from utils.precision import PrecisionNet, Precision


def step_config(dataset: str, batch_size: int, **given) -> PretrainConfig:
    """simclr.py's configuration of ``dataset`` at ``batch_size`` with the ``given`` options (training/config.py):
    what the benches build their step from, so that they measure the script's."""
    return resolve_pretrain({"dataset": dataset, "batch_size": batch_size, **given})


class PlainEmbedding:
    """Both views in one forward with its graph; backward through it."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = self.net(torch.cat([x1, x2])).chunk(2)  # (N, d) each
        return z1, z2

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


@dataclass
class Pretraining:
    model: SimCLR  # the plain module: its state_dict is the checkpoint's
    net: nn.Module  # what the step calls: the model at its precision, maybe compiled, inside DDP or DataParallel
    optimizer: torch.optim.Optimizer
    criterion: NTXentLoss
    embed: PlainEmbedding | CachedEmbedding  # forward(x1, x2) -> (z1, z2); backward(loss)
    gather: Callable | None  # all-gather with gradients under DDP, else None
    precision: Precision
    parallel: str  # "1 process", "DDP over 8 processes", ...


def build_pretraining(cfg: PretrainConfig, info: DistInfo, precision: Precision,
                      batch_per_process: int) -> Pretraining:
    """From the configuration (training/config.py); the weights are drawn from ``cfg.seed``. Gradient caching
    when 0 < chunk_size < ``batch_per_process``."""
    if cfg.compile and cfg.sync_bn and info.distributed and info.world_size > 1:
        raise UserError("--compile with SyncBN under torchrun is refused: the graph would break at every "
                        "synchronised BN layer (collectives inside an autograd Function), untried on a GPU; leave "
                        "out --compile (or pass --no-sync-bn, which changes the BN statistics)")
    torch.manual_seed(cfg.seed)
    model = SimCLR(cfg.arch, cfg.stem, cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_layers, cfg.width_multiplier)
    if cfg.sync_bn and info.distributed:
        model = convert_sync_batchnorm(model)  # same parameters and state_dict keys, new module types
    model = model.to(info.device, memory_format=precision.memory_format)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.trust_coefficient)
    if cfg.compile:
        model.compile()  # in place: the state_dict keys and the checkpoints stay those of the plain model
    net, parallel = wrap_model(PrecisionNet(model, precision), info, compiled=cfg.compile, sync_bn=cfg.sync_bn)
    cached = 0 < cfg.chunk_size < batch_per_process
    embed = CachedEmbedding(net, cfg.chunk_size) if cached else PlainEmbedding(net)
    gather = gather_with_grad if info.world_size > 1 else None
    return Pretraining(model, net, optimizer, NTXentLoss(cfg.temperature, scale=cfg.loss_scale), embed, gather,
                       precision, parallel)
