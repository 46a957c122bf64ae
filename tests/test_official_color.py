"""Tests of data/official_color.py (the official SimCLR code's colour jitter and blur) against NumPy / Python
ports of the TensorFlow kernels, written here one image at a time in float64 (plain Python floats per pixel):
``adjust_contrast_op.cc``, ``adjust_saturation_op.cc`` (rgb_to_hsv / hsv_to_rgb), ``adjust_hue_op.cc``
(rgb_to_hv_range / hv_range_to_rgb) and ``tf2/data_util.py``'s ``gaussian_blur``. The ports are checked against
``colorsys``; the float32 ops agree with them to < 1e-5."""
from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest
import torch

from data import batched_augment as BA
from data import official_color as OC

TOL = 1e-5


def _images(B: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """Random float32 images in [0, 1] with edge cases in rows 0-2: black, white, gray, primaries, ties for the
    max, hues exactly 0 and just below 1 (to wrap past 0 and 1); a gray row (S = 0) and an r == g row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 3, H, W, generator=g)
    special = torch.tensor([[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0],
                            [0.2, 0.7, 0.7], [0.8, 0.3, 0.3], [0.8, 0.3, 0.31], [0.9, 0.05, 0.6], [0.0, 0.0, 0.3]])
    n = min(len(special), W)
    x[:, :, 0, :n] = special[:n].T
    x[:, :, 1, :] = x[:, :1, 1, :]                    # gray row
    x[:, 1, 2, :] = x[:, 0, 2, :]                     # r == g row
    return x


def _hwc(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) float32 tensor -> (H, W, 3) float64 array, TF's layout."""
    return x.permute(1, 2, 0).double().numpy()


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)


def _per_pixel(fn, img: np.ndarray) -> np.ndarray:
    out = np.empty_like(img)
    for i, j in itertools.product(range(img.shape[0]), range(img.shape[1])):
        out[i, j] = fn(*(float(c) for c in img[i, j]))
    return out


# ------------------------------------------------------------------------------------------
# References: the TF kernels, ported line by line (Python floats = float64)
# ------------------------------------------------------------------------------------------

def _tf_rgb_to_hsv(r: float, g: float, b: float) -> tuple[float, float, float]:
    """adjust_saturation_op.cc internal::rgb_to_hsv: h in [0, 1), s = 0 where v <= 0, h = 0 where range <= 0."""
    vv = max(r, g, b)
    rng = vv - min(r, g, b)
    s = rng / vv if vv > 0 else 0.0
    if rng <= 0.0:
        hh = 0.0                                      # C++: norm = 1 / (6 * 0) = inf, then overwritten to 0
    else:
        norm = 1.0 / (6.0 * rng)
        if r == vv:
            hh = norm * (g - b)
        elif g == vv:
            hh = norm * (b - r) + 2.0 / 6.0
        else:
            hh = norm * (r - g) + 4.0 / 6.0
    if hh < 0.0:
        hh = hh + 1
    return hh, s, vv


def _tf_hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    """adjust_saturation_op.cc internal::hsv_to_rgb (sector int(6 h), a switch)."""
    c = s * v
    m = v - c
    dh = h * 6
    h_category = int(dh)
    fmodu = dh
    while fmodu <= 0:
        fmodu += 2.0
    while fmodu >= 2.0:
        fmodu -= 2.0
    x = c * (1 - abs(fmodu - 1))
    rr, gg, bb = {0: (c, x, 0), 1: (x, c, 0), 2: (0, c, x), 3: (0, x, c), 4: (x, 0, c), 5: (c, 0, x)}.get(
        h_category, (0, 0, 0))
    return rr + m, gg + m, bb + m


def _tf_rgb_to_hv_range(r: float, g: float, b: float) -> tuple[float, float, float]:
    """adjust_hue_op.cc internal::rgb_to_hv_range: h in [0, 6] from the channels' order."""
    if r < g:
        if b < r:
            v_max, v_mid, v_min, cat = g, r, b, 1
        elif b > g:
            v_max, v_mid, v_min, cat = b, g, r, 3
        else:
            v_max, v_mid, v_min, cat = g, b, r, 2
    else:
        if b < g:
            v_max, v_mid, v_min, cat = r, g, b, 0
        elif b > r:
            v_max, v_mid, v_min, cat = b, r, g, 4
        else:
            v_max, v_mid, v_min, cat = r, b, g, 5
    if v_max == v_min:
        return 0.0, v_min, v_max
    ratio = (v_mid - v_min) / (v_max - v_min)
    return cat + (ratio if cat % 2 == 0 else 1 - ratio), v_min, v_max


