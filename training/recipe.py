"""The training recipe: one table keyed by dataset name, the defaults that the paper's CIFAR-10
recipe (Appendix B.9 and the official single-GPU command) and its ImageNet recipe (Sec. B.1) set
differently. STL-10 (96 px photos) takes the CIFAR optimisation and the ImageNet augmentation: our
choice, not the paper's. A dataset missing here has no default: its options must be given."""
from __future__ import annotations

_CIFAR = dict(stem="cifar", image_size=32, base_lr=1.0, weight_decay=1e-4, temperature=0.5, jitter_strength=0.5,
              blur=False, test_freq=10)
RECIPES: dict[str, dict] = {
    "cifar10": _CIFAR,
    "cifar10-sample": _CIFAR,
    "cifar100": _CIFAR,
    "stl10": dict(stem="stl", image_size=96, base_lr=1.0, weight_decay=1e-4, temperature=0.5, jitter_strength=1.0,
                  blur=True, test_freq=10),
    # The kNN monitor off: rank 0 alone would embed the whole training set while the others wait.
    "imagenet": dict(stem="imagenet", image_size=224, base_lr=0.3, weight_decay=1e-6, temperature=0.1,
                     jitter_strength=1.0, blur=True, test_freq=0),
}
RECIPE_KEYS = tuple(_CIFAR)
# Fine-tuning's base lr by scaling rule: 0.005 x sqrt(B) is the official code's, 0.05 x B/256 the paper's B.5.
FINETUNE_BASE_LR = {"sqrt": 0.005, "linear": 0.05, "none": 0.16}


def recipe(dataset: str) -> dict:
    """The dataset's defaults (a copy)."""
    return dict(RECIPES.get(dataset, {}))
