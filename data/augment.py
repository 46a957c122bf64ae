"""The SimCLR augmentations (Chen et al. 2020, Appendix A), per image with torchvision.

random resized crop (area 0.08-1, aspect 3/4-4/3, bicubic) -> horizontal flip (p=0.5) ->
colour jitter of strength s (0.8s, 0.8s, 0.8s, 0.2s; ops in random order) with p=0.8 ->
grayscale (p=0.2) -> Gaussian blur (p=0.5, sigma in [0.1, 2], kernel 10% of the side; optional)
-> to tensor -> normalise.
"""
from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


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


def eval_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                   native_size: int | None = None) -> T.Compose:
    """No augmentation. Images larger than ``image_size`` are resized (shorter side to size/0.875) and
    centre-cropped, as the standard ImageNet evaluation; images already at ``image_size`` pass unchanged."""
    ops = []
    if native_size != image_size:
        ops += [T.Resize(round(image_size / 0.875), interpolation=InterpolationMode.BICUBIC),
                T.CenterCrop(image_size)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def train_linear_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """Random resized crop + flip only: the paper's augmentation for linear evaluation and fine-tuning."""
    return T.Compose([T.RandomResizedCrop(image_size, interpolation=InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
