"""open_clip's inference transform in PIL + numpy, bit-exact.

The steps and their order are open_clip's (``open_clip.transform.image_transform``
with ``is_train=False``): resize in the image's ORIGINAL mode (Pillow resizes
palette images with NEAREST and premultiplies RGBA, so converting first would
change pixels), centre crop with ``int(round(...))`` offsets (round half to
even), then ``convert("RGB")``, ``/255`` and normalise with float32 constants.

>>> x = preprocess(Image.open("cat.jpg"), cfg)    # doctest: +SKIP
>>> x.shape, x.dtype                              # (3, 224, 224), float32
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from ..manifest import PreprocessConfig

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def _resize(img: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    # torchvision skips the resize when the size already matches.
    if (img.height, img.width) == (height, width):
        return img
    return img.resize((width, height), resample)


def _resize_short_side(img: Image.Image, size: int, resample: int) -> Image.Image:
    """torchvision ``Resize(int)``: short side -> size, long side truncated."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return _resize(img, new_h, new_w, resample)


def _resize_keep_ratio(img: Image.Image, target: tuple[int, int], longest: float, resample: int) -> Image.Image:
    """open_clip/timm ``ResizeKeepRatio`` without the random parts."""
    h, w = img.height, img.width
    ratio_h, ratio_w = h / target[0], w / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    # max(1, ...): a 1x128 strip would round to width 0, where open_clip itself crashes.
    return _resize(img, max(1, round(h / ratio)), max(1, round(w / ratio)), resample)


def _pad(img: Image.Image, ltrb: list[int], fill: int) -> Image.Image:
    bands = len(img.getbands())
    fill_value = tuple([fill] * bands) if bands > 1 else fill
    if img.mode == "P":
        palette = img.getpalette()
        out = ImageOps.expand(img, border=tuple(ltrb), fill=fill_value)
        out.putpalette(palette)
        return out
    return ImageOps.expand(img, border=tuple(ltrb), fill=fill_value)


def _center_crop_or_pad(img: Image.Image, size: tuple[int, int], fill: int) -> Image.Image:
    crop_h, crop_w = size
    h, w = img.height, img.width
    if crop_w > w or crop_h > h:
        ltrb = [
            (crop_w - w) // 2 if crop_w > w else 0,
            (crop_h - h) // 2 if crop_h > h else 0,
            (crop_w - w + 1) // 2 if crop_w > w else 0,
            (crop_h - h + 1) // 2 if crop_h > h else 0,
        ]
        img = _pad(img, ltrb, fill)
        h, w = img.height, img.width
        if (crop_h, crop_w) == (h, w):
            return img
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The geometric part of the transform; returns an image of ``cfg.size`` in its original mode."""
    resample = _RESAMPLE.get(cfg.interpolation, Image.BICUBIC)
    h, w = cfg.size
    if cfg.resize_mode == "longest":
        img = _resize_keep_ratio(img, cfg.size, 1.0, resample)
        return _center_crop_or_pad(img, cfg.size, cfg.fill_color)
    if cfg.resize_mode == "squash":
        return _resize(img, h, w, resample)
    if h == w:
        img = _resize_short_side(img, h, resample)
    else:
        # open_clip builds ResizeKeepRatio(size) here without passing the interpolation: bicubic.
        img = _resize_keep_ratio(img, cfg.size, 0.0, Image.BICUBIC)
    return _center_crop_or_pad(img, cfg.size, 0)


def normalize(rgb: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB PIL image -> (3,H,W) float32, ``(x/255 - mean) / std``."""
    return normalize_uint8(np.asarray(rgb, dtype=np.uint8), cfg)


def normalize_uint8(arr: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 RGB -> ``(..., 3, H, W)`` float32, ``(x/255 - mean) / std``:
    a batch ``(B, 224, 224, 3)`` gives ``(B, 3, 224, 224)``, equal to :func:`normalize` per image."""
    x = arr.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis((x - mean) / std, -1, -3))


def crop_rgb(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """One PIL image (any mode) -> ``(H, W, 3)`` uint8: the geometric part and the RGB conversion,
    a quarter of the float input's bytes (what a decode stage hands to an encoder stage)."""
    return np.asarray(resize_and_crop(img, cfg).convert("RGB"), dtype=np.uint8)


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """One PIL image (any mode) -> (3, H, W) float32 model input."""
    return normalize(resize_and_crop(img, cfg).convert("RGB"), cfg)


def preprocess_batch(images: list[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """List of PIL images -> (B, 3, H, W) float32."""
    h, w = cfg.size
    out = np.empty((len(images), 3, h, w), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = preprocess(img, cfg)
    return out
