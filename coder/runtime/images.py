"""Turning user inputs into PIL images, with one clear error per bad input.

Accepted: a path (str/Path), a PIL image, or a numpy ``(H, W, 3)`` / ``(H, W)``
uint8 array (RGB by default; ``bgr=True`` for OpenCV/ROS frames).

Every input is also bounded in shape: an empty image, or one whose long side is more than
``MAX_ASPECT_RATIO`` times its short side, is an :class:`InputError`. open_clip resizes the SHORT side
to the model size first, so a 1x4000 strip would become 224x896000 (~0.8 GB, seconds) before its
centre crop; coder refuses it instead (see README "Input limits").
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError, one_line

# Pillow's own default (~89 Mpx); above it an image is treated as a decompression bomb.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Long side / short side. At 32:1 a 224-pixel model resizes to at most 224x7168 (~5 MB, ~80 ms);
# wider panoramas and strips keep only their middle 1/32 in open_clip's centre crop anyway.
MAX_ASPECT_RATIO = 32


def check_shape(width: int, height: int, where: str = "image", max_aspect: float = MAX_ASPECT_RATIO) -> None:
    """Raise :class:`InputError` for an empty image or one beyond ``max_aspect``:1 (either way).

    >>> check_shape(640, 480)                     # fine
    >>> check_shape(4000, 1)                      # doctest: +SKIP  -> InputError: ... aspect ratio 4000:1 ...
    """
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: {width}x{height} image is empty")
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect:
        raise InputError(f"{where}: {width}x{height} has aspect ratio {ratio:.3g}:1, over the {max_aspect:g}:1 limit "
                         "(resizing its short side to the model size would take unbounded memory); crop it first")


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image file, or raise :class:`InputError` naming it.

    Zero-byte, truncated, non-image files and images over ``max_pixels``
    (decompression bombs) are all rejected before any large allocation.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    return _decode(path, path, max_pixels)


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS,
                 formats: tuple[str, ...] | None = None) -> Image.Image:
    """Like :func:`load_image` for a file's bytes (read elsewhere, e.g. from object storage or a
    ROS message); ``name`` only labels the error: ``decode_image(b"", "s3://b/x.jpg")`` raises
    ``InputError("s3://b/x.jpg: empty file (0 bytes)")``. ``formats`` (PIL names, e.g.
    ``("JPEG", "PNG")``) refuses any other container before it is decoded."""
    if len(data) == 0:
        raise InputError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, formats)


# 16-bit single-channel modes Pillow decodes (a 16-bit grey PNG is ``I;16``; some versions give ``I``).
_MODES_16 = ("I;16", "I;16B", "I;16L", "I;16N")


def mono16_to_8(values: np.ndarray) -> np.ndarray:
    """16-bit grey -> 8-bit as ``cv_bridge`` does mono16 -> mono8: ``v * 255 / 65535``, rounded to nearest.

    The one scaling of every 16-bit grey input: raw ``mono16`` ROS frames, 16-bit PNG files and
    ``png compressed mono16`` CompressedImages. ``mono16_to_8(np.array([0, 257, 65535])) -> [0, 1, 255]``.
    """
    return np.rint(np.asarray(values).astype(np.float32) * np.float32(255.0 / 65535.0)).astype(np.uint8)


def _to_8bit(img: Image.Image) -> Image.Image:
    """A decoded 16-bit grey image as mode ``L`` with :func:`mono16_to_8`; other images copied as they are.

    Without it Pillow's ``convert("RGB")`` clips every value above 255 to white.
    """
    if img.mode in _MODES_16 or (img.mode == "I" and img.format == "PNG"):  # PNG samples are at most 16 bits
        return Image.fromarray(mono16_to_8(np.asarray(img)), mode="L")
    return img.copy()


def _decode(source, name, max_pixels: int, formats: tuple[str, ...] | None = None) -> Image.Image:
    """The one decoder behind every input path: same limits, same one-line errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if formats is not None and img.format not in formats:
                    raise InputError(f"{name}: {img.format} data, expected {' or '.join(f.lower() for f in formats)}")
                w, h = img.size
                if w * h > max_pixels:
                    raise InputError(f"{name}: {w}x{h} pixels exceeds the {max_pixels} limit (decompression bomb?)")
                check_shape(w, h, str(name))  # before decoding: nothing large is allocated
                img.load()
                return _to_8bit(img)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{name}: decompression bomb rejected ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{name}: cannot decode image ({one_line(e)})") from None


def array_to_pil(arr: np.ndarray, bgr: bool = False) -> Image.Image:
    """``(H, W, 3)`` or ``(H, W)`` uint8 array -> PIL image (BGR channels swapped when ``bgr``)."""
    if not isinstance(arr, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.uint8:
        raise InputError(f"image array must be uint8, got {arr.dtype} (scale floats to 0..255 and cast)")
    if arr.ndim == 2:
        check_shape(arr.shape[1], arr.shape[0], f"array {arr.shape}")
        return Image.fromarray(arr, mode="L")
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"image array must be (H, W, 3) or (H, W) uint8, got shape {arr.shape}")
    check_shape(arr.shape[1], arr.shape[0], f"array {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    if bgr:
        arr = arr[..., ::-1]
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def to_pil(item: Any, bgr: bool = False, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Any accepted input -> PIL image (see module docstring)."""
    if isinstance(item, Image.Image):
        check_shape(*item.size, where=f"PIL image {item.size[0]}x{item.size[1]}")
        return item
    if isinstance(item, (str, os.PathLike)):
        return load_image(item, max_pixels)
    if isinstance(item, np.ndarray):
        return array_to_pil(item, bgr)
    raise InputError(f"unsupported image input of type {type(item).__name__}; pass a path, PIL image or uint8 array")
