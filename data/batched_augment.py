"""The SimCLR augmentation (Chen et al. 2020, Appendix A), batched on a tensor, on CPU or GPU.

Per sample, with independently drawn parameters and the same distributions as the per-image
torchvision pipeline (see ``data/augment.py``)::

    RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3), BICUBIC)
    -> RandomHorizontalFlip(0.5)
    -> RandomApply([ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)], p=0.8)   (ops in a random order per sample)
    -> RandomGrayscale(0.2)
    -> optional RandomApply([GaussianBlur(k, sigma=(0.1, 2))], p=0.5), k = 2 * (size // 10 // 2) + 1
    -> optional solarize(p, threshold 0.5)
    -> normalize(mean, std)

The input is a (B, 3, H, W) uint8 (0..255) or float (0..1) batch; there is no Python loop over
the images. Each op is also exposed as a module-level function taking per-sample parameter
tensors of shape (B,), and each matches ``torchvision.transforms.v2.functional`` on float images
(see ``tests/test_batched_augment.py`` for the measured agreement):

* ``resized_crop``: crop + resize with the separable *antialiased* bicubic filter of
  ``torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)``
  (the filter torchvision uses for tensors, PIL's bicubic with a = -0.5, support widened by the
  scale factor when downscaling). Each sample's filter is written as two resampling matrices
  (rows: output pixels, columns: input pixels, zero outside the crop; the weights are computed on
  the taps only and scattered), and the crop+resize is two batched matmuls. This is exact (max
  abs difference ~1e-6 from torchvision, float32 rounding) for upscaling and downscaling crops
  alike; unlike ``grid_sample`` (no antialiasing, so wrong for downscaling crops) or ``roi_align``
  (bilinear) it needs no approximation. Its cost is O(B * 3 * H * W * size) multiply-adds, cheap
  for CIFAR/STL sizes and for GPU matmuls at ImageNet sizes. On CUDA with
  ``torch.backends.cuda.matmul.allow_tf32 = True`` the matmuls run in TF32 (~1e-3 relative
  error, below the uint8 quantisation of the PIL pipeline). The result is clamped to [0, 1]
  (bicubic overshoots; PIL's uint8 output is clamped too; torchvision's float output is not).
* colour jitter: brightness, contrast and saturation are all blends with a per-sample reference,
  and the hue op is done once per batch (the blends before each sample's hue position, hue, the
  blends after it), so the random per-sample op order costs 6 cheap blend passes and one hue pass.

Differences from the per-image PIL pipeline (not from the tensor functional ops): everything
stays in float32 instead of being rounded to uint8 after every op, and random numbers come from
different draws (same distributions, not the same stream).

Speed: the batch is processed by eager elementwise ops, which is what a GPU is good at. On CPU
each op allocates a (B, 3, H, W) float temporary of megabytes, which glibc maps and unmaps each
time unless the allocator is tuned (``utils/allocator.py``, which the scripts apply on CPU): at
CIFAR size, batch 256 on 2 cores, ~15,000-17,000 views/s tuned against ~11,000 untuned and
~2,700-4,200 for the per-image pipeline in 2 workers (``bench/throughput.py``; README, Results).
At 96-224 px the temporaries do not fit in cache and the per-image pipeline is competitive on CPU
(``bench/augment_speed.py``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "BatchedSimCLRAugment",
    "blur_kernel_size",
    "sample_crop_params",
    "resized_crop",
    "hflip",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "rgb_to_grayscale",
    "gaussian_blur",
    "solarize",
    "color_jitter",
    "BRIGHTNESS",
    "CONTRAST",
    "SATURATION",
    "HUE",
]
from data.augment import blur_kernel_size  # one definition for both pipelines

# Colour-jitter op ids, numbered as torchvision's ColorJitter (fn_idx = torch.randperm(4)).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

_NUM_CROP_TRIES = 10  # torchvision RandomResizedCrop.get_params


# --------------------------------------------------------------------------------------------
# Random numbers
# --------------------------------------------------------------------------------------------

def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """Uniform [0, 1) float32 of ``shape`` on ``device``, drawn on the generator's device when one is given."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=draw_device).to(device)


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator | None,
             device: torch.device | str) -> torch.Tensor:
    return low + (high - low) * _rand(shape, generator, device)


