"""ROS image messages in, ``vision_msgs`` results out; no ROS install, no torch (numpy + Pillow).

Works on any object with the message's fields: messages deserialised by ``rosbags`` and
``rclpy`` messages alike.

>>> img = image_to_pil(msg, topic="/cam/image_raw")      # doctest: +SKIP
>>> img.mode, img.size                                    # sensor_msgs/Image rgb8 640x480
('RGB', (640, 480))

Pixel rules: ``rgb8``/``bgr8`` -> RGB, ``rgba8``/``bgra8`` -> RGBA (so the Classifier treats alpha
exactly as it treats an RGBA PNG), ``mono8`` -> L, ``mono16`` -> L scaled by 255/65535 and rounded
(what ``cv_bridge`` does for mono16 -> mono8), the 4:2:2 YUV encodings -> RGB with OpenCV's
fixed-point BT.601 video-range formula (what ``cv_bridge`` uses), the 8-bit Bayer patterns -> RGB
by bilinear interpolation (mirrored at the borders). ``step`` padding and ``is_bigendian`` are
honoured. A frame that cannot be converted raises :class:`~coder.errors.FrameError` naming the
topic and the header stamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from ..errors import FrameError, InputError
from ..runtime.images import MAX_PIXELS, check_shape, decode_image, mono16_to_8

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)

# encoding -> bytes per pixel (of the packed row)
_BPP = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2,
        "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2,
        "bayer_rggb8": 1, "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1}
SUPPORTED_ENCODINGS = tuple(_BPP)
# 4:2:2 byte order: offsets of Y0, U, Y1, V inside each 4-byte macropixel
_YUV_ORDER = {"yuv422": (1, 0, 3, 2), "uyvy": (1, 0, 3, 2), "yuv422_yuy2": (0, 1, 2, 3), "yuyv": (0, 1, 2, 3)}
# Bayer pattern: colour (0 R, 1 G, 2 B) at the top-left 2x2 cell, row-major
_BAYER = {"bayer_rggb8": (0, 1, 1, 2), "bayer_bggr8": (2, 1, 1, 0), "bayer_gbrg8": (1, 2, 0, 1),
          "bayer_grbg8": (1, 0, 2, 1)}


@dataclass(frozen=True)
class FrameMeta:
    """Where a frame came from: ``stamp_ns`` is the header stamp, ``log_time_ns`` the bag's record time."""

    topic: str
    stamp_ns: int
    frame_id: str
    log_time_ns: int | None = None

    @property
    def where(self) -> str:
        return f"{self.topic} @ {format_stamp(self.stamp_ns)}"


def format_stamp(stamp_ns: int) -> str:
    """``1700000000000000005`` -> ``'1700000000.000000005'`` (sec.nanosec, as ROS prints stamps)."""
    return f"{stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d}"


def header_stamp_ns(msg: Any) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def frame_meta(msg: Any, topic: str, log_time_ns: int | None = None) -> FrameMeta:
    """The :class:`FrameMeta` of any message with a ``std_msgs/Header``."""
    return FrameMeta(topic, header_stamp_ns(msg), str(msg.header.frame_id), log_time_ns)