def _tf_hv_range_to_rgb(h: float, v_min: float, v_max: float) -> tuple[float, float, float]:
    """adjust_hue_op.cc internal::hv_range_to_rgb."""
    cat = int(h)
    ratio = h - cat
    if cat % 2 == 1:
        ratio = 1 - ratio
    v_mid = v_min + ratio * (v_max - v_min)
    return {0: (v_max, v_mid, v_min), 1: (v_mid, v_max, v_min), 2: (v_min, v_max, v_mid),
            3: (v_min, v_mid, v_max), 4: (v_mid, v_min, v_max)}.get(cat, (v_max, v_min, v_mid))


def ref_brightness(img: np.ndarray, f: float) -> np.ndarray:
    return img * f


def ref_contrast(img: np.ndarray, f: float) -> np.ndarray:
    """AdjustContrastv2: mean of each channel over the pixels, p += f * (x - p)."""
    mean = img.mean(axis=(0, 1))                      # (3,)
    return mean + f * (img - mean)


def ref_saturation(img: np.ndarray, f: float) -> np.ndarray:
    def px(r, g, b):
        h, s, v = _tf_rgb_to_hsv(r, g, b)
        return _tf_hsv_to_rgb(h, min(1.0, max(0.0, s * f)), v)
    return _per_pixel(px, img)


def ref_hue(img: np.ndarray, delta: float) -> np.ndarray:
    def px(r, g, b):
        h, v_min, v_max = _tf_rgb_to_hv_range(r, g, b)
        h += delta * 6
        while h < 0:
            h += 6
        while h >= 6:
            h -= 6
        return _tf_hv_range_to_rgb(h, v_min, v_max)
    return _per_pixel(px, img)


REF_OPS = {BA.BRIGHTNESS: ref_brightness, BA.CONTRAST: ref_contrast, BA.SATURATION: ref_saturation,
           BA.HUE: ref_hue}


def ref_blur(img: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    """tf2/data_util.py gaussian_blur: separable, zero padding ('SAME'), along W then H. img: (H, W, C)."""
    radius = int(kernel_size / 2)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-t ** 2 / (2.0 * sigma ** 2))
    k /= k.sum()
    H, W, _ = img.shape
    p = np.pad(img, ((0, 0), (radius, radius), (0, 0)))
    rows = sum(k[i] * p[:, i:i + W] for i in range(len(k)))
    p = np.pad(rows, ((radius, radius), (0, 0), (0, 0)))
    return sum(k[i] * p[i:i + H] for i in range(len(k)))


def _ref_batch(ref, x: torch.Tensor, params) -> torch.Tensor:
    return torch.stack([_chw(ref(_hwc(x[i]), float(params[i]))) for i in range(x.shape[0])])


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------------------
# The references themselves: the TF kernels' HSV is colorsys's
# ------------------------------------------------------------------------------------------

def test_tf_kernel_ports_agree_with_colorsys() -> None:
    img = _hwc(_images(1, 3, 12, seed=5)[0])
    for f in (0.0, 0.5, 1.7, 10.0):
        def sat(r, g, b):
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            return colorsys.hsv_to_rgb(h, min(1.0, s * f), v)
        assert np.abs(ref_saturation(img, f) - _per_pixel(sat, img)).max() < 1e-12
    for d in (-0.5, -0.45, 0.0, 0.3, 0.5):
        def hue(r, g, b):
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            return colorsys.hsv_to_rgb((h + d) % 1.0, s, v)
        assert np.abs(ref_hue(img, d) - _per_pixel(hue, img)).max() < 1e-12


# ------------------------------------------------------------------------------------------
# Each op, per-sample parameters
# ------------------------------------------------------------------------------------------

