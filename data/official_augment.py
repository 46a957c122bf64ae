"""``--augment official``: the SimCLR augmentation as the official TF2 code computes it (google-research/simclr,
``tf2/data_util.py``: ``preprocess_for_train`` and ``batch_random_blur``), batched and keyed as
``data/batched_augment.py``'s pipeline (every draw from the view's key, the same views at any batch or world size).

Per sample, where it differs from torchvision's semantics (``PIPELINE``)::

    crop_and_resize          tf.image.sample_distorted_bounding_box (100 attempts, area (0.08, 1), aspect (3/4, 4/3),
                             min_object_covered 0.1) and bicubic without antialiasing   (data/official_crop.py)
    random_flip_left_right   the same
    color_jitter (p 0.8)     brightness x * f, contrast around each channel's mean, saturation in HSV, hue; a random
                             order, a clip to [0, 1] after each op                       (data/official_color.py)
    to_grayscale (p 0.2)     the same
    clip to [0, 1]           preprocess_for_train's last op
    blur (p 0.5)             zero padding, 2 * int(size // 10 / 2) + 1 taps, then a clip; sigma per image (the
                             official code draws one per batch: not a function of the view's key)
    inputs in [0, 1]         no mean/std normalisation (data.datasets.input_info)

The draw names that ``PIPELINE`` also has keep their meaning; the layout of a view's key follows from
``OFFICIAL_PIPELINE`` (``key_layout``), so the two pipelines draw differently for the same key.
"""
from __future__ import annotations

import torch

from data.batched_augment import (PIPELINE, Grayscale, HorizontalFlip, JitterOrder, Op, _lerp, _select)
from data.official_color import color_jitter_tf, gaussian_blur_tf
from data.official_crop import OFFICIAL_CROP_DRAWS, official_crop_box, resize_bicubic_tf

JITTER_P, BLUR_P, SIGMA = 0.8, 0.5, (0.1, 2.0)


class OfficialCrop(Op):
    """The crop box of ``sample_distorted_bounding_box`` (``official_crop_box``) and TF2's bicubic resize without
    antialiasing to ``aug.size``, not clipped (the official pipeline clips later): top, left, h, w (B,) int64."""

    draws = OFFICIAL_CROP_DRAWS

    def params(self, u, aug, height, width):
        top, left, h, w = official_crop_box(u, height, width)
        return {"top": top, "left": left, "h": h, "w": w}

    def apply(self, x, p, aug):
        return resize_bicubic_tf(x, p["top"], p["left"], p["h"], p["w"], aug.size)         # (B, 3, S, S)

    def cut(self, img, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
        """An image-tree worker's crop of one PIL image: the same resize in float, rounded to uint8 (3, S, S)."""
        from torchvision.transforms.functional import pil_to_tensor
        x = pil_to_tensor(img)[None].float() / 255                                         # (1, 3, H, W)
        crop = resize_bicubic_tf(x, *(torch.tensor([v]) for v in box), size)[0]
        return crop.clamp(0, 1).mul(255).round().to(torch.uint8)


class OfficialColorJitter(Op):
    """jitter (B,) bool (p 0.8; never at strength 0) and the factors of strength s: brightness uniform in
    [max(0, 1 - 0.8 s), 1 + 0.8 s], contrast and saturation in [1 - 0.8 s, 1 + 0.8 s] (TF's random_contrast and
    random_saturation, without torchvision's max(0, .)), hue in [-0.2 s, 0.2 s]; the order is JitterOrder's."""

    draws = ("jitter", "brightness", "contrast", "saturation", "hue")

    def params(self, u, aug, height, width):
        s = aug.jitter_strength
        return {
            "jitter": u["jitter"] < (JITTER_P if s > 0 else 0.0),
            "brightness": _lerp((max(0.0, 1 - 0.8 * s), 1 + 0.8 * s), u["brightness"]),
            "contrast": _lerp((1 - 0.8 * s, 1 + 0.8 * s), u["contrast"]),
            "saturation": _lerp((1 - 0.8 * s, 1 + 0.8 * s), u["saturation"]),
            "hue": _lerp((-0.2 * s, 0.2 * s), u["hue"]),
        }

    def apply(self, x, p, aug):
        if not aug.jitter_strength > 0:
            return x
        return color_jitter_tf(x, p["jitter_order"], p["brightness"], p["contrast"], p["saturation"], p["hue"],
                               p["jitter"])


class Clip(Op):
    """The clip to [0, 1] that ends the official preprocess_for_train (the resize can overshoot)."""

    def params(self, u, aug, height, width):
        return {}

    def apply(self, x, p, aug):
        return x.clamp(0.0, 1.0)


class OfficialBlur(Op):
    """blur (B,) bool (p 0.5, only with ``aug.blur``) and sigma (B,) uniform in [0.1, 2]: zero-padded Gaussian blur
    of ``aug.size // 10`` (TF's kernel_size; 2 * int(k / 2) + 1 taps), then the clip of ``batch_random_blur``."""

    draws = ("blur", "sigma")

    def params(self, u, aug, height, width):
        return {"blur": u["blur"] < (BLUR_P if aug.blur else 0.0), "sigma": _lerp(SIGMA, u["sigma"])}

    def apply(self, x, p, aug):
        if not aug.blur:
            return x
        return _select(p["blur"], gaussian_blur_tf(x, p["sigma"], aug.size // 10), x).clamp(0.0, 1.0)


OFFICIAL_PIPELINE: tuple[Op, ...] = (OfficialCrop(), HorizontalFlip(), OfficialColorJitter(), Grayscale(), Clip(),
                                     OfficialBlur(), JitterOrder())
PIPELINES = {"torchvision": PIPELINE, "official": OFFICIAL_PIPELINE}  # by --augment
