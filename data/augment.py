"""The per-image transforms of evaluation and fine-tuning (torchvision), on PIL images.

eval_transform: no augmentation, the shorter side resized to image_size / 0.875 (``eval_resize``) and the centre
crop; train_linear_transform: random resized crop + flip, the paper's augmentation for linear evaluation and
fine-tuning. Pretraining's augmentation is data/batched_augment.py (its per-image torchvision reference, for
tests and benchmarks only, is data/reference_augment.py).
"""
from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF


def eval_resize(image_size: int, shorter_side: int) -> int:
    """Shorter side before the centre crop: image_size/0.875 as the standard ImageNet evaluation (256 for 224),
    but never more than the image has: an image between image_size and that is only cropped, and one at
    image_size (e.g. Imagenette's 128 px copy at 128) passes whole; a smaller one is enlarged to image_size."""
    return min(round(image_size / 0.875), max(shorter_side, image_size))


class ResizeCenterCrop:
    """PIL image -> its centre ``size`` x ``size`` after resizing the shorter side to ``eval_resize``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img):
        side = eval_resize(self.size, min(img.size))
        if side != min(img.size):
            img = TF.resize(img, side, interpolation=InterpolationMode.BICUBIC)
        return TF.center_crop(img, [self.size, self.size])


def eval_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                   native_size: int | None = None) -> T.Compose:
    """No augmentation: ``ResizeCenterCrop``, skipped for in-memory images already at ``image_size``."""
    ops = [] if native_size == image_size else [ResizeCenterCrop(image_size)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def train_linear_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """Random resized crop + flip only: the paper's augmentation for linear evaluation and fine-tuning."""
    return T.Compose([T.RandomResizedCrop(image_size, interpolation=InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
