"""Tests of data/official_crop.py: the boxes are TensorFlow's ``sample_distorted_bounding_box`` arithmetic on the same
draws (a plain transcription of the C++), their distribution is the one derived from the algorithm, a box depends on
its key alone, and the resize is TF's half-pixel Keys-cubic ``ResizeBicubic`` (a NumPy loop, and TF if installed)."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from data.keyed_random import ViewKeys
from data.official_crop import (NUM_ATTEMPTS, OFFICIAL_CROP_DRAWS, _sqrt_f32, official_crop_box,
                                official_crop_draws, resize_bicubic_tf)

F = np.float32


def _draws(n: int, seed: int) -> dict[str, torch.Tensor]:
    """n samples' draws, uniform in [0, 1) with 24 random bits as the keyed ones (a generator: hashing 400 draws of
    20k keys takes a second, and the arithmetic under test does not care where the uniforms come from)."""
    bits = torch.randint(0, 2**24, (n, len(OFFICIAL_CROP_DRAWS)), generator=torch.Generator().manual_seed(seed))
    return official_crop_draws(bits.float() * 2.0**-24)


# ------------------------------------------------------------------------------------------
# 1. The boxes are TF's: a transcription of sample_distorted_bounding_box_op.cc on the same draws
# ------------------------------------------------------------------------------------------

def _lrintf(x: np.float32) -> int:
    return int(np.rint(x))  # to nearest, ties to even (the default rounding mode)


def _generate_random_crop(W: int, H: int, r: np.float32, uh: float, uy: float, ux: float):
    """``GenerateRandomCrop(W, H, 0.08f, 1.0f, r, ...)`` line by line: float steps in np.float32, the kEps step in
    double as in C++ (int + double - float), random->Uniform(n) = floor(u * n). Returns (y, x, h, w) or None."""
    min_area = F(0.08) * F(W) * F(H)
    max_area = F(1.0) * F(W) * F(H)
    height = _lrintf(np.sqrt(min_area / r))
    max_height = _lrintf(np.sqrt(max_area / r))
    if _lrintf(F(max_height) * r) > W:
        max_height = int((W + 0.5 - float(F(0.0000001))) / float(r))
        if _lrintf(F(max_height) * r) > W:
            max_height -= 1
    if max_height > H:
        max_height = H
    if height >= max_height:
        height = max_height
    if height < max_height:
        height += math.floor(uh * (max_height - height + 1))
    width = _lrintf(F(height) * r)
    area = F(width * height)
    if area < min_area:
        height += 1
        width = _lrintf(F(height) * r)
        area = F(width * height)
    if area > max_area:
        height -= 1
        width = _lrintf(F(height) * r)
        area = F(width * height)
    if area < min_area or area > max_area or width > W or height > H or width <= 0 or height <= 0:
        return None
    y = math.floor(uy * (H - height)) if height < H else 0
    x = math.floor(ux * (W - width)) if width < W else 0
    return y, x, height, width


def _tf_box(u: dict[str, np.ndarray], i: int, H: int, W: int, aspect: float = 1.0) -> tuple[int, int, int, int]:
    """The attempts loop of ``DoCompute`` for sample i with the box [0, 0, 1, 1] (the whole image) and
    min_object_covered 0.1: the first crop covering >= 0.1 of the box, else the whole image. (top, left, h, w)."""
    lo, hi = F(3. / 4 * aspect), F(4. / 3. * aspect)          # the float attr aspect_ratio_range
    object_area = F(W * H)
    for k in range(NUM_ATTEMPTS):
        r = u["crop_aspect"][i, k] * (hi - lo) + lo            # RandFloat() * (max - min) + min, in float
        crop = _generate_random_crop(W, H, r, float(u["crop_height"][i, k]), float(u["crop_y"][i, k]),
                                     float(u["crop_x"][i, k]))
        if crop is not None:
            crop_area = F(crop[2] * crop[3])
            if crop_area >= 1 and crop_area / object_area >= F(0.1):
                return crop
    return 0, 0, H, W


# Attempts at rounding boundaries, as (aspect draw, height draw) * 2**24 per size: the box of each differs from the
# one of TF's float32 arithmetic when computed in float64, with ties rounded up, with min_area * (1 / r), with the
# kEps step in float32 or without kEps, or with torch.sqrt (found by scanning all 2**24 aspect draws with 3-5 height
# draws per size). The other float steps (min_area, coverage and max_height's root in float64) changed no attempt
# of these sizes in that scan: they are mirrored for fidelity only.
EDGE_ATTEMPTS = {
    (224, 224): [(64776, 2**22), (323885, 2**22), (393375, 2**22), (8184276, 2**22), (4535621, 2**23)],
    (32, 32): [(8788064, 0), (8628279, 0), (14380468, 3 * 2**22)],
    (375, 500): [(325186, 2**22), (180658, 2**22), (598289, 2**22), (1247893, 2**23)],
    (500, 375): [(28760, 2**22), (283836, 2**22), (1247893, 2**22)],
    (7, 5): [(14380471, 0), (14380468, 0), (2396744, 2**22)],
    (300, 200): [(106785, 2**22), (320356, 2**22), (4107116, 2**22), (608404, 2**22), (12217781, 2**23),
                 (1842574, 2**23)],
}


@pytest.mark.parametrize("H,W,aspect,n", [
    (224, 224, 1.0, 10000), (32, 32, 1.0, 4000), (375, 500, 1.0, 4000), (500, 375, 1.0, 4000),
    (7, 5, 1.0, 4000), (300, 200, 4 / 3, 4000),
])
def test_boxes_are_tf_arithmetic_exactly(H: int, W: int, aspect: float, n: int) -> None:
    """Every box equals the transcription's on the same draws: random ones, the extremes, and EDGE_ATTEMPTS."""
    u = _draws(n, seed=H * 1000 + W)
    for row, (k_aspect, k_height) in enumerate(EDGE_ATTEMPTS[H, W], start=2):   # attempt 0 of rows 2, 3, ...
        u["crop_aspect"][row, 0], u["crop_height"][row, 0] = k_aspect * 2.0**-24, k_height * 2.0**-24
    u["crop_aspect"][0] = 0.0                                   # extremes: every attempt at the smallest ratio,
    u["crop_height"][0] = 0.0                                   # the smallest height (all fail at 224: fallback)
    u["crop_aspect"][1] = 1 - 2.0**-24                          # the largest ratio, height and offsets
    for name in ("crop_height", "crop_y", "crop_x"):
        u[name][1] = 1 - 2.0**-24
    boxes = torch.stack(official_crop_box(u, H, W, aspect), dim=1)                    # (n, 4)
    assert boxes.dtype == torch.int64
    un = {k: v.numpy() for k, v in u.items()}
    assert boxes.tolist() == [list(_tf_box(un, i, H, W, aspect)) for i in range(n)]


