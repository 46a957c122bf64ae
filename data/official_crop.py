"""The official SimCLR crop (google-research/simclr ``tf2/data_util.py``: ``crop_and_resize``) on a batch, keyed.

``crop_and_resize(image, height, width)`` is, with ``aspect = width / height`` of the output::

    tf.image.sample_distorted_bounding_box(shape, bounding_boxes=[[[0, 0, 1, 1]]], min_object_covered=0.1,
        aspect_ratio_range=(3/4 * aspect, 4/3 * aspect), area_range=(0.08, 1.0), max_attempts=100,
        use_image_if_no_bounding_boxes=True)  ->  tf.image.crop_to_bounding_box
    tf.image.resize(crop, [height, width], method=BICUBIC)           # TF2: antialias=False

* ``official_crop_box`` is TensorFlow's ``SampleDistortedBoundingBoxV2`` kernel
  (``tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc``: the attempts loop of ``DoCompute``,
  ``GenerateRandomCrop``, ``SatisfiesOverlapConstraints``) for one box covering the whole image. Per attempt: an
  aspect ratio uniform in the range, a height uniform over the integers between the heights of the smallest and the
  largest area at that ratio, width = round(height * ratio), then the area and coverage checks (coverage = crop area /
  image area >= 0.1, which is stricter than area_range's 0.08), then the offsets y uniform in [0, H - h), x uniform
  in [0, W - w) (a crop touches the bottom or right edge only when it spans that whole side). The first of the 100
  attempts that passes is kept; when none does, the whole image.
* ``resize_bicubic_tf`` is ``ResizeBicubic`` with ``half_pixel_centers=True`` (``resize_bicubic_op.cc``,
  ``GetWeightsAndIndices<HalfPixelScaler, use_keys_cubic=true>``): Keys' cubic with a = -0.5 at positions quantised
  to 1/1024 (TF's coefficient table), taps outside the crop weighted 0 and the 4 weights renormalised to sum to 1,
  no antialiasing, no clamp of the output (the official pipeline clips at its end).

Draws (``OFFICIAL_CROP_DRAWS``): 100 each of crop_aspect, crop_height, crop_y, crop_x, one of each per attempt, each a
uniform in [0, 1) from the view's key (``data/keyed_random.py``); an integer uniform in [0, n) is floor(u * n) in
float64, exact for the 24-bit u. TF draws from Philox, only when it needs a number (RandFloat: 23 random bits;
Uniform(n): ExactUniformInt, unbiased): the same distributions, not TF's random stream.

Where the C++ rounds to an integer (lrintf: to nearest, ties to even; static_cast<int>: truncation) the operands are
computed in float32 (double where the C++ is double) with the C++'s operations in the C++'s order, so that the boxes
are those of TF's arithmetic for the same uniforms, not merely close to them: one float32 ulp in sqrt(area / ratio)
moves a height across a half-integer now and then. The same boxes on CPU and CUDA: float32 and float64 +, -, * and /
are correctly rounded IEEE operations on both, each op its own kernel (eager mode: nothing is contracted into an
FMA), divisions are tensor / tensor (a CUDA division by a Python scalar is a multiplication by its reciprocal), the
float32 roots are exact on both (``_sqrt_f32``: torch's CPU sqrt is not correctly rounded, a faithful float64 root
suffices), and torch.round, floor and trunc are exact; so every intermediate, hence every box, is bitwise the same.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from data.batched_augment import resample

__all__ = ["OFFICIAL_CROP_DRAWS", "NUM_ATTEMPTS", "official_crop_draws", "official_crop_box", "resize_bicubic_tf"]

NUM_ATTEMPTS = 100                                # max_attempts
AREA_RANGE = (0.08, 1.0)                          # area_range
MIN_OBJECT_COVERED = 0.1                          # min_object_covered
_KEPS = float(np.float32(1e-7))                   # GenerateRandomCrop's `const float kEps = 0.0000001`
_TABLE_SIZE = 1024                                # resize_bicubic_op.cc kTableSize
_KEYS_A = -0.5                                    # Keys' cubic (use_keys_cubic)

OFFICIAL_CROP_DRAWS = (("crop_aspect",) * NUM_ATTEMPTS + ("crop_height",) * NUM_ATTEMPTS
                       + ("crop_y",) * NUM_ATTEMPTS + ("crop_x",) * NUM_ATTEMPTS)


def _f32(x: float) -> float:
    """x rounded to float32 (a C++ float constant or attribute), as a Python float."""
    return float(np.float32(x))


def official_crop_draws(u: torch.Tensor) -> dict[str, torch.Tensor]:
    """The named draws from ``u`` (B, 400), the draws of ``OFFICIAL_CROP_DRAWS`` in order: name -> (B, 100)."""
    out, start = {}, 0
    for name, block in itertools.groupby(OFFICIAL_CROP_DRAWS):
        n = len(list(block))
        out[name] = u[:, start:start + n]
        start += n
    return out


def _div(num: float, den: torch.Tensor) -> torch.Tensor:
    """num / den elementwise, one correctly rounded division (``num / den`` in torch is den.reciprocal() * num)."""
    return torch.full_like(den, num).div_(den)


def _sqrt_f32(x: torch.Tensor) -> torch.Tensor:
    """C++'s ``std::sqrt(float)``, the correctly rounded float32 root of x > 0 (float32): the float64 root rounded to
    float32. (torch.sqrt in float32 is not correctly rounded: on CPU it misses by an ulp for ~15% of the inputs.)

    Exact: near a root in [2**k, 2**(k+1)) the float32 midpoints are m = (2M + 1) 2**(k-24) and x is a multiple of
    2**(2k-23), so x - m**2 is an odd multiple of 2**(2k-48) and |sqrt(x) - m| >= 2**(2k-48) / 2**(k+2) = 2**(k-50):
    a float64 root within an ulp (2**(k-52); torch's CPU root is, CUDA's is correctly rounded) is on the same side of
    every midpoint as the true root, hence rounds to the same float32.
    """
    return torch.sqrt(x.double()).float()


def _attempts(u: dict[str, torch.Tensor], height: int, width: int,
              aspect: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every attempt of ``DoCompute``'s loop at once: (passed, h, w), each (B, T); h, w integer-valued float32.

    float32 tensors hold the C++ ints (exact below 2**24) so that int * float is one float32 product, as in C++.
    """
    H, W = float(height), float(width)
    lo, hi = _f32(3 / 4 * aspect), _f32(4 / 3 * aspect)             # the float attr aspect_ratio_range
    span = float(np.float32(hi) - np.float32(lo))
    min_area = float(np.float32(AREA_RANGE[0]) * np.float32(W) * np.float32(H))  # min_relative * width * height
    max_area = float(np.float32(AREA_RANGE[1]) * np.float32(W) * np.float32(H))
    ratio = u["crop_aspect"].float() * span + lo                    # (B, T) RandFloat() * (max - min) + min

    # GenerateRandomCrop
    h = torch.round(_sqrt_f32(_div(min_area, ratio)))             # lrintf(std::sqrt(min_area / aspect_ratio))
    max_h = torch.round(_sqrt_f32(_div(max_area, ratio)))
    # if lrintf(max_height * r) > W: max_height = int((W + 0.5 - kEps) / r) (in double), minus 1 if still too wide
    fix = torch.trunc(_div(W + 0.5 - _KEPS, ratio.double())).float()
    fix = fix - (torch.round(fix * ratio) > W).float()
    max_h = torch.where(torch.round(max_h * ratio) > W, fix, max_h).clamp_(max=H)
    h = torch.minimum(h, max_h)
    n = (max_h - h + 1).double()                                   # >= 1; Uniform(n) only when n > 1, else 0
    h = h + torch.floor(u["crop_height"].double() * n).float()
    w = torch.round(h * ratio)                                      # lrintf(height * aspect_ratio)
    h = h + (w * h < min_area).float()                              # area < min_area: a slightly bigger rectangle
    w = torch.round(h * ratio)                                      # (the same w where h is the same)
    h = h - (w * h > max_area).float()                              # area > max_area: a slightly smaller one
    w = torch.round(h * ratio)
    area = w * h                                                    # static_cast<float>(width * height)
    ok = (area >= min_area) & (area <= max_area) & (w <= W) & (h <= H) & (w > 0) & (h > 0)

    # SatisfiesOverlapConstraints with the box [0, 0, 1, 1] = the image: crop.Area() / object_area >= 0.1f
    image_area = float(np.float32(width * height))
    covered = area.div(torch.full_like(area, image_area)) >= _f32(MIN_OBJECT_COVERED)
    return ok & covered, h, w