FACTORS = torch.tensor([0.0, 0.2, 0.5, 1.0, 1.3, 1.8, 3.0, 10.0])


@pytest.mark.parametrize("fn,ref", [(OC.adjust_brightness_tf, ref_brightness), (OC.adjust_contrast_tf, ref_contrast),
                                    (OC.adjust_saturation_tf, ref_saturation)])
def test_factor_ops_match_tf_kernels(fn, ref) -> None:
    x = _images(len(FACTORS), 5, 12)
    out = fn(x, FACTORS)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert _maxdiff(out, _ref_batch(ref, x, FACTORS)) < TOL


def test_saturation_edge_cases() -> None:
    x = _images(len(FACTORS), 5, 12)
    out = OC.adjust_saturation_tf(x, FACTORS)
    # H and V kept: the max channel is unchanged; gray (S = 0) and black pixels are unchanged for any factor.
    assert _maxdiff(out.amax(dim=1), x.amax(dim=1)) < 1e-6
    assert torch.equal(out[:, :, 1], x[:, :, 1])                                     # gray row
    assert torch.equal(out[:, :, 0, 0], torch.zeros(len(FACTORS), 3))                # black pixel
    assert _maxdiff(out[0], x[0].amax(dim=0, keepdim=True).expand(3, -1, -1)) < 1e-6  # factor 0: (v, v, v)
    # Factor 10 clips S at 1 (the min channel goes to 0) for every coloured pixel.
    coloured = (x[-1].amax(dim=0) - x[-1].amin(dim=0)) > 0.05
    assert (out[-1].amin(dim=0)[coloured].abs() < 1e-6).all()


def test_hue_is_batched_augment_adjust_hue_and_wraps() -> None:
    deltas = torch.tensor([-0.5, -0.45, -0.2, -0.01, 0.0, 0.2, 0.45, 0.5])
    x = _images(len(deltas), 5, 12, seed=1)
    out = OC.adjust_hue_tf(x, deltas)
    assert _maxdiff(out, _ref_batch(ref_hue, x, deltas)) < TOL
    assert torch.equal(out, BA.adjust_hue(x, deltas))
    assert torch.equal(out[:, :, 1], x[:, :, 1])                                     # gray row: unchanged
    # The deltas move hues past 0 and past 1 (the wrap is exercised): hue 0 (0.8, 0.3, 0.3) at column 8 and
    # hue just below 1 (0.8, 0.3, 0.31) at column 9.
    h = np.array([[colorsys.rgb_to_hsv(*x[i, :, 0, j].tolist())[0] for j in (8, 9)] for i in range(len(deltas))])
    shifted = h + deltas.double().numpy()[:, None]
    assert (shifted < 0).any() and (shifted >= 1).any()
    assert _maxdiff(OC.adjust_hue_tf(x, -deltas), _ref_batch(ref_hue, x, deltas)) > 0.1  # a wrong sign is caught


# ------------------------------------------------------------------------------------------
# The jitter: per-sample order, clip after each op, mask
# ------------------------------------------------------------------------------------------

def test_color_jitter_matches_per_sample_reference() -> None:
    B, s = 12, 1.0
    x = _images(B, 4, 10, seed=2)
    g = torch.Generator().manual_seed(3)
    order = torch.argsort(torch.rand(B, 4, generator=g), dim=1)                     # (B, 4)
    order[:4] = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])
    lo, hi = max(0.0, 1 - 0.8 * s), 1 + 0.8 * s
    b, c, sat = (lo + (hi - lo) * torch.rand(B, generator=g) for _ in range(3))
    hue = 0.2 * s * (2 * torch.rand(B, generator=g) - 1)
    mask = torch.rand(B, generator=g) < 0.75
    mask[:4] = True
    mask[4] = False
    out = OC.color_jitter_tf(x, order, b, c, sat, hue, mask)

    for i in range(B):
        if not mask[i]:
            assert torch.equal(out[i], x[i])
            continue
        img = _hwc(x[i])
        params = {BA.BRIGHTNESS: b[i], BA.CONTRAST: c[i], BA.SATURATION: sat[i], BA.HUE: hue[i]}
        for op in order[i].tolist():
            img = np.clip(REF_OPS[op](img, float(params[op])), 0.0, 1.0)
        assert _maxdiff(out[i], _chw(img)) < TOL, i
    assert out.min() >= 0 and out.max() <= 1
    # The order matters (and is used): reversed orders give other images.
    assert _maxdiff(OC.color_jitter_tf(x, order.flip(1), b, c, sat, hue, mask)[mask], out[mask]) > 0.05


