"""The pretraining configuration: every default of simclr.py in one place, resolved once from what was given.

``resolve_pretrain(given)`` takes the options a user gave (simclr.py's command line, or a bench's choices) and
returns a frozen PretrainConfig: each value is the given one, else the dataset's row of training/recipe.py (the
defaults the paper sets per dataset), else the default below; ``sources`` says which, for the startup line.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from data.datasets import HELD_OUT, dataset_info
from data.paths import DEFAULT_PATHS_FILE
from optim.schedules import scaled_lr
from training.recipe import RECIPE_KEYS, RECIPES, defaults_for, learning_rate
from utils.errors import UserError
from utils.options import Options, check_known, defaults_of

RECIPE = None  # a field whose default is the dataset's row of training/recipe.py


@dataclass(frozen=True)
class PretrainConfig(Options):
    # data and augmentation
    dataset: str = "cifar10"
    dataset_paths: str = DEFAULT_PATHS_FILE
    test_fraction: float = HELD_OUT  # of a folder of class folders: its test split (data/datasets.held_out)
    image_size: int | None = RECIPE
    jitter_strength: float | None = RECIPE
    blur: bool | None = RECIPE
    augment: str = "torchvision"  # the ops' semantics: torchvision's or the official TF2 code's
    # model
    arch: str = "resnet50"
    stem: str | None = RECIPE
    width_multiplier: int = 1
    proj_dim: int = 128
    proj_hidden_dim: int | None = None  # the encoder's feature size
    proj_layers: int = 2
    # optimisation
    batch_size: int = 512
    num_epochs: int = 100
    base_lr: float | None = RECIPE  # by lr_scaling: training.recipe.learning_rate
    lr_scaling: str | None = RECIPE
    optimizer: str = "lars"
    momentum: float = 0.9
    weight_decay: float | None = RECIPE
    trust_coefficient: float = 1e-3
    temperature: float | None = RECIPE
    loss_scale: str = "official"
    cosine_anneal: bool = True
    warmup_epochs: float = 10
    batching: str = "stream"  # data/sampler.py: the official code's stream across epochs, or whole epochs
    chunk_size: int = 0
    seed: int = 0
    # the run
    num_workers: int | None = None  # utils.device.default_workers() at setup
    decode: str = "auto"  # image trees: data/loaders.decode_path at setup (memory, workers or gpu)
    test_freq: int | None = RECIPE
    knn_k: int = 200
    filename: str = "ckpt.pth"
    save_freq: int | None = None  # Saver's rule
    resume: bool | str | None = None
    overwrite: bool = False
    allow_changes: bool = False
    device: str = "auto"
    sync_bn: bool | None = None  # on under torchrun with several processes
    precision: str = "auto"
    channels_last: bool | None = None  # with bf16
    compile: bool = False
    log_freq: int = 10
    tensorboard: str | None = None  # a folder: the CSV log's rows also as TensorBoard events (utils/tensorboard.py)
    # derived: the lr at resolve, the rest at setup (simclr.setup)
    lr: float | None = None
    world_size: int | None = None
    native_size: int | None = None
    # not an option: how this code computes, saved with the options so that a checkpoint of another version of it
    # is not resumed as if nothing changed (utils/checkpoint.LEGACY_ARGS: the value before it was saved)
    crop_arithmetic: str = "float64"  # of data/batched_augment.crop_box's boxes
    sources: dict = field(default_factory=dict, compare=False, repr=False)  # option -> where its value came from

    def with_(self, **derived) -> "PretrainConfig":
        return replace(self, **derived)


DEFAULTS = defaults_of(PretrainConfig)


def resolve_pretrain(given: dict) -> PretrainConfig:
    """The configuration of ``given`` (option -> value, only those given) over the recipe and the defaults."""
    check_known(PretrainConfig, given)
    if "crop_arithmetic" in given:
        raise TypeError("crop_arithmetic says how data/batched_augment.crop_box computes: it cannot be chosen")
    dataset = given.get("dataset", DEFAULTS["dataset"])
    dataset_info(dataset)  # a clear error for an unknown name
    values = {**DEFAULTS, **given, **defaults_for(RECIPES, dataset, {k: given.get(k) for k in RECIPE_KEYS})}
    sources = {k: "given" for k in given}
    sources.update({k: f"from the recipe of {dataset}" for k in RECIPE_KEYS if k not in given})
    values["base_lr"], values["lr_scaling"] = learning_rate(dataset, values["batch_size"], given.get("base_lr"),
                                                            given.get("lr_scaling"))
    for k in ("base_lr", "lr_scaling"):
        sources.setdefault(k, f"from the recipe of {dataset}")
    if values["chunk_size"] == 1:
        raise UserError("--chunk-size must be 0 (off) or >= 2 (pairs per chunk; 1 image is no BN batch)")
    if values["resume"] is None and values["allow_changes"]:
        raise UserError("--allow-changes goes with --resume")
    values["lr"] = scaled_lr(values["base_lr"], values["batch_size"], values["lr_scaling"])
    return PretrainConfig(**values, sources=sources)
