"""What the three evaluation scripts share (lbfgs_linear_clf.py, gradient_linear_clf.py, finetune.py): the device
and its setup, the precision and its one default rule, the checkpoint and what it is evaluated on, the
transforms and seeded loaders, the output names and the result JSON.

A script's ``task`` names it: ``lbfgs`` and ``sgd`` evaluate the features of a frozen backbone, ``finetune``
trains the encoder."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from data.augment import eval_transform, train_linear_transform
from data.datasets import DatasetInfo, dataset_tag, folder_layout, is_folder, native_size
from data.sampler import EpochSampler
from data.views import SeededTransformed, Transformed
from evaluation.config import EmbedConfig, FinetuneConfig, LBFGSConfig, SGDConfig
from evaluation.load import evaluation_target, finetune_encoder, load_backbone, random_init_like
from evaluation.outputs import prepare_outputs
from models.finetune import KeptHead
from models.resnet import ResNetBackbone
from utils.allocator import tune_cpu_allocator
from utils.checkpoint import checkpoint_path, find_checkpoint, git_commit
from utils.device import select_device, shm_workers
from utils.files import save_json
from utils.precision import Precision, configure_backends, resolve_precision

EvalConfig = LBFGSConfig | SGDConfig | FinetuneConfig | EmbedConfig  # a script's options (evaluation/config.py)
FROZEN_FEATURES = ("lbfgs", "sgd", "embed")  # the tasks of a frozen backbone's features
# --precision auto for them: fp32, as README ("Differences from the paper") reports
FROZEN_AUTO_REASON = "frozen features: bf16 features moved kNN accuracy by up to 0.6 points"


# ------------------------------------------------------------------------------------------------ device, precision
def add_precision_option(parser, task: str, what: str) -> None:
    """``--precision`` of ``task``'s script (``what``: what runs under the autocast); its default ``auto`` is the
    configuration's (evaluation/config.py), resolved by :func:`eval_precision`."""
    rule = ("fp32 for frozen features (bf16 features moved kNN accuracy by up to 0.6 points)"
            if task in FROZEN_FEATURES else "bf16 where it is fast, as simclr.py")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                        help=f"{what}; auto: {rule} (default: auto)")


def eval_precision(choice: str, device: torch.device, task: str) -> Precision:
    """``--precision`` of ``task``: ``auto`` is fp32 for the frozen-feature tasks (:data:`FROZEN_FEATURES`) and
    as simclr.py's (bf16 where fast, utils/precision.py) for fine-tuning; ``fp32`` and ``bf16`` as asked."""
    if choice == "auto" and task in FROZEN_FEATURES:
        return dataclasses.replace(resolve_precision("fp32", device), reason=FROZEN_AUTO_REASON)
    return resolve_precision(choice, device)


def setup(cfg: EvalConfig, task: str) -> tuple[torch.device, Precision]:
    """(device, precision) of ``--device`` and ``--precision``, with the CPU allocator tuned (utils/allocator.py)
    and simclr.py's backend setup (utils/precision.configure_backends); prints which precision and why."""
    device = select_device(cfg.device)
    tune_cpu_allocator(device)  # on CPU: keep freed tensors' memory for reuse
    configure_backends(device)
    precision = eval_precision(cfg.precision, device, task)
    why = f"auto, {precision.reason}" if cfg.precision == "auto" else f"--precision {cfg.precision}"
    print(f"{task}: {device}, precision {precision.name} ({why})")
    return device, precision


def place(model: nn.Module, device: torch.device, precision: Precision) -> nn.Module:
    """``model`` on ``device`` in ``precision``'s memory format (channels_last under bf16). Inputs take the same
    format and the forward runs under ``precision.autocast()``: utils.precision.PrecisionNet for feature
    extraction, evaluation/supervised.py's loop for training and testing."""
    return model.to(device, memory_format=precision.memory_format)


# ------------------------------------------------------------------------------------------------ what is evaluated
@dataclass(frozen=True)
class Target:
    """What is evaluated: the checkpoint (None for ``--from-scratch`` without one), the args it was trained with
    ({} for a plain state_dict), the network's arch, and the dataset, its info and the input side."""
    checkpoint: str | None
    saved: dict
    arch: str | None
    dataset: str
    info: DatasetInfo
    image_size: int


def target_of(ckpt: str | None, saved: dict, cfg: EvalConfig) -> Target:
    """The options (``--arch``, ``--dataset``, ``--image-size``), else what the checkpoint was trained with."""
    dataset, info, size = evaluation_target(ckpt, saved, cfg.dataset, cfg.image_size)
    return Target(ckpt, saved, cfg.arch or saved.get("arch"), dataset, info, size)