# ------------------------------------------------------------------------------------------
# The blur: TF's taps, zero padding
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("H,W,kernel_size", [(32, 32, 32 // 10), (24, 20, 22), (9, 11, 4)])
def test_gaussian_blur_matches_zero_padded_reference(H: int, W: int, kernel_size: int) -> None:
    sigma = torch.tensor([0.1, 0.7, 1.3, 2.0])
    x = _images(len(sigma), H, W, seed=4)
    out = OC.gaussian_blur_tf(x, sigma, kernel_size)
    ref = torch.stack([_chw(ref_blur(_hwc(x[i]), float(sigma[i]), kernel_size)) for i in range(len(sigma))])
    assert _maxdiff(out, ref) < TOL


@pytest.mark.parametrize("kernel_size,taps", [(3, 3), (4, 5), (22, 23)])
def test_gaussian_blur_taps(kernel_size: int, taps: int) -> None:
    """2 int(kernel_size / 2) + 1 taps: the blur of a point has that support along each axis."""
    x = torch.zeros(1, 3, 48, 48)
    x[:, :, 24, 24] = 1.0
    out = OC.gaussian_blur_tf(x, torch.tensor([2.0]), kernel_size)
    assert int((out[0, 0, 24] > 0).sum()) == taps and int((out[0, 0, :, 24] > 0).sum()) == taps


def test_gaussian_blur_border_is_zero_padded_not_reflected() -> None:
    sigma, kernel_size = torch.tensor([0.5, 1.0, 2.0]), 22                         # 23 taps, radius 11
    r = 11
    const = torch.full((3, 3, 30, 30), 0.8)
    out = OC.gaussian_blur_tf(const, sigma, kernel_size)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-t[None] ** 2 / (2 * sigma.double()[:, None] ** 2))
    half = (k[:, r:].sum(1) / k.sum(1)).float()                                     # taps on the image at an edge
    assert _maxdiff(out[:, :, 0, 0], (0.8 * half ** 2)[:, None].expand(3, 3)) < 1e-6  # corner: darkened
    assert _maxdiff(out[:, :, r:-r, r:-r], const[:, :, r:-r, r:-r]) < 1e-6           # interior: unchanged
    assert _maxdiff(BA.gaussian_blur(const, sigma, 2 * r + 1), const) < 1e-6          # reflect: no darkening
    # Away from the border, the same blur as torchvision's (same taps for an odd kernel of 2r + 1).
    x = _images(3, 30, 30, seed=6)
    inner = (slice(None), slice(None), slice(r, -r), slice(r, -r))
    ours, reflect = OC.gaussian_blur_tf(x, sigma, kernel_size), BA.gaussian_blur(x, sigma, 2 * r + 1)
    assert _maxdiff(ours[inner], reflect[inner]) < 1e-6


# ------------------------------------------------------------------------------------------
# TensorFlow itself, where installed
# ------------------------------------------------------------------------------------------

def test_against_tensorflow() -> None:
    tf = pytest.importorskip("tensorflow")
    factors = torch.tensor([0.0, 0.5, 1.3, 3.0])
    deltas = torch.tensor([-0.45, -0.1, 0.2, 0.5])
    x = _images(4, 6, 12, seed=7)
    for fn, tf_fn, params in [(OC.adjust_contrast_tf, tf.image.adjust_contrast, factors),
                              (OC.adjust_saturation_tf, tf.image.adjust_saturation, factors),
                              (OC.adjust_hue_tf, tf.image.adjust_hue, deltas)]:
        ref = torch.stack([torch.from_numpy(tf_fn(x[i].permute(1, 2, 0).numpy(), float(params[i])).numpy())
                           .permute(2, 0, 1) for i in range(4)])
        assert _maxdiff(fn(x, params), ref) < TOL, tf_fn.__name__