def official_crop_box(u: dict[str, torch.Tensor], height: int, width: int,
                      aspect: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TF's ``sample_distorted_bounding_box`` as the official ``crop_and_resize`` calls it, for every sample.

    u: the draws of ``OFFICIAL_CROP_DRAWS`` by name, each (B, 100) float32 in [0, 1); height, width: the image's;
    aspect: the output's width / height (the aspect ratio range is 3/4 to 4/3 of it).
    Returns ``(top, left, h, w)``, each a (B,) int64 tensor on the draws' device (the whole image when all 100
    attempts fail).
    """
    passed, h_try, w_try = _attempts(u, height, width, aspect)     # (B, T) each
    first = passed.int().argmax(dim=1, keepdim=True)                # (B, 1) first attempt that passed
    found = passed.any(dim=1)                                       # (B,)
    h = torch.where(found, h_try.gather(1, first).squeeze(1), float(height))       # (B,) float32
    w = torch.where(found, w_try.gather(1, first).squeeze(1), float(width))
    # y = Uniform(H - h) if h < H else 0: floor(u * (H - h)) is both, and 0 for the whole-image fallback.
    top = torch.floor(u["crop_y"].gather(1, first).squeeze(1).double() * (height - h.double()))
    left = torch.floor(u["crop_x"].gather(1, first).squeeze(1).double() * (width - w.double()))
    return top.long(), left.long(), h.long(), w.long()


def _keys_table(x: torch.Tensor, near: bool) -> torch.Tensor:
    """TF's coefficient table (``InitCoeffsTable(-0.5)``) at x (float64): its double arithmetic, stored as float32.
    The near branch is Keys' cubic for |d| <= 1 at d = x, the far branch for 1 <= |d| <= 2 at d = x + 1."""
    a = _KEYS_A
    if near:
        return ((((a + 2) * x - (a + 3)) * x) * x + 1).float()
    x = x + 1
    return ((((a * x - 5 * a) * x + 8 * a) * x) - 4 * a).float()


