"""The evaluation configurations: every default of lbfgs_linear_clf.py, gradient_linear_clf.py and finetune.py in
one place, resolved once from what was given (as training/config.py for simclr.py).

``resolve_lbfgs(given)``, ``resolve_sgd(given)`` and ``resolve_finetune(given)`` take the options a user gave (a
script's command line, parsed with ``argument_default=argparse.SUPPRESS``) and return a frozen config: each value
the given one, else the default below; ``sources`` says where each value that is not a default came from. What
depends on the data is filled once it is known, by ``dataclasses.replace`` with its source: the dataset from the
checkpoint (:func:`with_dataset`), the SGD batch and epochs from the dataset's row of training/recipe.LINEAR_EVAL
(:func:`with_linear_recipe`), fine-tuning's batch and epochs from the labelled subset (:func:`with_subset`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from data.datasets import HELD_OUT
from data.paths import DEFAULT_PATHS_FILE
from training.recipe import FINETUNE_BASE_LR, LINEAR_EVAL, defaults_for
from utils.errors import UserError
from utils.options import Options, check_known

RECIPE = None  # a field whose default is the dataset's row of training/recipe.LINEAR_EVAL
DATA = None  # a field whose default follows from the data (the checkpoint, the labelled subset)


@dataclass(frozen=True)
class LBFGSConfig(Options):
    """lbfgs_linear_clf.py: L-BFGS logistic regression on frozen features."""
    load_from: str | None = None  # required on the command line
    dataset: str | None = DATA  # the checkpoint's
    dataset_paths: str = DEFAULT_PATHS_FILE
    test_fraction: float = HELD_OUT  # of a folder of class folders: its test split (data/datasets.held_out)
    arch: str | None = None  # the checkpoint's
    stem: str | None = None  # the checkpoint's
    random_init: bool = False
    image_size: int | None = None  # the checkpoint's, else the dataset's
    val_fraction: float = 0.1
    l2_min: float = 1e-6
    l2_max: float = 1e5
    l2_num: int = 45
    max_iter: int = 500
    batch_size: int = 512
    precision: str = "auto"
    num_workers: int = 2
    cache_features: bool = False
    output: str | None = None  # <checkpoint>.lbfgs-<dataset>[-random].json
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    sources: dict = field(default_factory=dict, compare=False, repr=False)  # option -> where its value came from


@dataclass(frozen=True)
class SGDConfig(Options):
    """gradient_linear_clf.py: a linear classifier trained by SGD on a frozen backbone."""
    load_from: str | None = None  # required on the command line
    dataset: str | None = DATA  # the checkpoint's
    dataset_paths: str = DEFAULT_PATHS_FILE
    test_fraction: float = HELD_OUT  # of a folder of class folders: its test split (data/datasets.held_out)
    arch: str | None = None
    stem: str | None = None
    random_init: bool = False
    image_size: int | None = None
    batch_size: int | None = RECIPE
    num_epochs: int | None = RECIPE
    base_lr: float = 0.1  # lr = base_lr x batch/256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    num_workers: int = 2
    precision: str = "auto"
    output: str | None = None  # <checkpoint>.sgd-<dataset>[-random].json
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    sources: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class FinetuneConfig(Options):
    """finetune.py: fine-tuning on a fraction of the labels."""
    load_from: str | None = None
    from_scratch: bool = False
    dataset: str | None = DATA  # the checkpoint's
    dataset_paths: str = DEFAULT_PATHS_FILE
    test_fraction: float = HELD_OUT  # of a folder of class folders: its test split (data/datasets.held_out)
    arch: str | None = None
    stem: str | None = None
    width_multiplier: int | None = None  # the checkpoint's, else 1
    image_size: int | None = None
    label_fraction: float | None = None  # required unless subset_file
    subset_file: str | None = None
    subset_seed: int = 0
    val_fraction: float = 0.0
    val_freq: int = 1
    finetune_from: str = "conv1"
    frozen_bn: str = "train"
    from_head_layer: int = 0
    num_epochs: int | None = DATA  # finetune_epochs(the subset's fraction)
    batch_size: int | None = DATA  # finetune_batch(the labelled training images)
    optimizer: str = "lars"
    nesterov: bool = False
    momentum: float = 0.9
    trust_coefficient: float = 1e-3
    lr_scaling: str = "sqrt"
    base_lr: float | None = None  # training/recipe.FINETUNE_BASE_LR[lr_scaling]
    schedule: str = "cosine"
    weight_decay: float = 0.0
    num_workers: int = 2
    precision: str = "auto"
    output: str | None = None  # <checkpoint>.finetune-<dataset>-<N>pct[-scratch].json
    save_model: str | None = None
    tensorboard: str | None = None  # a folder for TensorBoard's event files
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    sources: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class EmbedConfig(Options):
    """embed.py: a split's features h (z with ``projection``) to an .npz; the backbone in torchvision's format."""
    load_from: str | None = None  # required on the command line
    dataset: str | None = DATA  # the checkpoint's
    dataset_paths: str = DEFAULT_PATHS_FILE
    test_fraction: float = HELD_OUT  # of a folder of class folders: its test split (data/datasets.held_out)
    arch: str | None = None  # the checkpoint's
    stem: str | None = None  # the checkpoint's
    image_size: int | None = None  # the checkpoint's, else the dataset's
    split: str = "test"
    projection: bool = False
    batch_size: int = 512
    num_workers: int = 2
    precision: str = "auto"
    output: str | None = None  # <checkpoint>.embed-<dataset>-<split>.npz when no other output is named
    export_backbone: str | None = None
    neighbours: str | None = None
    map: str | None = None
    k: int = 8
    overwrite: bool = False
    seed: int = 0
    device: str = "auto"
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def embeds(self) -> bool:
        """Whether features are computed: for the .npz or a picture; not when --export-backbone is all that is
        asked."""
        return bool(self.output or self.neighbours or self.map or not self.export_backbone)


def _resolve(kind: type, given: dict):
    check_known(kind, given)
    return kind(**given, sources={k: "given" for k in given})


def resolve_lbfgs(given: dict) -> LBFGSConfig:
    """The L-BFGS configuration of ``given`` (option -> value, only those given) over the defaults."""
    cfg = _resolve(LBFGSConfig, given)
    if cfg.l2_min > cfg.l2_max:
        raise UserError(f"--l2-min {cfg.l2_min:g} is above --l2-max {cfg.l2_max:g}: need --l2-min <= --l2-max")
    return cfg


def resolve_sgd(given: dict) -> SGDConfig:
    """The SGD linear-evaluation configuration of ``given``; batch and epochs wait for the dataset
    (:func:`with_linear_recipe`)."""
    return _resolve(SGDConfig, given)


def resolve_finetune(given: dict) -> FinetuneConfig:
    """The fine-tuning configuration of ``given``, its base lr by the scaling rule (training/recipe.FINETUNE_BASE_LR)
    where not given; batch and epochs wait for the subset (:func:`with_subset`). Checks the options that relate
    two options (each option's range is checked at parsing)."""
    cfg = _resolve(FinetuneConfig, given)
    if cfg.val_freq != 1 and cfg.val_fraction == 0:
        raise UserError("--val-freq goes with --val-fraction (e.g. 0.1)")
    if cfg.nesterov and cfg.optimizer != "sgd":
        raise UserError("--nesterov goes with --optimizer sgd")
    if cfg.base_lr is None:
        cfg = _derived(cfg, f"from training/recipe.FINETUNE_BASE_LR of --lr-scaling {cfg.lr_scaling}",
                       base_lr=FINETUNE_BASE_LR[cfg.lr_scaling])
    return cfg


def resolve_embed(given: dict) -> EmbedConfig:
    """embed.py's configuration of ``given``. Refuses an option that would do nothing: --k without --neighbours,
    --seed without a picture, and what says which features when only --export-backbone is asked."""
    cfg = _resolve(EmbedConfig, given)
    if "k" in given and not cfg.neighbours:
        raise UserError("--k goes with --neighbours FILE.png")
    if "seed" in given and not (cfg.neighbours or cfg.map):
        raise UserError("--seed goes with --neighbours or --map")
    idle = [f"--{k.replace('_', '-')}" for k in ("dataset", "image_size", "split", "projection") if k in given]
    if idle and not cfg.embeds:
        raise UserError(f"{', '.join(idle)}: say which features, which a run with only --export-backbone does not "
                        f"compute; add --output FILE.npz, or leave {'it' if len(idle) == 1 else 'them'} out")
    return cfg


def _derived(cfg, source: str, **values):
    """``cfg`` with ``values`` (not given: their source recorded)."""
    return replace(cfg, **values, sources={**cfg.sources, **{k: source for k in values}})


def with_dataset(cfg, dataset: str):
    """``cfg`` with the dataset evaluated on, once the checkpoint is read (evaluation/harness.Target)."""
    return cfg if cfg.dataset is not None else _derived(cfg, "from the checkpoint", dataset=dataset)


def print_filled(cfg, *keys: str) -> None:
    """The startup line of the options ``keys`` filled once the data was known, if any (none given)."""
    line = cfg.origin(keys)
    if line:
        print(f"options {line}")


def with_linear_recipe(cfg: SGDConfig) -> SGDConfig:
    """Batch size and epochs from the dataset's row of training/recipe.LINEAR_EVAL where not given."""
    missing = {k: None for k in ("batch_size", "num_epochs") if getattr(cfg, k) is None}
    if not missing:
        return cfg
    filled = defaults_for(LINEAR_EVAL, cfg.dataset, missing, "linear-evaluation recipe")
    return _derived(cfg, f"from the linear-evaluation recipe of {cfg.dataset}", **filled)


def capped_batch(cfg: SGDConfig, num_train: int) -> SGDConfig:
    """``cfg`` with a batch of at most the ``num_train`` training images: a recipe's larger batch is capped (and
    said), a given one refused."""
    if cfg.batch_size <= num_train:
        return cfg
    if cfg.sources.get("batch_size") == "given":
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the training set ({num_train} images): "
                        f"use --batch-size {num_train} or less")
    print(f"batch_size={num_train}: the recipe's {cfg.batch_size} is more than the {num_train} training images")
    return _derived(cfg, "capped at the training set's size", batch_size=num_train)


def finetune_epochs(fraction: float) -> int:
    """Fine-tuning epochs: 60 at 1% of the labels or less, else 30 (the paper's 1% and 10% settings)."""
    return 60 if fraction <= 0.01 else 30


def finetune_batch(num_train: int) -> int:
    """Fine-tuning batch: all the labelled training images up to 1024 (the official command's 1024)."""
    return min(1024, num_train)


def with_subset(cfg: FinetuneConfig, fraction: float, num_train: int) -> FinetuneConfig:
    """Epochs and batch size from the labelled subset (its ``fraction``, ``num_train`` images trained on) where
    not given."""
    if cfg.num_epochs is None:
        cfg = _derived(cfg, f"from the label fraction {fraction:g}", num_epochs=finetune_epochs(fraction))
    if cfg.batch_size is None:
        cfg = _derived(cfg, f"from the {num_train} labelled training images", batch_size=finetune_batch(num_train))
    return cfg
