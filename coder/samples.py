"""Deterministic, natural-looking test scenes (torch-free).

Random noise is a poor probe for numerics: real photos have smooth regions,
edges and textures, which push activations into other ranges. These scenes
have a sky-like gradient, soft textured ground, and a few shaded objects.

>>> img = synthetic_scene(seed=3, size=(320, 240))   # PIL RGB image, 320 wide
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    coarse = rng.random((max(2, h // scale), max(2, w // scale))).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def synthetic_scene(seed: int, size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A reproducible RGB scene of ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    top, bottom = rng.random(3) * 255, rng.random(3) * 255
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    arr = top * (1 - t) + bottom * t + np.zeros((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.4, 0.7))
    ground = rng.random(3) * 255
    texture = _smooth_noise(rng, h - horizon, w, scale=int(rng.integers(4, 16)))[..., None]
    arr[horizon:] = ground * (0.6 + 0.8 * texture)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        rw, rh = rng.integers(w // 10, w // 2), rng.integers(h // 10, h // 2)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [int(x0), int(y0), int(x0 + rw), int(y0 + rh)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color, outline=(0, 0, 0))
    return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.5))))


def synthetic_batch(n: int, seed: int = 0, size: tuple[int, int] = (256, 256)) -> list[Image.Image]:
    """``n`` scenes with varied aspect ratios around ``size``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scale = rng.uniform(0.7, 1.4, 2)
        out.append(synthetic_scene(seed * 1000 + i, (int(size[0] * scale[0]), int(size[1] * scale[1]))))
    return out