def _bicubic_tf_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """Per-sample 1-D resampling matrices of TF's half-pixel Keys-cubic resize of the crops
    ``start .. start + length - 1`` to ``out_size`` pixels.  start, length: (B,) int.  Returns (B, O, I) float32.

    ``GetWeightsAndIndices``: scale = length / out (float), in_loc_f = (i + 0.5f) * scale - 0.5f,
    in_loc = floor(in_loc_f), offset = lrintf((in_loc_f - in_loc) * 1024); taps in_loc - 1 .. in_loc + 2 with
    the weights far(offset), near(offset), near(1024 - offset), far(1024 - offset) of the coefficient table
    (``_keys_table``), each 0 where its tap is outside [0, length), then multiplied by 1 / (their float sum)
    (skipped if the sum is below 1000 * FLT_MIN).
    """
    device = start.device
    B = start.shape[0]
    length_f = length.to(device=device, dtype=torch.float32)
    scale = length_f.div(torch.full_like(length_f, float(out_size)))                      # (B,)
    pos = torch.arange(out_size, device=device, dtype=torch.float32) + 0.5                # (O,)
    in_loc_f = pos * scale[:, None] - 0.5                                                 # (B, O)
    in_loc = torch.floor(in_loc_f)
    offset = torch.round((in_loc_f - in_loc) * _TABLE_SIZE).double()                      # (B, O) in 0 .. 1024
    x, x_rev = offset / _TABLE_SIZE, (_TABLE_SIZE - offset) / _TABLE_SIZE                 # exact: i / 2**10
    weights = torch.stack([_keys_table(x, near=False), _keys_table(x, near=True),
                           _keys_table(x_rev, near=True), _keys_table(x_rev, near=False)], dim=-1)  # (B, O, 4)
    taps = in_loc[:, :, None] + torch.arange(-1, 3, device=device, dtype=torch.float32)  # (B, O, 4) in the crop
    inside = (taps >= 0) & (taps < length_f[:, None, None])
    weights = torch.where(inside, weights, torch.zeros_like(weights))
    w0, w1, w2, w3 = weights.unbind(-1)
    total = (((w0 + w1) + w2) + w3)[:, :, None]                                          # float sum, C++ order
    norm = total.abs() >= 1000 * torch.finfo(torch.float32).tiny
    weights = torch.where(norm, weights * torch.reciprocal(total), weights)
    cols = torch.minimum(taps.clamp(min=0), length_f[:, None, None] - 1).long()          # Bound(., length)
    cols = (cols + start.to(device)[:, None, None]).clamp_(0, in_size - 1)               # (B, O, 4) image index
    dense = torch.zeros(B, out_size, in_size, device=device, dtype=torch.float32)
    return dense.scatter_add_(2, cols, weights)                                           # (B, O, I)


def resize_bicubic_tf(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: torch.Tensor,
                      w: torch.Tensor, size: int) -> torch.Tensor:
    """Crop every sample's box and resize it to size x size as TF2's ``tf.image.resize(crop, [size, size], BICUBIC)``
    (``ResizeBicubic``, half_pixel_centers=True, no antialiasing) does.

    images: (B, C, H, W) float; top, left, h, w: (B,) int tensors (boxes inside the image).
    Returns (B, C, size, size) in the images' dtype, not clamped (Keys' cubic overshoots at edges).
    """
    _, _, H, W = images.shape
    dev = images.device
    wy = _bicubic_tf_matrix(top.to(dev), h.to(dev), H, size)                           # (B, S, H)
    wx = _bicubic_tf_matrix(left.to(dev), w.to(dev), W, size)                          # (B, S, W)
    return resample(images, wy, wx)
