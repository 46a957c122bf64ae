"""Fine-tuning on a fraction of the labels: semi-supervised evaluation (Chen et al. 2020, Sec. 4.2, Table 7).

    python finetune.py --load-from output.pth --label-fraction 0.01      # 1% of the labels, 60 epochs
    python finetune.py --load-from output.pth --label-fraction 0.1       # 10%, 30 epochs
    python finetune.py --load-from output.pth --label-fraction 0.1 --from-scratch   # baseline, same recipe

The whole pretrained encoder (or the part from ``--finetune-from`` on; the earlier part frozen, BN
in eval mode) plus a new zero-initialised linear classifier is trained on a class-balanced labelled
subset (data/subsets.py), as the official code's fine-tuning mode: random resized crop + flip only,
LARS (momentum 0.9, trust 1e-3, the classifier excluded from adaptation as the official
``head_supervised``), lr = 0.005 x sqrt(B), no weight decay, no warmup, cosine decay, B = 1024.
SimCLRv2 fine-tunes from the middle of its 3-layer projection head: ``--from-head-layer 1``.

A validation split (10%, stratified, at least one image per class) is held out of the labelled
subset; the weights of the epoch with the best validation top-1 are kept, and the test set is scored
once, at the end, with them. Writes the subset (JSON list of indices) and a JSON result beside the
checkpoint.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.augment import eval_transform, train_linear_transform
from data.datasets import DATASETS, ArrayImages, load_train_test
from data.paths import DEFAULT_PATHS_FILE
from data.sampler import EpochSampler
from data.subsets import (
    IndexedImages,
    balanced_subset,
    check_fraction,
    read_subset,
    subset_record,
    write_subset,
)
from data.views import SeededTransformed, Transformed
from evaluation.accuracy import classification_scores
from evaluation.load import checkpoint_args, evaluation_target, load_backbone, state_equal
from evaluation.logreg import stratified_split
from models.head import ProjectionHead
from models.resnet import ARCHS, STEMS, ResNetBackbone, build_backbone
from optim.groups import param_groups
from optim.lars import LARS
from training.recipe import recipe
from optim.schedules import scaled_lr, warmup_constant, warmup_cosine
from utils.allocator import tune_cpu_allocator
from utils.checkpoint import (
    checkpoint_path,
    find_checkpoint,
    git_commit,
    load_checkpoint,
    save_checkpoint,
)
from utils.distributed import select_device
from utils.errors import UserError, run_cli

STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4", "head")
DEFAULT_BASE_LR = {"sqrt": 0.005, "linear": 0.05, "none": 0.16}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fine-tune a SimCLR encoder on a fraction of the labels",
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--load-from", default=None,
                   help="checkpoint of simclr.py (or a backbone state_dict); optional with --from-scratch")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the same network from random initialisation with the same recipe and subset\n"
                        "(the baseline that shows what pretraining gives)")
    p.add_argument("--dataset", default=None, choices=list(DATASETS),
                   help="(default: the one the checkpoint was trained on)")
    p.add_argument("--dataset-paths", default=DEFAULT_PATHS_FILE, help="(default: the repository's dataset-paths.json)")
    p.add_argument("--arch", default=None, choices=list(ARCHS), help="(default: the checkpoint's)")
    p.add_argument("--stem", default=None, choices=STEMS,
                   help="(default: the checkpoint's; without a checkpoint the dataset's)")
    p.add_argument("--width-multiplier", type=int, default=None,
                   help="ResNet width multiplier (default: the checkpoint's, else 1)")
    p.add_argument("--image-size", type=int, default=None,
                   help="crop side (default: the checkpoint's for its own dataset, else the dataset's)")
    g = p.add_argument_group("labels")
    g.add_argument("--label-fraction", type=float, default=None,
                   help="fraction of the training labels, in (0, 1]: 0.01 and 0.1 are the paper's Table 7;\n"
                        "the same number of images from every class, at least one (required unless --subset-file)")
    g.add_argument("--subset-file", default=None,
                   help="JSON subset written by an earlier run or by `python -m data.subsets`: train on exactly\n"
                        "those images (refused for another dataset or size). Without it a subset is drawn and\n"
                        "written beside the result as <result>.subset.json")
    g.add_argument("--subset-seed", type=int, default=0,
                   help="seed of the subset and of the validation split (default: 0)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of the labelled subset held out for choosing the epoch, per class, at least 1\n"
                        "image per class with 2 or more; 0: no validation, keep the last epoch (default: 0.1)")
    g.add_argument("--val-freq", type=int, default=1,
                   help="validate every N epochs (and after the last); the best validation top-1 is kept\n"
                        "(default: 1)")
    g = p.add_argument_group("model")
    g.add_argument("--finetune-from", default="conv1", choices=STAGES,
                   help="first trained part; the earlier ones stay frozen in eval mode. conv1: everything\n"
                        "(the paper); head: only the kept head layers and the classifier. The official code's\n"
                        "--fine_tune_after_block -1, 0, 1, 2, 3, 4 (default: conv1)")
    g.add_argument("--from-head-layer", type=int, default=0,
                   help="keep the first K layers of the checkpoint's projection head between encoder and\n"
                        "classifier, and fine-tune them; SimCLRv2: 1 with its 3-layer head (default: 0, none)")
    g = p.add_argument_group("optimisation (defaults: the official code's fine-tuning on ImageNet 1%/10%)")
    g.add_argument("--num-epochs", type=int, default=None,
                   help="(default: 60 for fractions <= 1%%, else 30: the paper's 1%% and 10%% ImageNet\n"
                        "settings; 30 for 100%% is our choice)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="(default: min(1024, training images); the official command uses 1024, the paper's\n"
                        "App. B.5 4096)")
    g.add_argument("--optimizer", default="lars", choices=["lars", "sgd"],
                   help="lars: trust 1e-3, classifier without adaptation; sgd: momentum SGD (default: lars)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum with --optimizer sgd (App. B.5)")
    g.add_argument("--momentum", type=float, default=0.9, help="(default: 0.9)")
    g.add_argument("--trust-coefficient", type=float, default=1e-3, help="LARS eta (default: 1e-3)")
    g.add_argument("--lr-scaling", default="sqrt", choices=["sqrt", "linear", "none"],
                   help="sqrt: lr = base_lr*sqrt(B); linear: base_lr*B/256; none: base_lr (default: sqrt)")
    g.add_argument("--base-lr", type=float, default=None,
                   help="(default: 0.005 with sqrt scaling, the official fine-tuning; 0.05 with linear, the\n"
                        "paper's App. B.5; 0.16 with none)")
    g.add_argument("--schedule", default="cosine", choices=["cosine", "constant"],
                   help="no warmup; cosine decay to 0 or constant (default: cosine)")
    g.add_argument("--weight-decay", type=float, default=0.0,
                   help="on encoder/head weights with ndim > 1 (default: 0, as the paper)")
    g = p.add_argument_group("run")
    g.add_argument("--num-workers", type=int, default=2, help="(default: 2)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast (loss in fp32); auto: bf16 on GPU, fp32 on CPU (default: auto)")
    g.add_argument("--output", default=None,
                   help="JSON result (default: <checkpoint>.finetune-<dataset>-<N>pct[-scratch].json)")
    g.add_argument("--save-model", default=None, help="also write the selected fine-tuned weights to this file")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the data order, augmentations and new weights (default: 0)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    return p


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
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
    ``zero_init_logits_layer``). Parts before ``finetune_from`` are frozen: no gradients, eval-mode BN,
    run under no_grad."""

    def __init__(self, backbone: ResNetBackbone, head: KeptHead, num_classes: int, finetune_from: str = "conv1"):
        super().__init__()
        self.backbone, self.head = backbone, head
        dim = head.layers[-1][0].out_features if len(head.layers) else backbone.num_features
        self.classifier = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        self.num_frozen = STAGES.index(finetune_from)
        for module in self.frozen_modules():
            module.requires_grad_(False).eval()

    def frozen_modules(self) -> list[nn.Module]:
        b = self.backbone
        stages = [[b.conv1, b.bn1], [b.layer1], [b.layer2], [b.layer3], [b.layer4]]
        return [m for stage in stages[:self.num_frozen] for m in stage]

    def train(self, mode: bool = True) -> "FineTuneNet":
        super().train(mode)
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


