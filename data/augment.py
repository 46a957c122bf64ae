"""The SimCLR augmentations (Chen et al. 2020, Appendix A), per image with torchvision.

random resized crop (area 0.08-1, aspect 3/4-4/3, bicubic) -> horizontal flip (p=0.5) ->
colour jitter of strength s (0.8s, 0.8s, 0.8s, 0.2s; ops in random order) with p=0.8 ->
grayscale (p=0.2) -> Gaussian blur (p=0.5, sigma in [0.1, 2], kernel 10% of the side; optional)
-> to tensor -> normalise.
"""
from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the side, as the official code: 2 * (size // 10 // 2) + 1 (23 for 224)."""
    return 2 * (image_size // 10 // 2) + 1


def random_resized_crop(image_size: int) -> T.RandomResizedCrop:
    """Area 0.08-1 of the image, aspect ratio 3/4-4/3 (log-uniform), bicubic resize to ``image_size``."""
    return T.RandomResizedCrop(image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                               interpolation=InterpolationMode.BICUBIC)


def simclr_augmentation(image_size: int, jitter_strength: float, blur: bool,
                        mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """PIL image -> normalised (3, image_size, image_size) float tensor, one random view."""
    s = jitter_strength
    ops = [
        random_resized_crop(image_size),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(image_size), sigma=(0.1, 2.0))], p=0.5))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


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
