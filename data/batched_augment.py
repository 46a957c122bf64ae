"""The SimCLR augmentation (Chen et al. 2020, Appendix A) on a whole batch, on CPU or GPU.

Per sample, with the distributions of the per-image torchvision reference (``data/reference_augment.py``)::

    RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3), BICUBIC)
    -> RandomHorizontalFlip(0.5)
    -> RandomApply([ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)], p=0.8)   (ops in a random order per sample)
    -> RandomGrayscale(0.2)
    -> optional RandomApply([GaussianBlur(k, sigma=(0.1, 2))], p=0.5), k = 2 * (size // 10 // 2) + 1
    -> normalize(mean, std)

Why batched: one pass of tensor ops over (B, 3, H, W) instead of a Python loop over images in
DataLoader workers. Every sample's parameters are drawn from its own key (seed, epoch, image index,
view; ``data/keyed_random.py``), so a view does not depend on the batch, the process or the worker
that makes it. Each op is a module-level function taking per-sample parameter tensors of shape (B,)
and matches ``torchvision.transforms.v2.functional`` on float images (``tests/test_batched_augment.py``):

* ``resized_crop``: the separable antialiased bicubic filter of ``interpolate(mode="bicubic",
  antialias=True)`` (torchvision's for tensors), each sample's filter written as two resampling
  matrices, so crop + resize is two batched matmuls, exact for up- and downscaling crops alike
  (``grid_sample`` has no antialiasing, ``roi_align`` is bilinear). The result is clamped to [0, 1]
  as PIL's uint8 output is.
* colour jitter: brightness, contrast and saturation are blends with a per-sample reference, and
  hue runs once on the batch (the blends before each sample's hue position, hue, the blends after
  it), so the random op order per sample costs 6 blend passes and one hue pass.

The pipeline is ``PIPELINE``, a tuple of ``Op`` instances (one class per step above, plus JitterOrder, which only
draws ColorJitter's op order), each declaring the named draws it takes from a view's key; the draw numbers
follow from that tuple (``key_layout``: the declared draws one after another), which gives::

    RandomResizedCrop  area 0-9, aspect 10-19 (one per try), top 20, left 21
    HorizontalFlip     flip 22
    ColorJitter        jitter 23, brightness 24, contrast 25, saturation 26, hue 27
    Grayscale          grayscale 28
    GaussianBlur       blur 29, sigma 30
    JitterOrder        jitter_order 31-34 (ColorJitter's op order)

Unlike the PIL pipeline everything stays in float32 instead of being rounded to uint8 after each op.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from data.datasets import IMAGENET_MEAN, IMAGENET_STD
from data.keyed_random import ViewKeys

__all__ = [
    "BatchedSimCLRAugment",
    "ViewKeys",
    "blur_kernel_size",
    "sample_crop_params",
    "crop_box",
    "Op",
    "PIPELINE",
    "DRAWS",
    "NUM_DRAWS",
    "key_layout",
    "resized_crop",
    "hflip",
    "adjust_hue",
    "rgb_to_grayscale",
    "gaussian_blur",
    "color_jitter",
    "BRIGHTNESS",
    "CONTRAST",
    "SATURATION",
    "HUE",
]

# Colour-jitter op ids, numbered as torchvision's ColorJitter (fn_idx = torch.randperm(4)).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

# The paper's fixed choices (Appendix A).
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)       # random resized crop: area fraction, aspect ratio
HFLIP_P, JITTER_P, GRAYSCALE_P, BLUR_P = 0.5, 0.8, 0.2, 0.5
SIGMA = (0.1, 2.0)                               # Gaussian blur

_NUM_CROP_TRIES = 10  # torchvision RandomResizedCrop.get_params


def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the side, as the official code: 2 * (size // 10 // 2) + 1 (23 for 224)."""
    return 2 * (image_size // 10 // 2) + 1


def _as_factor(factors: torch.Tensor | float, images: torch.Tensor) -> torch.Tensor:
    """(B,) or scalar factors -> (B or 1, 1, 1, 1) float tensor on the images' device."""
    return torch.as_tensor(factors, dtype=images.dtype, device=images.device).reshape(-1, 1, 1, 1)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, a, b)`` for finite a, b and a (B,)/(B, 1, 1, 1) bool mask, per sample.

    On CPU ``torch.where`` is not vectorised (slower than a multiply), so there the
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