# --------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------
def build_optimizer(model: FineTuneNet, args: argparse.Namespace, lr: float) -> torch.optim.Optimizer:
    """LARS with the classifier excluded from adaptation (the official ``head_supervised``), or SGD."""
    groups = param_groups(model, args.weight_decay, plain=model.classifier)
    if args.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=args.momentum, trust_coefficient=args.trust_coefficient)
    return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, nesterov=args.nesterov)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast: bool,
             desc: str = "test") -> tuple[float, float, float]:
    """Top-1 (%), top-5 (%) and mean cross-entropy of ``model`` in eval mode on ``loader``."""
    was_training = model.training
    model.eval()

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return model(x).float()

    scores = classification_scores(logits, loader, device, desc)
    model.train(was_training)
    return scores


# --------------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------------
def percent_tag(fraction: float) -> str:
    return f"{100 * fraction:.6g}pct"


def build_model(args: argparse.Namespace):
    """(backbone, head, saved args, checkpoint path or None), pretrained or at random init."""
    ckpt, saved, state = None, {}, None
    if args.load_from:
        ckpt = find_checkpoint(args.load_from)
    if not args.from_scratch:
        if ckpt is None:
            raise UserError("--load-from is required (or pass --from-scratch for the random-init baseline)")
        backbone, saved = load_backbone(ckpt, args.arch, args.stem, args.width_multiplier)
        if args.from_head_layer > 0:
            state = load_checkpoint(ckpt)
        head = build_head(backbone.num_features, saved, args.from_head_layer, state)
        return backbone, head, saved, ckpt
    if ckpt is not None:
        saved = checkpoint_args(load_checkpoint(ckpt))
    dataset = args.dataset or saved.get("dataset")
    arch = args.arch or saved.get("arch")
    if arch is None or dataset is None:
        raise UserError("--from-scratch without a checkpoint (or with a plain state_dict) needs --arch and --dataset")
    stem = args.stem or saved.get("stem") or recipe(dataset)["stem"]
    torch.manual_seed(args.seed)
    backbone = build_backbone(arch, stem, args.width_multiplier or saved.get("width_multiplier", 1))
    head = build_head(backbone.num_features, saved, args.from_head_layer, None)
    return backbone, head, saved, ckpt


