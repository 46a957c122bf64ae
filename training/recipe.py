"""The training recipe: one table keyed by dataset name, the defaults that the paper's CIFAR-10
recipe (Appendix B.9 and the official single-GPU command) and its ImageNet recipe (Sec. B.1) set
differently. STL-10 (96 px photos) takes the CIFAR optimisation and the ImageNet augmentation: our
choice, not the paper's. Imagenette (10 ImageNet classes) takes the ImageNet recipe at 128 px, with the kNN
monitor on. A dataset missing here has no default: its options must be given."""
from __future__ import annotations

from data.datasets import folder_layout, is_folder, median_side
from utils.errors import UserError

_CIFAR = dict(stem="cifar", image_size=32, base_lr=1.0, weight_decay=1e-4, temperature=0.5, jitter_strength=0.5,
              blur=False, test_freq=10)
RECIPES: dict[str, dict] = {
    "cifar10": _CIFAR,
    "cifar10-sample": _CIFAR,
    "cifar100": _CIFAR,
    "stl10": dict(stem="stl", image_size=96, base_lr=1.0, weight_decay=1e-4, temperature=0.5, jitter_strength=1.0,
                  blur=True, test_freq=10),
    # The kNN monitor off: rank 0 alone would embed the whole training set while the others wait.
    # sqrt_lr: (base lr, batch) of square-root scaling below that batch (training.recipe.learning_rate).
    # weight_decay 1e-6: the v1 paper's (B.1) and the official code's flag default; the official README's
    # ImageNet commands, written for SimCLRv2, pass 1e-4. The paper's Table 7/8 numbers are v1's.
    "imagenet": dict(stem="imagenet", image_size=224, base_lr=0.3, weight_decay=1e-6, temperature=0.1,
                     jitter_strength=1.0, blur=True, test_freq=0, sqrt_lr=(0.075, 4096)),
}
# Imagenette: ImageNet's row at 128 px (the ImageNet stem gives 32x32 maps after its max-pool); its ~10k
# training images are cheap to embed, so the kNN monitor is on.
RECIPES["imagenette"] = dict(RECIPES["imagenet"], image_size=128, test_freq=10)
RECIPE_KEYS = tuple(k for k in _CIFAR if k != "base_lr")  # base_lr: learning_rate(), by the scaling rule
# ImageNet below batch 4096: 0.075 x sqrt(B), which the paper (B.1) finds better for small batches and which
# equals 0.3 x B/256 at 4096; from 4096 on, linear scaling (its Fig. 9 and Table 6 runs). Imagenette inherits it.
# Linear evaluation by SGD (gradient_linear_clf.py): the paper's B.6 on ImageNet (batch 4096, 90 epochs);
# on the small datasets, Imagenette included, batch 512 and 100 epochs. lr = 0.1 x B/256, Nesterov momentum 0.9.
# Read by evaluation/config.with_linear_recipe once the dataset is known.
_SMALL_LINEAR = dict(batch_size=512, num_epochs=100)
LINEAR_EVAL: dict[str, dict] = {"cifar10": _SMALL_LINEAR, "cifar10-sample": _SMALL_LINEAR, "cifar100": _SMALL_LINEAR,
                                "stl10": _SMALL_LINEAR, "imagenette": _SMALL_LINEAR,
                                "imagenet": dict(batch_size=4096, num_epochs=90)}
# Fine-tuning's base lr by scaling rule: 0.005 x sqrt(B) is the official code's, 0.05 x B/256 the paper's B.5.
# Read by evaluation/config.resolve_finetune.
FINETUNE_BASE_LR = {"sqrt": 0.005, "linear": 0.05, "none": 0.16}


def folder_recipe(dataset: str) -> tuple[str, int, dict]:
    """(the row, the median side, the row's changes) for a folder given as the dataset, by its images' median
    shorter side (data.datasets.median_side): up to 64 px CIFAR's row at that side, from 160 px Imagenette's (the
    ImageNet recipe with the kNN monitor on) at 224 px, between STL-10's (96 px crops of the STL stem)."""
    side = median_side(dataset)
    if side <= 64:
        return "cifar10", side, {"image_size": side}
    if side >= 160:
        return "imagenette", side, {"image_size": 224}
    return "stl10", side, {}


def folder_note(dataset: str) -> str:
    """For a folder given as the dataset: its layout and the recipe row its images' size picked."""
    if not is_folder(dataset):
        return ""
    like, side, _ = folder_recipe(dataset)
    return f" ({folder_layout(dataset)} folder, median side {side} px: the {like} row of training/recipe.py)"


def _row(table: dict[str, dict], dataset: str) -> dict:
    """``dataset``'s row of ``table`` (a copy); for a folder, the row that ``folder_recipe`` picks."""
    if dataset in table or not is_folder(dataset):
        return dict(table.get(dataset, {}))
    like, _, changes = folder_recipe(dataset)
    return {**table.get(like, {}), **{k: v for k, v in changes.items() if k in table.get(like, {})}}


def recipe(dataset: str) -> dict:
    """The dataset's defaults (a copy)."""
    return _row(RECIPES, dataset)


def learning_rate(dataset: str, batch_size: int, base_lr: float | None, scaling: str | None) -> tuple[float, str]:
    """(base lr, scaling rule), each the given one or the recipe's: square-root scaling below the batch of
    the row's ``sqrt_lr``, linear otherwise. A rule without a base lr in the recipe asks for --base-lr."""
    sqrt = recipe(dataset).get("sqrt_lr")
    scaling = scaling or ("sqrt" if sqrt and batch_size < sqrt[1] else "linear")
    if base_lr is None and scaling == "sqrt" and sqrt:
        base_lr = sqrt[0]
    elif base_lr is None and scaling == "linear":
        base_lr = defaults_for(RECIPES, dataset, {"base_lr": None})["base_lr"]
    if base_lr is None:
        raise UserError(f"{dataset} has no base lr for --lr-scaling {scaling} in training/recipe.py: pass --base-lr")
    return base_lr, scaling


def defaults_for(table: dict[str, dict], dataset: str, given: dict, what: str = "recipe") -> dict:
    """``given`` (option -> value, None where not given) with its Nones taken from ``dataset``'s row of
    ``table``; a UserError names the options still None (a dataset without a row has no defaults)."""
    row = _row(table, dataset)
    filled = {k: row.get(k) if v is None else v for k, v in given.items()}
    missing = [k for k, v in filled.items() if v is None]
    if missing:
        raise UserError(f"{dataset} has no {what} in training/recipe.py: pass --" +
                        ", --".join(k.replace("_", "-") for k in missing))
    return filled
