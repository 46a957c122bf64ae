"""The per-image torchvision pipeline the batched augmentation is tested and benchmarked against; not used in
training (simclr.py runs data.batched_augment.BatchedSimCLRAugment). Only tests/ and bench/ import it.

SimCLR's augmentation (Chen et al. 2020, Appendix A) per PIL image: random resized crop (area 0.08-1,
aspect 3/4-4/3, bicubic) -> horizontal flip (p=0.5) -> colour jitter of strength s (0.8s, 0.8s, 0.8s, 0.2s;
ops in random order) with p=0.8 -> grayscale (p=0.2) -> Gaussian blur (p=0.5, sigma in [0.1, 2], kernel 10%
of the side; optional) -> to tensor -> normalise. TwoViews applies it twice per image in DataLoader workers,
seeded per (seed, epoch, image).
"""
from __future__ import annotations

from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from data.batched_augment import blur_kernel_size  # one definition for both pipelines
from data.views import seeded


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


class TwoViews(Dataset):
    """Two independently augmented views of each image, for contrastive pretraining.

    Keys are ``(epoch, index)`` (see data.sampler.EpochSampler); each key seeds its own RNG, so the
    views are the same whatever the number of workers, and a resumed run sees exactly the views
    it would have seen.
    """

    def __init__(self, images, transform, seed: int = 0) -> None:
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        img = self.images.image(i)
        with seeded(self.seed, epoch, i):
            return self.transform(img), self.transform(img)