def test_sqrt_is_correctly_rounded() -> None:
    """The float32 root is C++'s (NumPy's) correctly rounded one, where torch.sqrt on CPU can miss by an ulp."""
    x = torch.rand(200000, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 6, 200000)
    x = torch.cat([x, torch.tensor([18906.248046875, 1.0, 4.0, 2.0**-20, 2.0**24 - 1])])   # 137.49999 -> 137.5
    assert np.array_equal(_sqrt_f32(x).numpy(), np.sqrt(x.numpy()))


def test_fallback_is_the_whole_image() -> None:
    """All 100 attempts fail -> the whole image (``crop_rect = image_rect``): at 224x224 with every draw 0 (ratio 3/4,
    height 73, width 55: area 0.08 < 0.1), and always for a 4x100 strip (any crop has area <= 4 * 5 < 0.1 * 400)."""
    zeros = {name: torch.zeros(3, NUM_ATTEMPTS) for name in dict.fromkeys(OFFICIAL_CROP_DRAWS)}
    assert torch.stack(official_crop_box(zeros, 224, 224), 1).tolist() == [[0, 0, 224, 224]] * 3
    assert torch.stack(official_crop_box(_draws(50, 1), 4, 100), 1).tolist() == [[0, 0, 4, 100]] * 50


# ------------------------------------------------------------------------------------------
# 2. Distribution, against expectations derived from the algorithm
# ------------------------------------------------------------------------------------------

