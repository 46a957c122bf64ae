"""Colour jitter and Gaussian blur of the official SimCLR code on a whole batch (``--augment official``).

The official TF2 code (google-research/simclr, ``tf2/data_util.py``) jitters colour with ``color_jitter_rand``
(impl 'simclrv2'): the four ops below in a random order, each followed by ``tf.clip_by_value(x, 0, 1)``, and blurs
with ``gaussian_blur(image, kernel_size=height // 10, sigma, padding='SAME')``. Each function here mirrors the
TensorFlow kernel the official code calls (``tensorflow/core/kernels/image/*.cc``; the XLA lowering used on TPUs,
``tensorflow/compiler/tf2xla/kernels/image_ops.cc``, is the same arithmetic up to float rounding).
``data/batched_augment.py`` holds torchvision's versions, the repository's default augmentation; they differ so:

* ``adjust_brightness_tf``: the official 'simclrv2' brightness ``x * f`` (not ``tf.image.adjust_brightness``,
  which adds a delta). torchvision: the same product, clamped inside the op.
* ``adjust_contrast_tf``: ``tf.image.adjust_contrast`` (AdjustContrastv2, ``adjust_contrast_op.cc``):
  ``(x - mean) * f + mean`` with the mean of each channel over the image's pixels, no clamp.
  torchvision: one mean for the three channels, the mean of the grayscale (luma) image, and a clamp.
* ``adjust_saturation_tf``: ``tf.image.adjust_saturation`` (``adjust_saturation_op.cc``): RGB -> HSV,
  S <- clip(S f, 0, 1), HSV -> RGB, so H and V = max(r, g, b) are kept. torchvision blends with the luma
  image instead (``f x + (1 - f) gray``, clamped), which moves V and, once clamped, the hue.
* ``adjust_hue_tf``: ``tf.image.adjust_hue`` (``adjust_hue_op.cc``): H <- (H + delta) mod 1 with S and V kept,
  the same function as torchvision's, so it is ``batched_augment.adjust_hue``.
* ``gaussian_blur_tf``: 2 int(kernel_size / 2) + 1 taps of exp(-x^2 / (2 sigma^2)), normalised, separable,
  ZERO padding ('SAME' convolution), so the border darkens. torchvision (``batched_augment.gaussian_blur``):
  reflect padding and ``kernel_size`` taps (odd).

As in ``data/batched_augment.py``: images (B, 3, H, W) float in [0, 1], one parameter per sample as a (B,) tensor
(also the blur's sigma, which the official code draws once per batch: here it stays a function of each image's
key), everything on the images' device, no host synchronisation. ``tests/test_official_color.py`` checks each op
against NumPy ports of the TF kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from data.batched_augment import BRIGHTNESS, CONTRAST, HUE, SATURATION, _select, adjust_hue

__all__ = [
    "adjust_brightness_tf",
    "adjust_contrast_tf",
    "adjust_saturation_tf",
    "adjust_hue_tf",
    "color_jitter_tf",
    "gaussian_blur_tf",
    "BRIGHTNESS",
    "CONTRAST",
    "SATURATION",
    "HUE",
]


def _factor(factors: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    """(B,) or scalar -> (B or 1, 1, 1, 1) in the images' dtype, on their device."""
    return torch.as_tensor(factors, dtype=images.dtype, device=images.device).reshape(-1, 1, 1, 1)


def adjust_brightness_tf(images: torch.Tensor, factors: torch.Tensor | float) -> torch.Tensor:
    """The official 'simclrv2' ``random_brightness``: ``x * f`` per sample, not clamped.

    images: (B, C, H, W) float; factors: (B,) (uniform in [max(1 - 0.8 s, 0), 1 + 0.8 s] in the official code).
    """
    return images * _factor(factors, images)


def adjust_contrast_tf(images: torch.Tensor, factors: torch.Tensor | float) -> torch.Tensor:
    """``tf.image.adjust_contrast`` per sample: ``(x - mean) * f + mean``, mean per channel, not clamped.

    The kernel (AdjustContrastv2, ``adjust_contrast_op.cc``) sums each channel over the image's pixels in float32
    and scales by ``1.0f / (H * W)`` (``ReduceMeanAcrossImage``), then ``p += f * (x - p)``
    (``IncrementWithScaling``); the GPU functor (``adjust_contrast_op.h``) and XLA compute the same up to rounding.
    images: (B, C, H, W) float; factors: (B,).
    """
    mean = images.mean(dim=(-2, -1), keepdim=True)                                  # (B, C, 1, 1) per channel
    return (images - mean) * _factor(factors, images) + mean