def _bytes(data: Any) -> np.ndarray:
    """A message's ``uint8[]`` (numpy array, bytes, array.array or list) as a flat uint8 array."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.reshape(-1).astype(np.uint8)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _rows(msg: Any, where: str) -> np.ndarray:
    """(height, width * bpp) uint8 view of the pixel rows, ``step`` padding cut off."""
    encoding = str(msg.encoding).lower()
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise FrameError(f"{where}: empty image ({w}x{h})")
    if h * w > MAX_PIXELS:
        raise FrameError(f"{where}: {w}x{h} pixels exceeds the {MAX_PIXELS} limit")
    try:  # a thin strip would blow up when its short side is resized to the model size
        check_shape(w, h, where)
    except InputError as e:
        raise FrameError(str(e)) from None
    row = w * _BPP[encoding]
    if step < row:
        raise FrameError(f"{where}: step {step} is shorter than a {encoding} row of width {w} ({row} bytes)")
    data = _bytes(msg.data)
    need = step * (h - 1) + row
    if data.size < need:
        raise FrameError(f"{where}: data holds {data.size} bytes, a {w}x{h} {encoding} image with step {step} "
                         f"needs {need} (truncated frame?)")
    if data.size >= step * h:
        return data[:step * h].reshape(h, step)[:, :row]
    # the last row may legally omit its padding: build rows by stride
    return np.lib.stride_tricks.as_strided(data, shape=(h, row), strides=(step, 1))


def _mono16(rows: np.ndarray, big_endian: bool, w: int) -> np.ndarray:
    """cv_bridge mono16 -> mono8: ``saturate_cast<uint8>(v * 255 / 65535)``, rounded to nearest."""
    return mono16_to_8(np.ascontiguousarray(rows).view(">u2" if big_endian else "<u2").reshape(len(rows), w))


def yuv422_to_rgb(rows: np.ndarray, order: tuple[int, int, int, int]) -> np.ndarray:
    """(H, 2W) packed 4:2:2 bytes -> (H, W, 3) RGB, OpenCV's ``COLOR_YUV2RGB_UYVY/YUYV`` arithmetic.

    ``order`` gives the offsets of Y0, U, Y1, V in each 4-byte pair of pixels.
    """
    h = rows.shape[0]
    quad = rows.reshape(h, -1, 4).astype(np.int32)
    u, v = quad[..., order[1]] - 128, quad[..., order[3]] - 128
    half = 1 << 19  # rounding constant of the 20-bit fixed point
    ruv = half + 1673527 * v
    guv = half - 852492 * v - 409993 * u
    buv = half + 2116026 * u
    out = np.empty((h, quad.shape[1], 2, 3), np.int32)
    for i, yi in enumerate((order[0], order[2])):
        y = np.maximum(quad[..., yi] - 16, 0) * 1220542
        out[:, :, i, 0], out[:, :, i, 1], out[:, :, i, 2] = (y + ruv) >> 20, (y + guv) >> 20, (y + buv) >> 20
    return np.clip(out, 0, 255).astype(np.uint8).reshape(h, -1, 3)


def _smooth(a: np.ndarray, cross: bool) -> np.ndarray:
    """3x3 weighted sums on a mirrored-padded (H+2, W+2) array -> (H, W): the [1 2 1] x [1 2 1]
    kernel, or with ``cross`` the 4-neighbourhood plus a centre of weight 4."""
    if cross:
        return a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] + 4 * a[1:-1, 1:-1]
    rows = a[:, :-2] + 2 * a[:, 1:-1] + a[:, 2:]
    return rows[:-2] + 2 * rows[1:-1] + rows[2:]


def bayer_to_rgb(raw: np.ndarray, pattern: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W) uint8 mosaic -> (H, W, 3) RGB, bilinear: a pixel keeps its own sample, and each
    missing colour is the rounded mean of the nearest samples of that colour (2 or 4 neighbours);
    the borders are mirrored.

    ``pattern``: colour (0 R, 1 G, 2 B) of the pixels (0,0), (0,1), (1,0), (1,1).
    """
    h, w = raw.shape
    if h < 2 or w < 2:
        raise ValueError(f"a Bayer image needs at least 2x2 pixels, got {w}x{h}")
    colour = np.empty((h, w), np.int8)
    for (dy, dx), c in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
        colour[dy::2, dx::2] = c
    p = np.pad(raw.astype(np.int32), 1, mode="reflect")  # reflect keeps the 2x2 parity
    pc = np.pad(colour, 1, mode="reflect")
    out = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        mask = (pc == c).astype(np.int32)
        num, den = _smooth(p * mask, c == 1), _smooth(mask, c == 1)
        out[..., c] = (num + den // 2) // den
    return out


def image_to_pil(msg: Any, topic: str = "") -> Image.Image:
    """``sensor_msgs/Image`` -> PIL image (RGB, RGBA or L), see the module docstring."""
    where = f"{topic or '?'} @ {format_stamp(header_stamp_ns(msg))}"
    encoding = str(msg.encoding).lower()
    if encoding not in _BPP:
        raise FrameError(f"{where}: unsupported encoding {msg.encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})")
    rows = _rows(msg, where)
    h, w = rows.shape[0], int(msg.width)
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        c = _BPP[encoding]
        px = rows.reshape(h, w, c)
        if encoding.startswith("bgr"):
            px = px[..., [2, 1, 0, 3][:c]]
        return Image.fromarray(np.ascontiguousarray(px), mode="RGB" if c == 3 else "RGBA")
    if encoding == "mono8":
        return Image.fromarray(np.ascontiguousarray(rows), mode="L")
    if encoding == "mono16":
        return Image.fromarray(_mono16(rows, bool(msg.is_bigendian), w), mode="L")
    if encoding in _YUV_ORDER:
        if w % 2:
            raise FrameError(f"{where}: {encoding} needs an even width, got {w}")
        return Image.fromarray(yuv422_to_rgb(rows, _YUV_ORDER[encoding]), mode="RGB")
    try:
        return Image.fromarray(bayer_to_rgb(np.ascontiguousarray(rows), _BAYER[encoding]), mode="RGB")
    except ValueError as e:
        raise FrameError(f"{where}: {e}") from None


def compressed_to_pil(msg: Any, topic: str = "") -> Image.Image:
    """``sensor_msgs/CompressedImage`` (jpeg or png, as ``image_transport``'s compressed plugin
    writes them) -> the PIL image ``coder classify`` would decode from the same bytes in a file."""
    where = f"{topic or '?'} @ {format_stamp(header_stamp_ns(msg))}"
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt:
        raise FrameError(f"{where}: unsupported format {msg.format!r} (a compressedDepth image, not a camera frame)")
    if fmt and "jpeg" not in fmt and "jpg" not in fmt and "png" not in fmt:
        raise FrameError(f"{where}: unsupported format {msg.format!r} (supported: jpeg, png)")
    data = _bytes(msg.data)
    if data.size == 0:
        raise FrameError(f"{where}: empty {msg.format or 'compressed'} data")
    try:  # the decoder every input path shares: pixel and aspect-ratio limits as for files
        return decode_image(data.tobytes(), where, formats=("JPEG", "PNG"))
    except InputError as e:
        raise FrameError(str(e)) from None


def msg_to_pil(msg: Any, msgtype: str, topic: str = "") -> Image.Image:
    """Either image type (``msgtype`` as ``rosbags`` names it) -> PIL image."""
    if msgtype == IMAGE_TYPE:
        return image_to_pil(msg, topic)
    if msgtype == COMPRESSED_TYPE:
        return compressed_to_pil(msg, topic)
    raise FrameError(f"{topic or '?'}: message type {msgtype} is not an image "
                     f"({IMAGE_TYPE} or {COMPRESSED_TYPE})")


# ---------------------------------------------------------------- results


def stage1_probabilities(stage1_scores: Sequence[float]) -> np.ndarray:
    """``p = softmax(score)`` over ALL classes' stage-1 scores (METHOD.md stage 2, step 1; the x100
    is already inside the scores). float64, same order as the input.

    >>> stage1_probabilities([30.0, 29.0, 20.0]).round(4).tolist()
    [0.731, 0.2689, 0.0]
    """
    s = np.asarray(stage1_scores, dtype=np.float64)
    z = np.exp(s - s.max())
    return z / z.sum()


def hypotheses(pred, top_k: int, n_classes: int) -> list[tuple[str, float]]:
    """``(class name, stage-1 probability)`` pairs for a Classification's ``results``.

    ``pred`` must carry the stage-1 scores of every class (``Classifier.classify(top_k=C)``), so
    the softmax is the full one. The first entry is the final CODER label (after the rerank or a
    few-shot adapter); the rest follow in stage-1 order, ``top_k`` entries in all. When the rerank
    changed the label, the first entry is therefore not the one with the highest score.
    """
    _check_full(pred, n_classes)
    probs = stage1_probabilities(pred.stage1_scores)
    by_class = dict(zip(pred.top_k, probs))
    order = [pred.label] + [c for c in pred.top_k if c != pred.label]
    names = dict(zip(pred.top_k, pred.top_k_names))
    return [(names[c], float(by_class[c])) for c in order[:max(1, top_k)]]


def _check_full(pred, n_classes: int) -> None:
    if len(pred.stage1_scores) != n_classes:
        raise ValueError(f"need the stage-1 scores of all {n_classes} classes, got {len(pred.stage1_scores)}: "
                         "classify with top_k=len(class_names)")


def trimmed(pred, top_k: int):
    """``pred`` with its stage-1 lists cut to ``top_k`` (what ``coder classify --top-k`` shows)."""
    from dataclasses import replace

    return replace(pred, top_k=pred.top_k[:top_k], top_k_names=pred.top_k_names[:top_k],
                   stage1_scores=pred.stage1_scores[:top_k])


def frame_record(source, meta: FrameMeta, pred, top_k: int, n_classes: int) -> dict:
    """One JSON record per frame: ``topic``, ``stamp_ns``, ``log_time_ns``, ``frame_id``, the
    fields of ``coder classify --json`` (``file`` is the bag) and ``stage1_probabilities`` (the
    softmax probabilities of ``top_k_names``, the scores a Classification message carries)."""
    from ..runtime.records import prediction_record

    _check_full(pred, n_classes)
    probs = stage1_probabilities(pred.stage1_scores)[:top_k]
    return {"topic": meta.topic, "stamp_ns": meta.stamp_ns, "log_time_ns": meta.log_time_ns,
            "frame_id": meta.frame_id, **prediction_record(source, trimmed(pred, top_k)),
            "stage1_probabilities": [float(p) for p in probs]}


def frame_error_record(source, meta: FrameMeta, reason: str) -> dict:
    from ..runtime.records import error_record

    return {"topic": meta.topic, "stamp_ns": meta.stamp_ns, "log_time_ns": meta.log_time_ns,
            "frame_id": meta.frame_id, **error_record(source, reason)}


class MsgTypes(NamedTuple):
    """Message constructors taking keyword fields: ``rosbags`` typestore classes or ``rclpy`` ones."""

    Time: Callable[..., Any]
    Header: Callable[..., Any]
    ObjectHypothesis: Callable[..., Any]
    Classification: Callable[..., Any]
    VisionInfo: Callable[..., Any]


def classification_msg(types: MsgTypes, meta: FrameMeta, results: list[tuple[str, float]]) -> Any:
    """A ``vision_msgs/Classification`` with the source image's header (stamp + frame_id)."""
    header = types.Header(stamp=types.Time(sec=meta.stamp_ns // 1_000_000_000, nanosec=meta.stamp_ns % 1_000_000_000),
                          frame_id=meta.frame_id)
    return types.Classification(header=header, results=[types.ObjectHypothesis(class_id=name, score=float(score))
                                                        for name, score in results])


def database_version(sha256_hex: str) -> int:
    """VisionInfo's ``int32 database_version`` from a hex digest: its first 31 bits (non-negative)."""
    return int(sha256_hex[:8], 16) & 0x7FFFFFFF


def vision_info(bank, method: str = "coder") -> dict:
    """The VisionInfo-style database of a bank: ``method``, ``database_location`` (the bank
    directory), ``database_version`` (from the bank's sha256), ``database_sha256`` (the bank version: its
    content sha256, as each prediction's ``bank_sha256``) and ``labels`` (the class names; ``class_id`` in
    the results is one of them)."""
    sha = str(getattr(bank, "content_sha256", None) or bank.meta.get("npz_sha256", ""))
    return {"method": method, "database_location": str(bank.root), "database_version": database_version(sha or "0"),
            "database_sha256": sha, "labels": list(bank.class_names)}


def vision_info_msg(types: MsgTypes, info: dict, stamp_ns: int = 0, frame_id: str = "") -> Any:
    header = types.Header(stamp=types.Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                          frame_id=frame_id)
    return types.VisionInfo(header=header, method=info["method"], database_location=info["database_location"],
                            database_version=int(info["database_version"]))


# ---------------------------------------------------------------- rosbags typestore


MSG_FILES = {"vision_msgs/msg/ObjectHypothesis": "ObjectHypothesis.msg",
             "vision_msgs/msg/Classification": "Classification.msg",
             "vision_msgs/msg/VisionInfo": "VisionInfo.msg"}


def msg_text(msgtype: str) -> str:
    """The bundled ``.msg`` definition of a vision_msgs type."""
    from importlib.resources import files

    return files("coder.deploy").joinpath("msg", MSG_FILES[msgtype]).read_text(encoding="utf-8")


def register_vision_msgs(typestore) -> MsgTypes:
    """Register the bundled vision_msgs 4.x types with a ``rosbags`` typestore (a ROS 2 one, which
    already has std_msgs) and return their constructors."""
    from rosbags.typesys import get_types_from_msg

    types: dict = {}
    for name in MSG_FILES:
        types.update(get_types_from_msg(msg_text(name), name))
    typestore.register(types)
    t = typestore.types
    return MsgTypes(t["builtin_interfaces/msg/Time"], t["std_msgs/msg/Header"], t["vision_msgs/msg/ObjectHypothesis"],
                    t["vision_msgs/msg/Classification"], t["vision_msgs/msg/VisionInfo"])