def _attempt_law(H: int, W: int, nodes: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, h, w): the probability that an attempt is (ratio node r, height h) and passes, with that attempt's h and w
    (R, K), by the midpoint rule over r (uniform on [3/4, 4/3]) of exact sums over the height h (uniform over the
    integers h_lo .. h_hi given r; h + 1 where the area is below 0.08 A, as GenerateRandomCrop's "slightly bigger
    rectangle")."""
    A = H * W
    r = 0.75 + (4 / 3 - 0.75) * (np.arange(nodes) + 0.5) / nodes                    # (R,)
    h_lo = np.rint(np.sqrt(0.08 * A / r))
    h_hi = np.rint(np.sqrt(A / r))
    fit = np.floor((W + 0.5) / r)                                                   # largest h with round(h r) <= W
    h_hi = np.minimum(np.where(np.rint(h_hi * r) > W, fit, h_hi), H)
    h_lo = np.minimum(h_lo, h_hi)
    k = np.arange(H + 1)
    h = h_lo[:, None] + k                                                           # (R, K)
    w = np.rint(h * r[:, None])
    h = h + (w * h < 0.08 * A)                                                      # area < min_area: h + 1
    w = np.rint(h * r[:, None])
    passes = (k < (h_hi - h_lo + 1)[:, None]) & (w * h >= 0.1 * A) & (w <= W) & (h <= H)
    return passes / (h_hi - h_lo + 1)[:, None] / nodes, h, w


def _expected_area(H: int, W: int, nodes: int = 2000) -> tuple[float, float, float]:
    """(P(an attempt passes), E[area fraction], its standard deviation) of the kept crop: the first passing
    attempt's law is the attempt's law conditioned on passing (``_attempt_law``)."""
    p, h, w = _attempt_law(H, W, nodes)
    f = w * h / (H * W)
    P = p.sum()
    mean = (p * f).sum() / P
    return P, mean, math.sqrt((p * f * f).sum() / P - mean**2)


def _binned(H: int, W: int, value, edges: np.ndarray) -> np.ndarray:
    """P(value(h, w) in each bin [edges[i], edges[i + 1])) for the kept crop."""
    p, h, w = _attempt_law(H, W)
    v = value(h, w)
    return np.array([p[(v >= lo) & (v < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])]) / p.sum()


@functools.cache
def boxes_224() -> tuple[torch.Tensor, ...]:
    """(top, left, h, w) of 100k kept crops at 224x224, shared by the distribution tests (~2 s)."""
    return official_crop_box(_draws(100_000, seed=7), 224, 224)


def test_distribution_at_224() -> None:
    """Mean area fraction and fallback rate at 224x224 against their derivation.

    An attempt draws r uniform on [3/4, 4/3] and the height h uniform over the integers from
    round(sqrt(0.08 A / r)) to h_hi (round(sqrt(A / r)), capped so that round(h r) <= W, and at H); w = round(h r).
    It passes iff w h >= 0.1 A (min_object_covered; area_range's 0.08 is weaker), and the kept crop is the first
    passing attempt, so its law is the attempt's law conditioned on passing: E[f] = E[f 1_pass] / P(pass), a 1-D
    integral over r of exact finite sums over h (``_expected_area``): P = 0.9455, E[f] = 0.4224, sd 0.2276 at 224.
    In the continuum limit (t = h / S uniform on [sqrt(0.08 / r), min(1, 1 / r)], f = r t^2) the same integral
    gives P = 0.9483, E[f] = 0.4209: the issue's 0.42. torchvision's sampler (0.48) draws the area uniformly in
    [0.08, 1] instead of the side, which puts more mass on large crops. All attempts fail with probability
    (1 - P)^100 < 1e-120: no fallback is expected. Tolerance: 4 standard errors sd / sqrt(N).
    """
    top, left, h, w = boxes_224()
    N, S = len(h), 224
    f = (h * w).double() / (S * S)
    P, mean, sd = _expected_area(S, S)
    assert abs(P - 0.9455) < 1e-3 and abs(mean - 0.4224) < 1e-3                     # the docstring's numbers
    assert abs(f.mean().item() - mean) < 4 * sd / math.sqrt(N)
    assert (f >= 0.1).all()                                                         # coverage, and no fallback:
    assert (f < 1).float().mean() > 0.999                                           # a full box is a rare pass
    ratio = w.double() / h.double()
    assert (ratio >= 0.75 - 0.5 / h).all() and (ratio <= 4 / 3 + 0.5 / h).all()     # w = round(h r)
    assert ratio.min() < 0.76 and ratio.max() > 1.32
    # Offsets uniform in [0, S - h): a crop touches the bottom / right edge only when it spans the whole side.
    assert ((top >= 0) & ((top + h < S) | (h == S)) & (left >= 0) & ((left + w < S) | (w == S))).all()
    assert ((top + h == S - 1).sum() > 0) and ((left + w == S - 1).sum() > 0)
    rel = (top.double() + 0.5) / (S - h).double().clamp(min=1)                      # ~ uniform on (0, 1)
    assert abs(rel.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / N)


def test_area_and_aspect_distributions_at_224() -> None:
    """The histograms of the kept crop's area fraction w h / A and aspect w / h over 100k draws, bin by bin, against
    the law derived in _attempt_law; tolerance 4 binomial standard errors sqrt(q (1 - q) / N) a bin. The aspect
    bins tell TF's uniform ratio from torchvision's log-uniform one (mean 1.042 vs 1.014 before rounding), the area
    bins its skew to small crops (half of them below 0.37 of the image)."""
    _, _, h, w = (t.double().numpy() for t in boxes_224())
    N, S = len(h), 224
    for value, edges in ((lambda h, w: w * h / (S * S), np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 1.01])),
                         (lambda h, w: w / h, np.linspace(0.74, 1.345, 9))):
        q = _binned(S, S, value, edges)
        got = np.histogram(value(h, w), edges)[0] / N
        assert abs(q.sum() - 1) < 1e-9 and np.all(np.abs(got - q) < 4 * np.sqrt(q * (1 - q) / N)), (got, q)