def check_args(args: argparse.Namespace) -> None:
    if args.label_fraction is not None:
        check_fraction(args.label_fraction)
    checks = [
        (args.num_epochs is None or args.num_epochs >= 1, f"--num-epochs must be at least 1, got {args.num_epochs}"),
        (args.batch_size is None or args.batch_size >= 2,
         f"--batch-size must be at least 2 (BN), got {args.batch_size}"),
        (args.base_lr is None or args.base_lr > 0, f"--base-lr must be > 0, got {args.base_lr}"),
        (0 <= args.val_fraction < 1, f"--val-fraction must be in [0, 1), got {args.val_fraction}"),
        (args.val_freq >= 1, f"--val-freq must be at least 1, got {args.val_freq}"),
        (args.from_head_layer >= 0, f"--from-head-layer must be >= 0, got {args.from_head_layer}"),
        (args.weight_decay >= 0 and args.momentum >= 0, "--weight-decay and --momentum must be >= 0"),
        (args.width_multiplier is None or args.width_multiplier >= 1, "--width-multiplier must be >= 1"),
        (not args.nesterov or args.optimizer == "sgd", "--nesterov goes with --optimizer sgd"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def main(args: argparse.Namespace) -> dict:
    check_args(args)
    device = select_device(args.device)
    tune_cpu_allocator(device)  # on CPU: keep freed tensors' memory for reuse (utils/allocator.py)
    autocast = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    backbone, head, saved, ckpt = build_model(args)
    dataset, info, size = evaluation_target(ckpt, saved, args.dataset, args.image_size)
    train_full, test = load_train_test(dataset, args.dataset_paths)

    record = read_subset(args.subset_file, dataset, train_full.labels) if args.subset_file else None
    if record is not None and args.label_fraction is not None and not math.isclose(args.label_fraction,
                                                                                 record["fraction"]):
        raise UserError(f"--label-fraction {args.label_fraction} disagrees with {args.subset_file} (fraction "
                        f"{record['fraction']}): leave out --label-fraction or use another subset file")
    if record is None and args.label_fraction is None:
        raise UserError("pass --label-fraction (e.g. 0.01 or 0.1) or --subset-file")
    fraction = record["fraction"] if record is not None else args.label_fraction
    tag = f"finetune-{dataset}-{percent_tag(fraction)}{'-scratch' if args.from_scratch else ''}"
    if args.output:
        output = args.output
    elif ckpt:
        output = f"{os.path.splitext(ckpt)[0]}.{tag}.json"
    else:
        output = checkpoint_path(f"scratch-{backbone_name(backbone, args, saved)}.{tag}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if record is None:  # draw a new subset and write it beside the result
        subset_file = f"{os.path.splitext(output)[0]}.subset.json"
        record = subset_record(dataset, train_full.labels, fraction, args.subset_seed,
                               balanced_subset(train_full.labels, fraction, args.subset_seed))
        write_subset(subset_file, record)
    else:
        subset_file = args.subset_file
    indices = np.asarray(record["indices"], dtype=np.int64)

    labelled_labels = torch.as_tensor(train_full.labels[indices])
    if args.val_fraction > 0:
        fit_idx, val_idx = stratified_split(labelled_labels, args.val_fraction, args.subset_seed)
        fit_idx, val_idx = fit_idx.numpy(), val_idx.numpy()
    else:
        fit_idx, val_idx = np.arange(len(indices)), np.array([], dtype=np.int64)
    if args.val_fraction > 0 and len(val_idx) == 0:
        print("no validation images (every class has a single labelled image): the last epoch is kept")
    train_set = IndexedImages(train_full, indices[fit_idx])
    val_set = IndexedImages(train_full, indices[val_idx]) if len(val_idx) else None

    batch_size = args.batch_size or min(1024, len(train_set))
    if batch_size > len(train_set):
        raise UserError(f"--batch-size {batch_size} is larger than the labelled training images ({len(train_set)} "
                        f"after holding out {len(val_idx)} for validation): use --batch-size {len(train_set)} or less")
    epochs = args.num_epochs or (60 if fraction <= 0.01 else 30)
    base_lr = args.base_lr or DEFAULT_BASE_LR[args.lr_scaling]
    lr = scaled_lr(base_lr, batch_size, args.lr_scaling)

    native = train_full.images.shape[1] if isinstance(train_full, ArrayImages) else None
    test_tf = eval_transform(size, info.mean, info.std, native)
    sampler = EpochSampler(len(train_set), seed=args.seed)
    train_transform = train_linear_transform(size, info.mean, info.std)
    train_loader = DataLoader(SeededTransformed(train_set, train_transform, args.seed),
                              batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=args.num_workers,
                              pin_memory=device.type == "cuda", persistent_workers=args.num_workers > 0)
    eval_batch = min(max(batch_size, 256), 1024)
    val_loader = (DataLoader(Transformed(val_set, test_tf), batch_size=eval_batch, num_workers=args.num_workers)
                  if val_set is not None else None)
    test_loader = DataLoader(Transformed(test, test_tf), batch_size=eval_batch, num_workers=args.num_workers)

    torch.manual_seed(args.seed)
    model = FineTuneNet(backbone, head, len(train_full.classes), args.finetune_from).to(device)
    memory_format = torch.channels_last if autocast and device.type == "cuda" else torch.preserve_format
    model = model.to(memory_format=memory_format)
    frozen_before = {f"{i}.{k}": v.detach().clone() for i, m in enumerate(model.frozen_modules())
                     for k, v in m.state_dict().items()}
    optimizer = build_optimizer(model, args, lr)
    steps_per_epoch = len(train_set) // batch_size
    total_steps = epochs * steps_per_epoch
    schedule = warmup_cosine if args.schedule == "cosine" else warmup_constant
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{dataset}: {len(indices)} labelled images ({percent_tag(fraction)}, {record['per_class']} per class, "
          f"subset {subset_file}): {len(train_set)} train / {len(val_idx)} validation; {len(test)} test. "
          f"{'random-init' if args.from_scratch else 'pretrained'} {args.arch or saved.get('arch')} "
          f"(width x{backbone.width_multiplier}, {backbone.stem} stem) + {len(head.layers)} head layer(s), "
          f"trained from {args.finetune_from}: {trainable / 1e6:.2f}M parameters; {epochs} epochs of "
          f"{steps_per_epoch} steps of {batch_size}, {args.optimizer} lr {lr:.4g} ({args.lr_scaling} scaling of "
          f"{base_lr}), {args.schedule}; {device}, {'bf16' if autocast else 'fp32'}")

    best = {"epoch": 0, "val_top1": -1.0, "val_loss": math.inf, "state": None}
    history = []
    step = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        for x, y in tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False):
            for group in optimizer.param_groups:
                group["lr"] = schedule(step, lr, total_steps, 0)
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            step += 1
        mean_loss = loss_sum.item() / steps_per_epoch
        if not math.isfinite(mean_loss):
            raise UserError(f"loss is {mean_loss} at epoch {epoch + 1}: lower --base-lr")
        row = {"epoch": epoch + 1, "loss": mean_loss, "lr": schedule(step, lr, total_steps, 0)}
        message = f"epoch {epoch + 1}/{epochs}: loss {mean_loss:.4f}"
        if val_loader is not None and ((epoch + 1) % args.val_freq == 0 or epoch + 1 == epochs):
            v1, v5, vloss = evaluate(model, val_loader, device, autocast, desc="validation")
            row.update(val_top1=v1, val_top5=v5, val_loss=vloss)
            message += f", validation top-1 {v1:.2f}% top-5 {v5:.2f}% loss {vloss:.4f}"
            if (v1, -vloss) > (best["val_top1"], -best["val_loss"]):
                best.update(epoch=epoch + 1, val_top1=v1, val_loss=vloss,
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})
                message += " (best)"
        history.append(row)
        print(message, flush=True)
    train_seconds = time.perf_counter() - start
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    else:
        best["epoch"] = epochs
    frozen_after = {f"{i}.{k}": v for i, m in enumerate(model.frozen_modules()) for k, v in m.state_dict().items()}
    if not state_equal(frozen_after, frozen_before):
        raise RuntimeError("a frozen part of the encoder changed during fine-tuning: this is a bug, please report it")
    top1, top5, test_loss = evaluate(model, test_loader, device, autocast, desc="test")  # the only test evaluation

    summary = {
        "checkpoint": ckpt, "from_scratch": args.from_scratch, "dataset": dataset,
        "arch": args.arch or saved.get("arch"), "stem": backbone.stem, "width_multiplier": backbone.width_multiplier,
        "image_size": size, "label_fraction": fraction, "subset_file": subset_file,
        "subset_seed": record["seed"], "num_labelled": len(indices), "num_train": len(train_set),
        "num_val": int(len(val_idx)), "num_test": len(test), "finetune_from": args.finetune_from,
        "from_head_layer": args.from_head_layer, "epochs": epochs, "batch_size": batch_size,
        "optimizer": args.optimizer, "nesterov": args.nesterov, "lr_scaling": args.lr_scaling, "base_lr": base_lr,
        "lr": lr, "schedule": args.schedule, "weight_decay": args.weight_decay, "seed": args.seed,
        "precision": "bf16" if autocast else "fp32", "best_epoch": best["epoch"],
        "best_val_top1": best["val_top1"] if best["state"] is not None else None,
        "top1": top1, "top5": top5, "test_loss": test_loss, "train_seconds": train_seconds,
        "history": history, "git_commit": git_commit(),
    }
    print(f"test top-1 {top1:.2f}%, top-5 {top5:.2f}% ({len(test)} images) with the weights of epoch "
          f"{best['epoch']}{' (best validation top-1)' if best['state'] is not None else ''}")
    with open(output, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {output}")
    if args.save_model:
        save_checkpoint({"model": model.state_dict(), "args": vars(args), "summary": summary,
                         "classes": list(train_full.classes)}, args.save_model)
        print(f"wrote {args.save_model}")
    return {**summary, "model": model, "output": output}


def backbone_name(backbone: ResNetBackbone, args: argparse.Namespace, saved: dict) -> str:
    arch = args.arch or saved.get("arch")
    width = f"-{backbone.width_multiplier}x" if backbone.width_multiplier != 1 else ""
    return f"{arch}{width}"


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