def sample_crop_params(keys: ViewKeys, height: int, width: int, scale: Sequence[float] = SCALE,
                       ratio: Sequence[float] = RATIO) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The crop box of every key of a batch: ``crop_box`` of the crop's draws alone (the workers cut the crops of
    image trees with it). Returns ``(top, left, h, w)``, each a (B,) int64 tensor on the keys' device."""
    first, count = draw_range(RandomResizedCrop.draws)
    return crop_box(op_draws(keys.uniform(first, count), RandomResizedCrop.draws, first), height, width, scale, ratio)


def crop_box(u: dict[str, torch.Tensor], height: int, width: int, scale: Sequence[float] = SCALE,
             ratio: Sequence[float] = RATIO) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torchvision.transforms.RandomResizedCrop.get_params`` for every sample of a batch at once, from its
    uniform draws ``u`` (RandomResizedCrop.draws: "area" and "aspect" (B, 10) one per try, "top" and "left" (B,)).

    Per sample: up to 10 tries of (area uniform in ``scale * H * W``, aspect ratio log-uniform in
    ``ratio``, w = round(sqrt(area * r)), h = round(sqrt(area / r))); the first try with
    0 < w <= W and 0 < h <= H is kept, with top/left uniform over the valid positions. When no try
    is valid, the centre crop of the whole image with its aspect ratio clamped to ``ratio``.
    All 10 tries are drawn for every sample at once and the first valid one is picked.

    The same box on CPU and CUDA: the arithmetic is float64 from the draws on, as torchvision's (Python floats),
    each op its own kernel (eager mode: nothing is contracted into an FMA). The draws (float32 with 24 random bits)
    convert exactly, and +, * and / are correctly rounded IEEE operations: the same on both devices. ``exp`` is
    not (Sleef's on CPU, CUDA's), nor is torch's CPU ``sqrt`` (off by one ulp for about 1% of float64 inputs:
    data/official_crop.py measured it); each is within 1 ulp. So the two aspect ratios differ by at most 2 ulps,
    a relative 2**-51, and w can differ between the devices only when a half-integer lies between the two values
    of sqrt(area * r), which are within a relative 2**-52 (the aspect's 2**-51 halved by the root) + 2**-53 (the
    product's rounding on either side, halved) + 2**-51 (the root, 1 ulp on either side) < 2**-49 (2e-15) of each
    other; h likewise with area / r.
    Nothing else depends on a rounding: w and h are integers from there on, and top = floor(u * n) with
    n = H - h + 1 is exact (u = k / 2**24 and k * n < 2**53 for n < 2**29), hence below n since u < 1.

    Returns ``(top, left, h, w)``, each a (B,) int64 tensor on the draws' device.
    """
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    u_area, u_aspect = u["area"].double(), u["aspect"].double()                                  # (B, T) exact
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)                             # (B, T)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_aspect)                                    # (B, T)
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
    # randint(0, n) as floor(u * n), exact in float64 (docstring): below n without a clamp.
    top_rand = torch.floor(u["top"].double() * (height - h + 1)).long()                        # (B,)
    left_rand = torch.floor(u["left"].double() * (width - w + 1)).long()                       # (B,)
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
                 w: torch.Tensor, size: int, between=None) -> torch.Tensor:
    """Batched crop + bicubic resize, as torchvision's
    ``resized_crop(img, top, left, h, w, [size, size], BICUBIC, antialias=True)`` per sample.

    images: (B, C, H, W) float in [0, 1]; top, left, h, w: (B,) int tensors (crops inside the image).
    Returns (B, C, size, size) float, clamped to [0, 1]. Exact antialiased bicubic (see module doc); ``between``:
    as ``resample``'s.
    """
    _, _, H, W = images.shape
    dev = images.device
    wy = _bicubic_aa_matrix(top.to(dev), h.to(dev), H, size)                        # (B, S, H)
    wx = _bicubic_aa_matrix(left.to(dev), w.to(dev), W, size)                       # (B, S, W)
    return resample(images, wy, wx, between).clamp(0.0, 1.0)


def resample(images: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor, between=None) -> torch.Tensor:
    """Each sample through its separable resampling matrices, rows then columns, as two batched matmuls.
    images: (B, C, H, W); wy: (B, S, H), wx: (B, S, W); ``between``, if given, is applied in place to the rows
    resampled by the first pass. Returns (B, C, S, S) contiguous, in the images' dtype."""
    B, C, H, W = images.shape
    size = wy.shape[1]
    wy, wx = wy.to(images.dtype), wx.to(images.dtype)
    rows = torch.bmm(images.reshape(B, C * H, W), wx.transpose(1, 2))               # (B, C*H, S)
    if between is not None:
        between(rows)
    rows = rows.reshape(B, C, H, size).transpose(1, 2).reshape(B, H, C * size)      # (B, H, C*S)
    out = torch.bmm(wy, rows).reshape(B, size, C, size).transpose(1, 2)             # (B, C, S, S)
    return out.contiguous()


# --------------------------------------------------------------------------------------------
# Flip, colour, blur
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


def adjust_hue(images: torch.Tensor, factors: torch.Tensor | float) -> torch.Tensor:
    """Shift the hue of each sample by ``factor`` (in [-0.5, 0.5], a fraction of the colour wheel),
    as torchvision's RGB -> HSV -> (h + factor) mod 1 -> RGB.  images: (B, 3, H, W) float in [0, 1];
    factors: (B,).

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
    offset = 3.0 - 2.0 * torch.arange(3, dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)  # 3, 1, -1
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
                 saturation: torch.Tensor, hue: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter per sample: the four ops applied in the order ``order[b]``.

    images: (B, 3, H, W) float in [0, 1]; order: (B, 4) int64, a permutation of (BRIGHTNESS,
    CONTRAST, SATURATION, HUE) per sample (torchvision's ``fn_idx``); brightness, contrast,
    saturation, hue: (B,) factors; mask: (B,) bool, samples not selected are returned unchanged.

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
    x = _select(mask, adjust_hue(x, hue.to(dev)), x)
    for k in range(1, 4):                                                            # after hue
        x = _blend_step(x, order[:, k], factors, mask & (hue_pos < k))
    return x


# --------------------------------------------------------------------------------------------
# The pipeline: each op declares its draws; their numbers in a view's key follow from the list
# --------------------------------------------------------------------------------------------

class Op:
    """One step of the augmentation.

    ``draws`` names the uniform draws the op takes from each view's key, one name per draw; a name repeated n
    times in a row is a block of n draws. ``params`` gets them by name, (B,) for a single draw and (B, n) for a
    block, and returns the op's per-sample parameters; ``apply`` applies parameters to a (B, 3, H, W) float batch
    in [0, 1]. Both read the augmentation's settings from ``aug`` (a BatchedSimCLRAugment). An op's draw numbers
    are not written in the code: they follow from its place in ``PIPELINE`` (``key_layout``).
    """

    draws: tuple[str, ...] = ()

    def params(self, u: dict[str, torch.Tensor], aug: BatchedSimCLRAugment, height: int,
               width: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, p: dict[str, torch.Tensor], aug: BatchedSimCLRAugment) -> torch.Tensor:
        raise NotImplementedError


def _lerp(bounds: Sequence[float], u: torch.Tensor) -> torch.Tensor:
    """Uniform in [bounds[0], bounds[1]] from u uniform in [0, 1)."""
    return bounds[0] + (bounds[1] - bounds[0]) * u


class RandomResizedCrop(Op):
    """Crop box (``crop_box``: 10 tries of area and aspect ratio, then the position) and bicubic resize to
    ``aug.size``: top, left, h, w (B,) int64."""

    draws = ("area",) * _NUM_CROP_TRIES + ("aspect",) * _NUM_CROP_TRIES + ("top", "left")

    def params(self, u, aug, height, width):
        top, left, h, w = crop_box(u, height, width)
        return {"top": top, "left": left, "h": h, "w": w}

    def apply(self, x, p, aug):
        return resized_crop(x, p["top"], p["left"], p["h"], p["w"], aug.size)              # (B, 3, S, S)

    def cut(self, img, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
        """An image-tree worker's crop of one PIL image: (3, size, size) uint8, PIL's antialiased bicubic (the
        reference pipeline's; the batched ``apply`` computes the same filter in float, without the rounding)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF
        top, left, h, w = box
        return TF.pil_to_tensor(TF.resized_crop(img, top, left, h, w, [size, size], InterpolationMode.BICUBIC))


class HorizontalFlip(Op):
    """flip (B,) bool, with probability HFLIP_P."""

    draws = ("flip",)

    def params(self, u, aug, height, width):
        return {"flip": u["flip"] < HFLIP_P}

    def apply(self, x, p, aug):
        return hflip(x, p["flip"])


class ColorJitter(Op):
    """jitter (B,) bool (applied, probability JITTER_P; never at strength 0) and the brightness, contrast,
    saturation and hue (B,) factors of strength s: uniform in [max(0, 1 - 0.8 s), 1 + 0.8 s] and
    [-0.2 s, 0.2 s]. The ops' order per sample is JitterOrder's "jitter_order"."""

    draws = ("jitter", "brightness", "contrast", "saturation", "hue")

    def params(self, u, aug, height, width):
        return {
            "jitter": u["jitter"] < (JITTER_P if aug.jitter_strength > 0 else 0.0),
            "brightness": _lerp(aug.brightness, u["brightness"]),
            "contrast": _lerp(aug.contrast, u["contrast"]),
            "saturation": _lerp(aug.saturation, u["saturation"]),
            "hue": _lerp(aug.hue, u["hue"]),
        }

    def apply(self, x, p, aug):
        if not aug.jitter_strength > 0:
            return x
        return color_jitter(x, p["jitter_order"], p["brightness"], p["contrast"], p["saturation"], p["hue"],
                            p["jitter"])


class Grayscale(Op):
    """grayscale (B,) bool, with probability GRAYSCALE_P."""

    draws = ("grayscale",)

    def params(self, u, aug, height, width):
        return {"grayscale": u["grayscale"] < GRAYSCALE_P}

    def apply(self, x, p, aug):
        return _select(p["grayscale"], rgb_to_grayscale(x, 3), x)


class GaussianBlur(Op):
    """blur (B,) bool (probability BLUR_P, only with ``aug.blur``) and sigma (B,) uniform in SIGMA; the kernel
    is ``aug.kernel_size``."""

    draws = ("blur", "sigma")

    def params(self, u, aug, height, width):
        return {"blur": u["blur"] < (BLUR_P if aug.blur else 0.0), "sigma": _lerp(SIGMA, u["sigma"])}

    def apply(self, x, p, aug):
        if not aug.blur:
            return x
        return _select(p["blur"], gaussian_blur(x, p["sigma"], aug.kernel_size), x)


class JitterOrder(Op):
    """jitter_order (B, 4) int64: the order of ColorJitter's ops per sample, a uniform permutation of
    (BRIGHTNESS, CONTRAST, SATURATION, HUE) as the argsort of 4 draws (torchvision's ``fn_idx``).

    Draws only (ColorJitter applies the order). It has its own place at the end of ``PIPELINE`` because its
    draws come after the blur's in the key: folding them into ColorJitter would renumber the draws after
    the jitter's and change every view."""

    draws = ("jitter_order",) * 4

    def params(self, u, aug, height, width):
        return {"jitter_order": torch.argsort(u["jitter_order"], dim=1)}                      # (B, 4)

    def apply(self, x, p, aug):
        return x


# The ops in the order they are applied, which is also the order of their draws in a view's key. The crop is
# first: image-tree workers cut it alone (``sample_crop_params``) and the device applies the rest (crop=False).
# A new op is one class and one entry here; placed anywhere but at the end it renumbers the draws after it,
# which changes every view (tests/test_batched_augment.py pins the numbers).
PIPELINE: tuple[Op, ...] = (RandomResizedCrop(), HorizontalFlip(), ColorJitter(), Grayscale(), GaussianBlur(),
                            JitterOrder())


def key_layout(ops: Sequence[Op]) -> dict[str, range]:
    """The numbers of every declared draw in a view's key: the ops' ``draws`` one after another, in list order."""
    layout: dict[str, range] = {}
    for op in ops:
        for name, block in itertools.groupby(op.draws):
            if name in layout:
                raise ValueError(f"draw {name!r} declared twice (by {type(op).__name__})")
            n = max((r.stop for r in layout.values()), default=0)
            layout[name] = range(n, n + len(list(block)))
    return layout


DRAWS = key_layout(PIPELINE)                     # name -> range of draw numbers; see the table in the module doc
NUM_DRAWS = max(r.stop for r in DRAWS.values())


def draw_range(names: Sequence[str], layout: dict[str, range] = DRAWS) -> tuple[int, int]:
    """(first, count) of the contiguous draw numbers of ``names`` (an op's ``draws``) in ``layout``."""
    first, stop = min(layout[n].start for n in names), max(layout[n].stop for n in names)
    return first, stop - first


def op_draws(u: torch.Tensor, names: Sequence[str], first: int = 0,
             layout: dict[str, range] = DRAWS) -> dict[str, torch.Tensor]:
    """An op's draws by name from ``u`` (B, count), the draws ``first, first + 1, ...`` of every sample in
    ``layout``: (B,) for a single draw, (B, n) for a block of n."""
    out = {}
    for name in dict.fromkeys(names):
        r = layout[name]
        out[name] = u[:, r.start - first] if len(r) == 1 else u[:, r.start - first:r.stop - first]
    return out


# --------------------------------------------------------------------------------------------
# The module

# --------------------------------------------------------------------------------------------

class BatchedSimCLRAugment(torch.nn.Module):
    """SimCLR's training augmentation (Chen et al. 2020, Appendix A) on a whole batch.

    Every sample's parameters are drawn from its key (``ViewKeys``: seed, epoch, image index, view)
    with the distributions of the per-image torchvision pipeline: random resized crop, flip, colour
    jitter of strength ``jitter_strength`` in random op order, grayscale, optional blur; then the
    sample is normalised. ``forward(images, keys)`` = ``apply(images, sample_params(keys, H, W))``;
    the parameter dict is exposed for testing and for reproducing a view. ``pipeline``: the ops, ``PIPELINE``
    (torchvision's semantics) unless another is given (data/official_augment.py); its first op is the crop.
    """

    def __init__(self, size: int, jitter_strength: float = 1.0, blur: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 pipeline: Sequence[Op] = PIPELINE) -> None:
        super().__init__()
        self.pipeline = tuple(pipeline)
        self.layout = key_layout(self.pipeline)  # name -> draw numbers in a view's key
        self.num_draws = max(r.stop for r in self.layout.values())
        s = float(jitter_strength)
        if not 0.0 <= 0.2 * s <= 0.5:
            raise ValueError(f"jitter_strength must be in [0, 2.5] (hue = 0.2 s <= 0.5), got {s}")
        self.size = int(size)
        self.jitter_strength = s
        self.brightness = self.contrast = self.saturation = (max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s)
        self.hue = (-0.2 * s, 0.2 * s)
        self.blur = bool(blur)
        self.kernel_size = blur_kernel_size(self.size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, jitter_strength={self.jitter_strength}, blur={self.blur} (k={self.kernel_size})"

    def sample_params(self, keys: ViewKeys, height: int, width: int) -> dict[str, torch.Tensor]:
        """Every sample's parameters, from its key alone: each op of ``PIPELINE`` turns its draws into its
        parameters. Returns a dict of tensors on the keys' device:

        top, left, h, w (B,) int64 crop box (``crop_box``, the same box the workers cut for image trees);
        flip (B,) bool; jitter (B,) bool (colour jitter applied); brightness, contrast, saturation, hue (B,)
        float factors; grayscale (B,) bool; blur (B,) bool; sigma (B,) float in [0.1, 2]; jitter_order (B, 4)
        int64 permutation of (BRIGHTNESS, CONTRAST, SATURATION, HUE).
        """
        u = keys.uniform(0, self.num_draws)                                            # (B, num_draws)
        params: dict[str, torch.Tensor] = {}
        for op in self.pipeline:
            params.update(op.params(op_draws(u, op.draws, layout=self.layout), self, height, width))
        return params

    def crop_params(self, keys: ViewKeys, height: int, width: int) -> dict[str, torch.Tensor]:
        """The crop's parameters alone (top, left, h, w), from the crop's draws: what image-tree workers cut."""
        crop = self.pipeline[0]
        first, count = draw_range(crop.draws, self.layout)
        return crop.params(op_draws(keys.uniform(first, count), crop.draws, first, self.layout), self, height, width)

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor], crop: bool = True) -> torch.Tensor:
        """Apply given parameters: the ops of the pipeline in order, then the normalisation.
        images: (B, 3, H, W) uint8 or float in [0, 1]; with ``crop=False`` they are already the crops
        (size x size) and the crop box is not used.
        Returns normalised float32 (B, 3, size, size) on the images' device."""
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        dev = x.device
        p = {k: v.to(dev) for k, v in params.items()}
        if not crop and x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"crop=False needs {self.size}x{self.size} crops, got {tuple(x.shape[-2:])}")
        for op in self.pipeline if crop else self.pipeline[1:]:
            x = op.apply(x, p, self)
        return (x - self.mean.to(dev)) / self.std.to(dev)

    def forward(self, images: torch.Tensor, keys: ViewKeys, crop: bool = True) -> torch.Tensor:
        """images: (B, 3, H, W) uint8 (0..255) or float (0..1), any device; keys: one per image.
        ``crop=False``: the images are already the crops of these keys (cut in DataLoader workers).
        Returns normalised float32 (B, 3, size, size) on the images' device."""
        B, _, H, W = images.shape
        if len(keys) != B:
            raise ValueError(f"{len(keys)} keys for {B} images")
        return self.apply(images, self.sample_params(keys, H, W), crop=crop)
