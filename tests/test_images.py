"""Bad inputs give one clear InputError naming the file; arrays are checked."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from coder.errors import InputError
from coder.runtime.images import array_to_pil, load_image, to_pil


def _png_header_only(path, w, h):
    """A PNG that claims w x h pixels but holds no pixel data (a cheap bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_good_image_loads_fully(tmp_path):
    p = tmp_path / "ok.png"
    Image.new("RGB", (10, 7), (1, 2, 3)).save(p)
    img = load_image(p)
    assert img.size == (10, 7) and img.getpixel((0, 0)) == (1, 2, 3)


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG (Pillow mode I;16) once became a white image (values above 255 clipped in RGB
    conversion); it is scaled to 8 bits as cv_bridge scales mono16 (v * 255 / 65535, rounded)."""
    from coder.runtime.images import decode_image
    from coder.manifest import PreprocessConfig
    from coder.runtime.preprocess import preprocess

    v = (np.arange(48 * 32, dtype=np.uint32).reshape(32, 48) * 42).astype(np.uint16)
    p = tmp_path / "depth16.png"
    Image.fromarray(v).save(p)
    want = np.floor(v / 257 + 0.5).astype(np.uint8)
    for img in (load_image(p), decode_image(p.read_bytes(), "x")):
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), want)
        assert np.asarray(img.convert("RGB")).max() < 255  # not white
    eight = tmp_path / "eight.png"
    Image.fromarray(want).save(eight)
    cfg = PreprocessConfig.from_dict({"size": [16, 16], "resize_mode": "shortest", "interpolation": "bicubic",
                                      "mean": [0.5] * 3, "std": [0.5] * 3, "fill_color": 0})
    np.testing.assert_array_equal(preprocess(load_image(p), cfg), preprocess(load_image(eight), cfg))


@pytest.mark.parametrize("content,needle", [
    (b"", "empty file"),
    (b"this is not an image", "not an image"),
])
def test_bad_bytes(tmp_path, content, needle):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(InputError, match=needle) as ei:
        load_image(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_truncated(tmp_path):
    p = tmp_path / "t.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(p, quality=95)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(InputError, match="cannot decode"):
        load_image(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("side", [10_000, 30_000])
def test_decompression_bomb(tmp_path, side):
    p = _png_header_only(tmp_path / "bomb.png", side, side)
    with pytest.raises(InputError, match="bomb"):
        load_image(p)


def test_pixel_limit_is_configurable(tmp_path):
    p = tmp_path / "ok.png"
    Image.new("L", (100, 100)).save(p)
    with pytest.raises(InputError, match="exceeds"):
        load_image(p, max_pixels=5_000)


def test_arrays_rgb_bgr_gray():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200
    assert array_to_pil(rgb).getpixel((0, 0)) == (200, 0, 0)
    assert array_to_pil(rgb, bgr=True).getpixel((0, 0)) == (0, 0, 200)
    assert array_to_pil(np.zeros((4, 5), np.uint8)).mode == "L"
    assert array_to_pil(np.zeros((4, 5, 4), np.uint8)).mode == "RGB"


@pytest.mark.parametrize("arr,needle", [
    (np.zeros((4, 5, 3), np.float32), "uint8"),
    (np.zeros((4, 5, 2), np.uint8), "shape"),
    (np.zeros((2, 4, 5, 3), np.uint8), "shape"),
    (np.zeros((0, 5, 3), np.uint8), "shape"),
])
def test_bad_arrays(arr, needle):
    with pytest.raises(InputError, match=needle):
        array_to_pil(arr)


def test_unsupported_type():
    with pytest.raises(InputError, match="unsupported"):
        to_pil(12345)


@pytest.mark.parametrize("w,h", [(4000, 1), (1, 4000), (3300, 100), (40000, 1)])
def test_thin_strips_are_refused_before_decoding(tmp_path, w, h):
    p = tmp_path / "strip.png"
    if w * h <= 200_000:
        Image.new("RGB", (w, h), (9, 9, 9)).save(p)
    else:
        _png_header_only(p, w, h)
    with pytest.raises(InputError, match=r"aspect ratio .*over the 32:1 limit") as ei:
        load_image(p)
    assert str(p) in str(ei.value) and f"{w}x{h}" in str(ei.value)
    with pytest.raises(InputError, match="aspect ratio"):
        to_pil(np.zeros((h, w, 3), np.uint8) if w * h <= 200_000 else np.zeros((1, 100, 3), np.uint8))
    with pytest.raises(InputError, match="aspect ratio"):
        to_pil(Image.new("L", (min(w, 5000), min(h, 5000))))


def test_aspect_limit_is_inclusive_and_both_orientations():
    from coder.runtime.images import MAX_ASPECT_RATIO, check_shape

    assert MAX_ASPECT_RATIO == 32
    assert to_pil(np.zeros((7, 224, 3), np.uint8)).size == (224, 7)  # exactly 32:1 is accepted
    assert to_pil(np.zeros((224, 7), np.uint8)).size == (7, 224)
    with pytest.raises(InputError):
        check_shape(225, 7)


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0), (0, 5, 3)])
def test_zero_size_arrays_are_input_errors(shape):
    with pytest.raises(InputError, match="empty|shape"):
        to_pil(np.zeros(shape, np.uint8))


def test_zero_size_pil_image_is_an_input_error():
    with pytest.raises(InputError, match="empty"):
        to_pil(Image.new("RGB", (0, 4)))