def adjust_saturation_tf(images: torch.Tensor, factors: torch.Tensor | float) -> torch.Tensor:
    """``tf.image.adjust_saturation`` per sample: RGB -> HSV, S <- clip(S f, 0, 1), HSV -> RGB.

    TF's kernel (``adjust_saturation_op.cc``, ``internal::rgb_to_hsv`` / ``hsv_to_rgb``) uses v = max,
    range = max - min, s = range / v (0 where v <= 0), h in [0, 1) (0 where range <= 0), and back
    c = s v, m = v - c with the sector ``int(6 h)``. H and V are kept, so the max channel stays at v, the min
    channel goes to v - s' v and the middle one keeps its fraction of the range: every channel is

        x' = v - (v - x) * r' / r,    r' = s' v = clamp(min(f r, v), 0),

    the same formula for the three channels, without the HSV detour. Gray pixels (r = 0) are unchanged
    (v - x = 0), black ones stay black, and pixels with v <= 0 become (v, v, v) as in TF (s = 0).
    A rounding artefact of TF's CPU and GPU kernels is not reproduced: a hue just below 0 (red max, b above g by
    less than about 2e-7 of the range) becomes 1.0f after ``hh + 1``, sector 6, which their switch maps to
    (m, m, m); XLA's HSV -> RGB (TPUs) is a closed form without sectors and agrees with this one.
    images: (B, 3, H, W) float; factors: (B,) >= 0.
    """
    maxc = images.amax(dim=-3, keepdim=True)                                        # (B, 1, H, W) v
    crange = maxc - images.amin(dim=-3, keepdim=True)                               # (B, 1, H, W) r
    new_range = torch.minimum(crange * _factor(factors, images), maxc).clamp_(min=0.0)
    scale = new_range / crange.clamp(min=torch.finfo(images.dtype).tiny)           # r' / r, 0 for gray pixels
    return maxc - (maxc - images) * scale


def adjust_hue_tf(images: torch.Tensor, delta: torch.Tensor | float) -> torch.Tensor:
    """``tf.image.adjust_hue`` per sample: H <- (H + delta) mod 1 in HSV, S and V kept.

    TF's kernel (``adjust_hue_op.cc``: ``rgb_to_hv_range``, h in [0, 6] from the channels' order;
    ``h += delta * 6`` wrapped into [0, 6) by adding or subtracting 6; ``hv_range_to_rgb``, the middle channel at
    v_min + ratio (v_max - v_min)) computes torchvision's hue rotation: gray pixels are unchanged (h = 0, range 0)
    and max and min are kept. So this is ``batched_augment.adjust_hue`` (tests: < 1e-5 from a NumPy port of the
    kernel). images: (B, 3, H, W) float in [0, 1]; delta: (B,), in [-0.2 s, 0.2 s] in the official code.
    """
    return adjust_hue(images, delta)


def color_jitter_tf(images: torch.Tensor, order: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                    saturation: torch.Tensor, hue: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official ``color_jitter_rand`` per sample: the four ops in the order ``order[b]``, each followed by a
    clip to [0, 1].

    images: (B, 3, H, W) float in [0, 1]; order: (B, 4) int64, a permutation of (BRIGHTNESS, CONTRAST,
    SATURATION, HUE) per sample; brightness, contrast, saturation: (B,) factors, hue: (B,) deltas; mask: (B,)
    bool, samples not selected are returned unchanged (exactly).

    At each of the 4 positions every op is computed on the batch and each sample keeps the one of its order
    (4 hue passes in all; ``batched_augment.color_jitter`` shows how to run hue once if that ever matters).
    """
    dev = images.device
    order, mask = order.to(dev), mask.to(dev)
    x = images
    for k in range(4):
        op = order[:, k]                                                             # (B,)
        y = _select(op == BRIGHTNESS, adjust_brightness_tf(x, brightness),
                    _select(op == CONTRAST, adjust_contrast_tf(x, contrast),
                            _select(op == SATURATION, adjust_saturation_tf(x, saturation), adjust_hue_tf(x, hue))))
        x = _select(mask, y.clamp_(0.0, 1.0), x)
    return x


def gaussian_blur_tf(images: torch.Tensor, sigmas: torch.Tensor | float, kernel_size: int) -> torch.Tensor:
    """The official ``gaussian_blur(image, kernel_size, sigma, padding='SAME')`` with a per-sample sigma.

    radius = int(kernel_size / 2), taps exp(-x^2 / (2 sigma^2)) for x = -radius .. radius normalised to sum 1,
    one pass along W then one along H, zero padding (a 'SAME' depthwise convolution). The official code passes
    kernel_size = height // 10: 3 taps for 32 px (32 // 10 = 3, radius 1), 23 for 224 (22, radius 11).
    It then keeps the blur with probability 0.5 per image and clips to [0, 1] (``batch_random_blur``): the
    caller's ``_select(mask, gaussian_blur_tf(x, sigma, k), x).clamp(0, 1)``.

    images: (B, C, H, W) float; sigmas: (B,) > 0 (uniform in [0.1, 2]); returns (B, C, H, W).
    """
    B, C, H, W = images.shape
    radius = int(kernel_size / 2)
    taps = 2 * radius + 1
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)           # (k,)
    sig = torch.as_tensor(sigmas, dtype=images.dtype, device=images.device).reshape(-1, 1).expand(B, 1)
    kernel = torch.exp(-x.pow(2) / (2.0 * sig.pow(2)))                                         # (B, k)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(C, dim=0)            # (B*C, k)
    out = images.reshape(1, B * C, H, W)
    out = F.conv2d(out, kernel.reshape(B * C, 1, 1, taps), padding=(0, radius), groups=B * C)  # along W
    out = F.conv2d(out, kernel.reshape(B * C, 1, taps, 1), padding=(radius, 0), groups=B * C)  # along H
    return out.reshape(B, C, H, W)
