"""Training-time augmentation without torch: RandomResizedCrop + horizontal flip, seeded.

Same algorithm as torchvision's ``RandomResizedCrop(size, scale=(0.5, 1), ratio=(3/4, 4/3),
interpolation=BICUBIC)`` followed by ``RandomHorizontalFlip()`` (Tip-Adapter's and CODER's
support-set transform), driven by a ``numpy.random.Generator`` so a seed reproduces it.

>>> rng = np.random.default_rng(0)
>>> augment(img, (224, 224), rng).size          # doctest: +SKIP
(224, 224)
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

SCALE = (0.5, 1.0)
RATIO = (3 / 4, 4 / 3)


def crop_box(width: int, height: int, rng: np.random.Generator, scale=SCALE, ratio=RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area at an aspect ratio in ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: the central crop at the nearest allowed ratio
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_view(width: int, height: int, rng: np.random.Generator) -> tuple[tuple[int, int, int, int], bool]:
    """The random part of :func:`augment` for a ``width`` x ``height`` image: (crop box, mirror?).

    Drawing needs only the size, so views can be drawn in one order and applied in another
    (``coder fit`` draws epoch-major, then decodes each image once).
    """
    box = crop_box(width, height, rng)
    return box, bool(rng.random() < 0.5)


def apply_view(img: Image.Image, view: tuple[tuple[int, int, int, int], bool], size: tuple[int, int]) -> Image.Image:
    """Crop ``view``'s box, resize to ``size`` (h, w) bicubic, mirror if drawn."""
    (top, left, h, w), flip = view
    out = img.crop((left, top, left + w, top + h)).resize((size[1], size[0]), Image.BICUBIC)
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out


def augment(img: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Random resized crop to ``size`` (h, w), bicubic, then a coin-flip horizontal mirror."""
    return apply_view(img, draw_view(img.width, img.height, rng), size)