def test_fallback_rate() -> None:
    """16x205 (A = 3280): for r in [41/32, 4/3) the heights are 14, 15, 16 and only h = 16, w = round(16 r) = 21
    covers 0.1 A (h = 15 needs w = 22, r >= 1.43); so an attempt passes with P = (4/3 - 41/32) / (4/3 - 3/4) / 3
    = 5/168 and all 100 fail with probability q = (1 - 5/168)^100 = 0.0488 (the box is then the whole image)."""
    N = 10000
    top, left, h, w = official_crop_box(_draws(N, seed=5), 16, 205)
    fell_back = w == 205
    assert ((h == 16) & ((w == 21) | fell_back)).all()
    q = (1 - 5 / 168) ** NUM_ATTEMPTS
    assert abs(_expected_area(16, 205, nodes=20000)[0] - 5 / 168) < 1e-4
    assert abs(fell_back.double().mean().item() - q) < 4 * math.sqrt(q * (1 - q) / N)


def test_a_box_depends_on_its_key_alone() -> None:
    index = torch.arange(1000, 1064)
    u = official_crop_draws(ViewKeys(index, 3, 1, 0).uniform(0, len(OFFICIAL_CROP_DRAWS)))
    boxes = torch.stack(official_crop_box(u, 375, 500), dim=1)                       # (64, 4)
    perm = torch.tensor([17, 3, 60, 4])
    u_sub = official_crop_draws(ViewKeys(index[perm], 3, 1, 0).uniform(0, len(OFFICIAL_CROP_DRAWS)))
    assert torch.equal(torch.stack(official_crop_box(u_sub, 375, 500), dim=1), boxes[perm])
    u_other = official_crop_draws(ViewKeys(index, 3, 1, 1).uniform(0, len(OFFICIAL_CROP_DRAWS)))
    assert (torch.stack(official_crop_box(u_other, 375, 500), dim=1) != boxes).any(dim=1).float().mean() > 0.9


# ------------------------------------------------------------------------------------------
# 3. The resize is TF's ResizeBicubic(half_pixel_centers=True)
# ------------------------------------------------------------------------------------------

def _tf_coeffs_table(a: float = -0.5, size: int = 1024) -> np.ndarray:
    """``InitCoeffsTable``: (size + 1, 2) float32, [i, 0] the kernel at i / size, [i, 1] at i / size + 1 (double)."""
    table = np.zeros((size + 1, 2), dtype=np.float32)
    for i in range(size + 1):
        x = i * 1.0 / size
        table[i, 0] = ((a + 2) * x - (a + 3)) * x * x + 1
        x += 1.0
        table[i, 1] = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return table