def frozen_backbone(cfg: EvalConfig) -> tuple[ResNetBackbone, Target]:
    """The checkpoint's backbone, loaded strictly (evaluation/load.py), and its :class:`Target`."""
    ckpt = find_checkpoint(cfg.load_from)
    backbone, saved = load_backbone(ckpt, cfg.arch, cfg.stem)
    return backbone, target_of(ckpt, saved, cfg)


def random_init_baseline(backbone: ResNetBackbone, cfg: EvalConfig, target: Target) -> ResNetBackbone:
    """With ``--random-init`` the same network at a seeded (``--seed``) initialisation, the baseline a
    representation must beat; else ``backbone``."""
    return random_init_like(backbone, target.arch, cfg.seed) if cfg.random_init else backbone


def finetune_network(cfg: EvalConfig) -> tuple[ResNetBackbone, KeptHead, Target]:
    """(backbone, kept head layers, target) to fine-tune: the checkpoint's, or with ``--from-scratch`` the same
    shapes at a seeded random init (evaluation/load.finetune_encoder)."""
    ckpt = find_checkpoint(cfg.load_from) if cfg.load_from else None
    backbone, head, saved = finetune_encoder(ckpt, cfg.from_scratch, cfg.arch, cfg.stem, cfg.width_multiplier,
                                             cfg.dataset, cfg.from_head_layer, cfg.seed)
    return backbone, head, target_of(ckpt, saved, cfg)


# ------------------------------------------------------------------------------------------------ data
def eval_transform_for(target: Target, train) -> Callable:
    """No augmentation, resized and centre-cropped to the target size unless ``train``'s in-memory images
    already have it (data/augment.eval_transform)."""
    return eval_transform(target.image_size, target.info.mean, target.info.std, native_size(train))


def seeded_train_loader(images, target: Target, batch_size: int, seed: int, num_workers: int,
                        device: torch.device) -> DataLoader:
    """Random resized crop + flip, full batches in a seeded order that is new every epoch: image i of epoch e
    is augmented under the seed (seed, e, i), whatever the number of workers (data/sampler.py, data/views.py);
    evaluation/supervised.fit sets the epoch."""
    dataset = SeededTransformed(images, train_linear_transform(target.image_size, target.info.mean, target.info.std),
                                seed)
    workers = shm_workers(dataset, (0, 0), batch_size, num_workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(images), seed=seed), drop_last=True,
                      pin_memory=device.type == "cuda", persistent_workers=workers["num_workers"] > 0, **workers)


def eval_loader(images, transform, batch_size: int, num_workers: int) -> DataLoader:
    """``images`` in order, through ``transform`` (:func:`eval_transform_for`)."""
    dataset = Transformed(images, transform)
    return DataLoader(dataset, batch_size=batch_size, **shm_workers(dataset, 0, batch_size, num_workers))


# ------------------------------------------------------------------------------------------------ outputs
def default_output(ckpt: str | None, task: str, dataset: str, *variants: str, scratch_name: str = "") -> str:
    """``<checkpoint>.<task>-<dataset>[-<variant>...].json`` beside the checkpoint (empty variants left out);
    without a checkpoint ``checkpoint/scratch-<scratch_name>.<task>-...json``."""
    tag = "-".join([task, dataset_tag(dataset), *(v for v in variants if v)])
    base = os.path.splitext(ckpt)[0] if ckpt else checkpoint_path(f"scratch-{scratch_name}")
    return f"{base}.{tag}.json"


def check_outputs(cfg: EvalConfig, target: Target, outputs: dict[str, str | None],
                  inputs: dict[str, str | None] | None = None, replaceable: tuple[str, ...] = (),
                  hints: dict[str, str] | None = None) -> None:
    """Every output (what -> path) checked before any compute, against the checkpoint, ``inputs`` and
    ``--dataset-paths``, with ``--overwrite`` (evaluation/outputs.prepare_outputs: ``replaceable``, ``hints``)."""
    inputs = {"--load-from": target.checkpoint, **(inputs or {}), "--dataset-paths": cfg.dataset_paths}
    prepare_outputs(outputs, inputs, cfg.overwrite, replaceable, hints)


def test_split(dataset: str, cfg) -> dict:
    """``{"test_fraction": ...}`` for a result on a folder of class folders (its test split is that share of its
    images, data/datasets.held_out), else nothing."""
    return {"test_fraction": cfg.test_fraction} if is_folder(dataset) and folder_layout(dataset) == "classes" else {}


def save_result(output: str, summary: dict) -> dict:
    """Write ``summary`` with the git commit of the code (utils/checkpoint.git_commit) atomically to ``output``;
    returns what was written."""
    summary = {**summary, "git_commit": git_commit()}
    save_json(output, summary)
    print(f"wrote {output}")
    return summary