def _as_factor(factors: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    """(B,) or scalar factors -> (B or 1, 1, 1, 1) float tensor on the images' device."""
    return torch.as_tensor(factors, dtype=images.dtype, device=images.device).reshape(-1, 1, 1, 1)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, a, b)`` for finite a, b and a (B,)/(B, 1, 1, 1) bool mask, per sample.

    On CPU ``torch.where`` is not vectorised (about 5x slower than a multiply), so there the
    select is a * m + b * (1 - m), which is exact for m in {0, 1} and finite values.
    """
    m = mask.to(a.device).reshape(-1, *([1] * (a.dim() - 1)))
    if a.device.type != "cpu":
        return torch.where(m, a, b)
    m = m.to(a.dtype)
    return a * m + b * (1.0 - m)


# --------------------------------------------------------------------------------------------
# Random resized crop
# --------------------------------------------------------------------------------------------

def sample_crop_params(B: int, height: int, width: int, scale: Sequence[float] = (0.08, 1.0),
                       ratio: Sequence[float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu"
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torchvision.transforms.RandomResizedCrop.get_params`` for B samples at once.

    Per sample: up to 10 tries of (area uniform in ``scale * H * W``, aspect ratio log-uniform in
    ``ratio``, w = round(sqrt(area * r)), h = round(sqrt(area / r))); the first try with
    0 < w <= W and 0 < h <= H is kept, with top/left uniform over the valid positions. When no try
    is valid, the centre crop of the whole image with its aspect ratio clamped to ``ratio``.
    All 10 tries are drawn for every sample at once and the first valid one is picked.

    Returns ``(top, left, h, w)``, each a (B,) int64 tensor on ``device``.
    """
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target_area = area * _uniform((B, _NUM_CROP_TRIES), scale[0], scale[1], generator, device)   # (B, T)
    aspect = torch.exp(_uniform((B, _NUM_CROP_TRIES), log_lo, log_hi, generator, device))        # (B, T)
    w_try = torch.round(torch.sqrt(target_area * aspect)).long()                                 # (B, T)
    h_try = torch.round(torch.sqrt(target_area / aspect)).long()                                 # (B, T)
    valid = (w_try > 0) & (w_try <= width) & (h_try > 0) & (h_try <= height)                     # (B, T)
    first = valid.int().argmax(dim=1, keepdim=True)                                              # (B, 1) 1st valid
    found = valid.any(dim=1)                                                                     # (B,)

    # Fallback: central crop (static, as in torchvision).
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_h, fb_w = height, int(round(height * max(ratio)))
    else:
        fb_w, fb_h = width, height

    w = torch.where(found, w_try.gather(1, first).squeeze(1), fb_w)                            # (B,)
    h = torch.where(found, h_try.gather(1, first).squeeze(1), fb_h)                            # (B,)
    u = _rand((2, B), generator, device)                                                        # (2, B)
    # randint(0, n) as floor(u * n); the clamp guards against u * n rounding up to n in float32.
    top_rand = torch.minimum(torch.floor(u[0] * (height - h + 1)).long(), height - h)
    left_rand = torch.minimum(torch.floor(u[1] * (width - w + 1)).long(), width - w)
    top = torch.where(found, top_rand, (height - fb_h) // 2)
    left = torch.where(found, left_rand, (width - fb_w) // 2)
    return top, left, h, w


def _cubic_aa(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys cubic convolution kernel with a = -0.5 (PIL / PyTorch antialiased bicubic)."""
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0                 # |x| < 1
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a              # 1 <= |x| < 2
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _bicubic_aa_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """Per-sample 1-D resampling matrices of antialiased bicubic crop+resize.

    Sample b maps input pixels ``start[b] .. start[b] + length[b] - 1`` to ``out_size`` output
    pixels with the weights of PyTorch's ``_upsample_bicubic2d_aa`` (align_corners=False):
    scale = length / out_size, support = 2 * max(scale, 1), output pixel i is centred at
    scale * (i + 0.5), its taps are the input pixels xmin <= j < xmax with
    xmin = max(int(center - support + 0.5), 0), xmax = min(int(center + support + 0.5), length)
    (at most 2 * ceil(support) + 1 of them), weighted by the a = -0.5 cubic kernel at
    (j - center + 0.5) / max(scale, 1) and renormalised to sum to 1.

    The weights are computed on the taps only (a static bound ``T`` on their number) and scattered
    into a dense matrix.  start, length: (B,) int tensors.  Returns (B, out_size, in_size) float32.
    """
    device = start.device
    B = start.shape[0]
    scale = length.float() / out_size                                               # (B,)
    stretch = torch.clamp(scale, min=1.0)                                           # (B,)
    support = 2.0 * stretch                                                         # (B,) 4 / 2 * max(scale, 1)
    center = scale[:, None] * (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5)  # (B, O)
    xmin = torch.clamp(torch.trunc(center - support[:, None] + 0.5), min=0)        # (B, O)
    xmax = torch.minimum(torch.trunc(center + support[:, None] + 0.5), length[:, None].float())
    xmax = torch.minimum(xmax, xmin + (torch.ceil(support) * 2 + 1)[:, None])       # ATen's max_interp_size
    num_taps = 2 * math.ceil(2.0 * max(in_size / out_size, 1.0)) + 1                # static bound, crop <= image
    j = xmin[:, :, None] + torch.arange(num_taps, device=device, dtype=torch.float32)  # (B, O, T) in the crop
    weights = _cubic_aa((j - center[:, :, None] + 0.5) / stretch[:, None, None])    # (B, O, T)
    weights = torch.where(j < xmax[:, :, None], weights, torch.zeros_like(weights))
    total = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(total == 0, torch.ones_like(total), total)
    cols = (j.long() + start[:, None, None]).clamp_(0, in_size - 1)                 # (B, O, T) image column
    dense = torch.zeros(B, out_size, in_size, device=device, dtype=torch.float32)
    return dense.scatter_add_(2, cols, weights)                                     # (B, O, I)


def resized_crop(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor,
                 w: torch.Tensor, size: int) -> torch.Tensor:
    """Batched crop + bicubic resize, as torchvision's
    ``resized_crop(img, top, left, h, w, [size, size], BICUBIC, antialias=True)`` per sample.

    images: (B, C, H, W) float in [0, 1]; top, left, h, w: (B,) int tensors (crops inside the image).
    Returns (B, C, size, size) float, clamped to [0, 1]. Exact antialiased bicubic (see module doc).
    """
    B, C, H, W = images.shape
    dev = images.device
    wy = _bicubic_aa_matrix(top.to(dev), h.to(dev), H, size).to(images.dtype)      # (B, S, H)
    wx = _bicubic_aa_matrix(left.to(dev), w.to(dev), W, size).to(images.dtype)     # (B, S, W)
    rows = torch.bmm(images.reshape(B, C * H, W), wx.transpose(1, 2))               # (B, C*H, S)
    rows = rows.reshape(B, C, H, size).transpose(1, 2).reshape(B, H, C * size)      # (B, H, C*S)
    out = torch.bmm(wy, rows).reshape(B, size, C, size).transpose(1, 2)             # (B, C, S, S)
    return out.clamp(0.0, 1.0).contiguous()


# --------------------------------------------------------------------------------------------
# Flip, colour, blur, solarize
# --------------------------------------------------------------------------------------------

def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Horizontally flip the samples where ``mask`` (B,) bool is True.  images: (B, C, H, W)."""
    return _select(mask, images.flip(-1), images)


def rgb_to_grayscale(images: torch.Tensor, num_output_channels: int = 1) -> torch.Tensor:
    """ITU-R 601-2 luma (0.2989 R + 0.587 G + 0.114 B), as torchvision.

    images: (B, 3, H, W) float. Returns (B, num_output_channels, H, W); with 3 channels the luma
    is repeated (an expanded view).
    """
    r, g, b = images.unbind(dim=-3)
    gray = (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(-3)                      # (B, 1, H, W)
    return gray.expand(images.shape) if num_output_channels == 3 else gray


def _blend(images: torch.Tensor, other: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """clamp(factor * images + (1 - factor) * other, 0, 1), torchvision's ``_blend`` per sample."""
    return (images * factors + other * (1.0 - factors)).clamp_(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor | float) -> torch.Tensor:
    """clamp(img * factor, 0, 1) per sample.  images: (B, C, H, W) float; factors: (B,) >= 0."""
    return (images * _as_factor(factors, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor | float) -> torch.Tensor:
    """Blend each sample with the mean of its grayscale image.  images: (B, 3, H, W); factors: (B,)."""
    mean = rgb_to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)           # (B, 1, 1, 1)
    return _blend(images, mean, _as_factor(factors, images))


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor | float) -> torch.Tensor:
    """Blend each sample with its grayscale image.  images: (B, 3, H, W); factors: (B,)."""
    return _blend(images, rgb_to_grayscale(images), _as_factor(factors, images))


def adjust_hue(images: torch.Tensor, factors: torch.Tensor | float) -> torch.Tensor:
    """Shift the hue of each sample by ``factor`` (in [-0.5, 0.5], a fraction of the colour wheel),
    as torchvision's RGB -> HSV -> (h + factor) mod 1 -> RGB.  images: (B, 3, H, W) float in [0, 1];
    factors: (B,).  Agrees with torchvision to ~2e-6.

    The same formulas, fused: with v = max and v * s = max - min = range, and the hue in sixths
    of the wheel h6 (PIL's / torchvision's case split on which channel is the max), the closed
    form of HSV -> RGB is c_n = max - range * clamp(min(y, 4 - y), 0, 1) with
    y = (n + h6 + 6 factor) mod 6, n = 5, 3, 1 for R, G, B. Since min(y, 4 - y) = 2 - |y - 2| on
    [0, 4] (and is <= 0 elsewhere), the ramp is clamp(2 - d, 0, 1) with d the distance from
    n - 2 + (h6 + 6 factor) mod 6 to the nearest multiple of 6; the mod is taken once per pixel.
    """
    r, g, b = images.unbind(dim=-3)                                                 # (B, H, W) each
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    crange = maxc - minc
    inv = 1.0 / crange.clamp(min=torch.finfo(images.dtype).tiny)                    # gray pixels: numerators are 0
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~(is_r | is_g)
    h6 = (g - b) * inv * is_r + (2.0 + (b - r) * inv) * is_g + (4.0 + (r - g) * inv) * is_b  # (B, H, W) in [-1, 5]
    hs = torch.remainder(h6 + 6.0 * _as_factor(factors, images)[:, 0], 6.0)         # (B, H, W) in [0, 6)
    offset = torch.tensor([3.0, 1.0, -1.0], dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
    z = hs.unsqueeze(-3) + offset                                                   # (B, 3, H, W), y - 2 mod 6
    dist = torch.minimum(z.abs(), (z - 6.0).abs())                                  # circular distance to 0
    ramp = (2.0 - dist).clamp_(0.0, 1.0)
    return maxc.unsqueeze(-3) - crange.unsqueeze(-3) * ramp


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor | float, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma and reflect padding, as torchvision's
    ``gaussian_blur(img, [k, k], [sigma, sigma])``.

    images: (B, C, H, W) float; sigmas: (B,) > 0; kernel_size odd (and < 2 * min(H, W) for reflect).
    """
    B, C, H, W = images.shape
    pad = kernel_size // 2
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, kernel_size, dtype=images.dtype, device=images.device)          # (k,)
    sig = torch.as_tensor(sigmas, dtype=images.dtype, device=images.device).reshape(-1, 1).expand(B, 1)
    kernel = torch.softmax(-(x / sig).pow(2), dim=-1)                                             # (B, k)
    kernel = kernel.repeat_interleave(C, dim=0)                                                   # (B*C, k)
    out = F.pad(images, (pad, pad, pad, pad), mode="reflect").reshape(1, B * C, H + 2 * pad, W + 2 * pad)
    out = F.conv2d(out, kernel.reshape(B * C, 1, 1, kernel_size), groups=B * C)                   # along W
    out = F.conv2d(out, kernel.reshape(B * C, 1, kernel_size, 1), groups=B * C)                   # along H
    return out.reshape(B, C, H, W)


def solarize(images: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels >= threshold (1 - x) in the samples where ``mask`` (B,) is True."""
    m = mask.to(images.device).reshape(-1, 1, 1, 1)
    return torch.where(m & (images >= threshold), 1.0 - images, images)


def _blend_step(x: torch.Tensor, op: torch.Tensor, factors: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """One jitter position for the blend ops: brightness, contrast or saturation per sample
    (``op`` (B,) in {0, 1, 2}, others ignored) on the ``active`` (B,) samples.

    All three are clamp(f x + (1 - f) ref, 0, 1) with ref = 0, the mean gray level or the gray
    image, so one blend with a per-sample reference and factor covers them; inactive samples get
    f = 1, ref = 0, which leaves x (in [0, 1]) unchanged exactly.
    """
    dtype = x.dtype
    gray = rgb_to_grayscale(x)                                                       # (B, 1, H, W)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)                                 # (B, 1, 1, 1)
    is_contrast = ((op == CONTRAST) & active).to(dtype).reshape(-1, 1, 1, 1)
    is_saturation = ((op == SATURATION) & active).to(dtype).reshape(-1, 1, 1, 1)
    ref = mean * is_contrast + gray * is_saturation                                  # (B, 1, H, W)
    f = factors.gather(1, op.clamp(max=SATURATION).unsqueeze(1)).squeeze(1)          # (B,)
    f = torch.where(active & (op != HUE), f, torch.ones_like(f)).reshape(-1, 1, 1, 1)
    return _blend(x, ref, f)


def color_jitter(images: torch.Tensor, order: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                 saturation: torch.Tensor, hue: torch.Tensor, mask: torch.Tensor, use_hue: bool = True) -> torch.Tensor:
    """torchvision's ColorJitter per sample: the four ops applied in the order ``order[b]``.

    images: (B, 3, H, W) float in [0, 1]; order: (B, 4) int64, a permutation of (BRIGHTNESS,
    CONTRAST, SATURATION, HUE) per sample (torchvision's ``fn_idx``); brightness, contrast,
    saturation, hue: (B,) factors; mask: (B,) bool, samples not selected are returned unchanged.
    ``use_hue=False`` skips the hue op (as ColorJitter(hue=0), which does not apply it).

    Batched in three phases so that the (expensive) hue op runs once on the batch: the blend ops
    at the positions before each sample's hue position (3 masked steps), hue, then the blend ops
    after it (3 masked steps); each step does brightness/contrast/saturation at once.
    """
    dev = images.device
    order, mask = order.to(dev), mask.to(dev)
    factors = torch.stack((brightness, contrast, saturation), dim=1).to(device=dev, dtype=images.dtype)  # (B, 3)
    hue_pos = (order == HUE).int().argmax(dim=1)                                     # (B,) position of hue
    x = images
    for k in range(3):                                                               # before hue
        x = _blend_step(x, order[:, k], factors, mask & (hue_pos > k))
    if use_hue:
        x = _select(mask, adjust_hue(x, hue.to(dev)), x)
    for k in range(1, 4):                                                            # after hue
        x = _blend_step(x, order[:, k], factors, mask & (hue_pos < k))
    return x


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------

class BatchedSimCLRAugment(torch.nn.Module):
    """SimCLR's training augmentation (Chen et al. 2020, Appendix A) on a whole batch.

    Every sample gets independently drawn parameters with the distributions of the per-image
    torchvision pipeline (random resized crop, flip, colour jitter of strength ``jitter_strength``
    in random op order, grayscale, optional blur, optional solarize) and is normalised.

    ``forward(images)`` = ``apply(images, sample_params(B, H, W, generator, device))``; the
    parameter dict is exposed for testing and for reproducing a view.
    """

    def __init__(self, size: int, jitter_strength: float = 1.0, blur: bool = False, solarize_p: float = 0.0,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 color_jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5, hflip_p: float = 0.5,
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        super().__init__()
        s = float(jitter_strength)
        if not 0.0 <= 0.2 * s <= 0.5:
            raise ValueError(f"jitter_strength must be in [0, 2.5] (hue = 0.2 s <= 0.5), got {s}")
        self.size = int(size)
        self.jitter_strength = s
        self.brightness = (max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s)
        self.contrast = (max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s)
        self.saturation = (max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s)
        self.hue = (-0.2 * s, 0.2 * s)
        self.blur = bool(blur)
        self.kernel_size = blur_kernel_size(self.size)
        self.solarize_p = float(solarize_p)
        self.color_jitter_p = float(color_jitter_p) if s > 0 else 0.0
        self.grayscale_p = float(grayscale_p)
        self.blur_p = float(blur_p) if self.blur else 0.0
        self.hflip_p = float(hflip_p)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (f"size={self.size}, jitter_strength={self.jitter_strength}, blur={self.blur} (k={self.kernel_size}), "
                f"solarize_p={self.solarize_p}, color_jitter_p={self.color_jitter_p}, grayscale_p={self.grayscale_p}, "
                f"blur_p={self.blur_p}, hflip_p={self.hflip_p}, scale={self.scale}, ratio={self.ratio}")

    def sample_params(self, B: int, height: int, width: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Draw every sample's parameters.  Returns a dict of tensors on ``device``:

        top, left, h, w (B,) int64 crop box; flip (B,) bool; jitter (B,) bool (colour jitter applied);
        jitter_order (B, 4) int64 permutation of (BRIGHTNESS, CONTRAST, SATURATION, HUE);
        brightness, contrast, saturation, hue (B,) float factors; grayscale (B,) bool;
        blur (B,) bool; sigma (B,) float in [0.1, 2]; solarize (B,) bool.
        The same draws are made whatever the options, so a seed gives the same crops for all of them.
        """
        top, left, h, w = sample_crop_params(B, height, width, self.scale, self.ratio, generator, device)
        u = _rand((10, B), generator, device)                                         # (10, B)
        order = torch.argsort(_rand((B, 4), generator, device), dim=1)                 # (B, 4) uniform permutation
        lerp = lambda r, x: r[0] + (r[1] - r[0]) * x                                   # noqa: E731
        return {
            "top": top, "left": left, "h": h, "w": w,
            "flip": u[0] < self.hflip_p,
            "jitter": u[1] < self.color_jitter_p,
            "jitter_order": order,
            "brightness": lerp(self.brightness, u[2]),
            "contrast": lerp(self.contrast, u[3]),
            "saturation": lerp(self.saturation, u[4]),
            "hue": lerp(self.hue, u[5]),
            "grayscale": u[6] < self.grayscale_p,
            "blur": u[7] < self.blur_p,
            "sigma": lerp((0.1, 2.0), u[8]),
            "solarize": u[9] < self.solarize_p,
        }

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply given parameters.  images: (B, 3, H, W) uint8 or float in [0, 1].
        Returns normalised float32 (B, 3, size, size) on the images' device."""
        if images.dtype == torch.uint8:
            x = images.float().div_(255.0)
        else:
            x = images.float()
        dev = x.device
        p = {k: v.to(dev) for k, v in params.items()}
        x = resized_crop(x, p["top"], p["left"], p["h"], p["w"], self.size)        # (B, 3, S, S)
        if self.hflip_p > 0:
            x = hflip(x, p["flip"])
        if self.color_jitter_p > 0:
            x = color_jitter(x, p["jitter_order"], p["brightness"], p["contrast"], p["saturation"], p["hue"],
                             p["jitter"], use_hue=self.hue[1] > 0)
        if self.grayscale_p > 0:
            x = _select(p["grayscale"], rgb_to_grayscale(x, 3), x)
        if self.blur_p > 0:
            x = _select(p["blur"], gaussian_blur(x, p["sigma"], self.kernel_size), x)
        if self.solarize_p > 0:
            x = solarize(x, p["solarize"], 0.5)
        return (x - self.mean.to(dev)) / self.std.to(dev)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images: (B,3,H,W) uint8 (0..255) or float (0..1), any device.
        Returns normalized float32 (B,3,size,size) on the same device."""
        B, _, H, W = images.shape
        return self.apply(images, self.sample_params(B, H, W, generator, images.device))