def _tf_weights(out_loc: int, scale: np.float32, limit: int, table: np.ndarray) -> tuple[list, list]:
    """``GetWeightsAndIndices<HalfPixelScaler, use_keys_cubic=true>``: the 4 weights and indices of one output."""
    in_loc_f = (F(out_loc) + F(0.5)) * scale - F(0.5)
    in_loc = math.floor(in_loc_f)
    offset = _lrintf((in_loc_f - F(in_loc)) * F(1024))
    raw = [table[offset, 1], table[offset, 0], table[1024 - offset, 0], table[1024 - offset, 1]]
    taps = [in_loc - 1, in_loc, in_loc + 1, in_loc + 2]
    index = [min(limit - 1, max(0, t)) for t in taps]
    weights = [wt if i == t else F(0) for wt, i, t in zip(raw, index, taps)]
    total = ((weights[0] + weights[1]) + weights[2]) + weights[3]
    if abs(total) >= 1000 * np.finfo(np.float32).tiny:
        weights = [wt * (F(1) / total) for wt in weights]
    return weights, index


def _numpy_resize(crop: np.ndarray, size: int) -> np.ndarray:
    """TF's half-pixel bicubic resize of one (C, h, w) crop to (C, size, size): per output pixel, the 4x4 taps."""
    table = _tf_coeffs_table()
    C, h, w = crop.shape
    ys = [_tf_weights(i, F(h) / F(size), h, table) for i in range(size)]
    xs = [_tf_weights(j, F(w) / F(size), w, table) for j in range(size)]
    out = np.zeros((C, size, size), dtype=np.float64)
    for i, (wy, iy) in enumerate(ys):
        for j, (wx, ix) in enumerate(xs):
            patch = crop[:, iy][:, :, ix]                                                  # (C, 4, 4)
            out[:, i, j] = np.einsum("cyx,y,x->c", patch, np.array(wy, np.float64), np.array(wx, np.float64))
    return out


def _boxes_and_image(B: int, H: int, W: int):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(B, 3, H, W, generator=g)
    boxes = torch.tensor([[0, 0, H, W], [H - 1, W - 1, 1, 1], [H - 2, 0, 2, 3], [3, W - 7, 5, 7],
                          [5, 2, 19, 14], [0, 9, 30, 31], [11, 4, H - 11, W - 4], [2, 1, 9, 40]])[:B]
    return images, boxes.unbind(1)


def test_resize_matches_numpy_loop() -> None:
    """Up- and downscaling crops, crops at the image's edges (clamping is at the crop's edges) and of 1-3 pixels."""
    images, (top, left, h, w) = _boxes_and_image(8, 37, 45)
    for size in (16, 24):
        out = resize_bicubic_tf(images, top, left, h, w, size)
        assert out.shape == (8, 3, size, size) and out.dtype == torch.float32
        for b in range(8):
            crop = images[b, :, top[b]:top[b] + h[b], left[b]:left[b] + w[b]].double().numpy()
            assert np.abs(out[b].double().numpy() - _numpy_resize(crop, size)).max() < 1e-5, (size, b)


def test_resize_identity_and_overshoot() -> None:
    """Same size: the weights are (0, 1, 0, 0), the image comes back exactly. Upscaling a checkerboard overshoots
    [0, 1] (Keys' cubic has negative lobes; TF does not clamp)."""
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    full = [torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([12, 12]), torch.tensor([12, 12])]
    assert torch.equal(resize_bicubic_tf(images, *full, 12), images)
    board = ((torch.arange(12)[:, None] + torch.arange(12)) % 2).float().expand(2, 3, 12, 12)
    out = resize_bicubic_tf(board, *full, 40)
    assert out.min() < -0.05 and out.max() > 1.05


def test_resize_matches_tensorflow() -> None:
    tf = pytest.importorskip("tensorflow")
    images, (top, left, h, w) = _boxes_and_image(8, 37, 45)
    out = resize_bicubic_tf(images, top, left, h, w, 24)
    for b in range(8):
        crop = images[b, :, top[b]:top[b] + h[b], left[b]:left[b] + w[b]].permute(1, 2, 0).numpy()
        ref = tf.image.resize([crop], [24, 24], method=tf.image.ResizeMethod.BICUBIC)[0].numpy()
        assert np.abs(out[b].permute(1, 2, 0).numpy() - ref).max() < 1e-5, b
