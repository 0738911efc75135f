"""ROS image messages -> frames, and predictions -> vision_msgs, against independent references."""

import io
from types import SimpleNamespace as NS

import numpy as np
import pytest
from PIL import Image

from coder.deploy import ros_msgs as rm
from coder.errors import FrameError, InputError

STAMP = NS(sec=1700000000, nanosec=5)
WHERE = "/cam/image_raw @ 1700000000.000000005"
rng = np.random.default_rng(0)


def img_msg(encoding, rows: np.ndarray, width, height=None, step=None, big=False, data=None):
    rows = np.ascontiguousarray(rows).view(np.uint8).reshape(rows.shape[0], -1)
    return NS(header=NS(stamp=STAMP, frame_id="cam"), encoding=encoding, height=height or rows.shape[0], width=width,
              step=step or rows.shape[1], is_bigendian=int(big), data=rows.reshape(-1) if data is None else data)


def convert(msg):
    return np.asarray(rm.image_to_pil(msg, "/cam/image_raw"))


@pytest.mark.parametrize("encoding,order,mode", [("rgb8", [0, 1, 2], "RGB"), ("bgr8", [2, 1, 0], "RGB"),
                                                 ("rgba8", [0, 1, 2, 3], "RGBA"), ("bgra8", [2, 1, 0, 3], "RGBA")])
def test_colour_encodings_with_step_padding(encoding, order, mode):
    px = rng.integers(0, 256, (5, 7, len(order)), dtype=np.uint8)
    wire = px[..., order].reshape(5, -1)
    padded = np.concatenate([wire, rng.integers(0, 256, (5, 9), dtype=np.uint8)], axis=1)  # garbage padding
    img = rm.image_to_pil(img_msg(encoding, padded, 7), "/cam/image_raw")
    assert img.mode == mode and img.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(img), px)


def test_last_row_may_omit_its_padding():
    px = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    padded = np.concatenate([px, np.zeros((4, 2), np.uint8)], axis=1).reshape(-1)[:-2]
    np.testing.assert_array_equal(convert(img_msg("mono8", px, 6, height=4, step=8, data=padded)), px)


@pytest.mark.parametrize("big", [False, True])
def test_mono16_scaled_like_cv_bridge(big):
    v = np.array([[0, 65535, 257, 128], [32896, 32895, 1000, 65000]], np.uint16)
    wire = v.astype(">u2" if big else "<u2")
    wire = np.concatenate([wire.view(np.uint8).reshape(2, -1), np.zeros((2, 4), np.uint8)], axis=1)
    out = convert(img_msg("mono16", wire, 4, big=big))
    # cv_bridge: convertTo(CV_8U, 255/65535), i.e. v/257 rounded to nearest (no ties exist)
    np.testing.assert_array_equal(out, np.floor(v / 257 + 0.5).astype(np.uint8))
    assert out[0, 1] == 255 and out[1, 0] == 128


def _yuv_reference(y, u, v):
    """BT.601 video range in floating point (what OpenCV's fixed point approximates)."""
    c, d, e = 1.164 * (y - 16.0).clip(0), u - 128.0, v - 128.0
    return np.stack([c + 1.596 * e, c - 0.391 * d - 0.813 * e, c + 2.018 * d], -1).clip(0, 255)


@pytest.mark.parametrize("encoding,layout", [("uyvy", "UYVY"), ("yuv422", "UYVY"), ("yuyv", "YUYV"),
                                             ("yuv422_yuy2", "YUYV")])
def test_yuv422(encoding, layout):
    y = rng.integers(0, 256, (3, 8)).astype(np.uint8)
    u, v = rng.integers(0, 256, (3, 4)).astype(np.uint8), rng.integers(0, 256, (3, 4)).astype(np.uint8)
    quad = np.empty((3, 4, 4), np.uint8)
    slots = {"Y0": y[:, 0::2], "U": u, "Y1": y[:, 1::2], "V": v}
    for i, name in enumerate(("U", "Y0", "V", "Y1") if layout == "UYVY" else ("Y0", "U", "Y1", "V")):
        quad[..., i] = slots[name]
    out = convert(img_msg(encoding, quad.reshape(3, 16), 8)).astype(float)
    ref = _yuv_reference(y.astype(float), np.repeat(u, 2, axis=1).astype(float), np.repeat(v, 2, axis=1).astype(float))
    assert np.abs(out - ref).max() <= 1.0
    black_white = img_msg(encoding, np.array([[128, 16, 128, 235] if layout == "UYVY" else [16, 128, 235, 128]], np.uint8), 2)
    np.testing.assert_array_equal(convert(black_white), [[[0, 0, 0], [255, 255, 255]]])


PATTERNS = {"bayer_rggb8": "RGGB", "bayer_bggr8": "BGGR", "bayer_gbrg8": "GBRG", "bayer_grbg8": "GRBG"}


@pytest.mark.parametrize("encoding", list(PATTERNS))
def test_bayer_flat_colour_and_bilinear_interior(encoding):
    letters = PATTERNS[encoding]
    idx = {"R": 0, "G": 1, "B": 2}
    colour = np.zeros((6, 8), int)
    for (dy, dx), ch in zip(((0, 0), (0, 1), (1, 0), (1, 1)), letters):
        colour[dy::2, dx::2] = idx[ch]
    flat = np.array([200, 90, 40])[colour].astype(np.uint8)
    np.testing.assert_array_equal(convert(img_msg(encoding, flat, 8)), np.broadcast_to([200, 90, 40], (6, 8, 3)))
    raw = rng.integers(0, 256, (6, 8)).astype(np.uint8)
    out = convert(img_msg(encoding, raw, 8)).astype(int)
    r = raw.astype(int)
    for y, x in [(2, 3), (3, 4), (2, 2), (3, 3)]:  # interior: plain neighbour means, by hand
        for c in range(3):
            if colour[y, x] == c:
                want = r[y, x]
            else:
                near = [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
                        and colour[y + dy, x + dx] == c and (c != 1 or dy == 0 or dx == 0)]
                want = (sum(r[p] for p in near) + len(near) // 2) // len(near)
            assert out[y, x, c] == want, (y, x, c)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_image_decodes_like_a_file(fmt, tmp_path):
    px = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG" if fmt == "jpeg" else "PNG")
    (tmp_path / f"x.{fmt}").write_bytes(buf.getvalue())
    msg = NS(header=NS(stamp=STAMP, frame_id="cam"), format=f"rgb8; {fmt} compressed bgr8",
             data=np.frombuffer(buf.getvalue(), np.uint8))
    np.testing.assert_array_equal(np.asarray(rm.msg_to_pil(msg, rm.COMPRESSED_TYPE, "/c")),
                                  np.asarray(Image.open(tmp_path / f"x.{fmt}")))


def test_png_mono16_compressed_image_is_the_raw_mono16_frame():
    """``image_transport`` sends a mono16 camera as ``mono16; png compressed mono16`` (a 16-bit grey PNG). It once
    came out white (Pillow clips 16-bit values to 255); it must be the very pixels of the raw mono16 frame."""
    v = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    v[0, :4] = [0, 128, 32896, 65535]
    buf = io.BytesIO()
    Image.fromarray(v).save(buf, format="PNG")  # 16-bit grey PNG, as cv::imencode writes it
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    msg = NS(header=NS(stamp=STAMP, frame_id="cam"), format="mono16; png compressed mono16",
             data=np.frombuffer(buf.getvalue(), np.uint8))
    got = rm.msg_to_pil(msg, rm.COMPRESSED_TYPE, "/cam/image_raw/compressed")
    raw = rm.image_to_pil(img_msg("mono16", v.astype(">u2"), 40, big=True), "/cam/image_raw")
    assert got.mode == raw.mode == "L"
    np.testing.assert_array_equal(np.asarray(got), np.asarray(raw))
    np.testing.assert_array_equal(np.asarray(got), np.floor(v / 257 + 0.5).astype(np.uint8))  # cv_bridge, by hand
    assert np.asarray(got)[0, :4].tolist() == [0, 0, 128, 255]


@pytest.mark.parametrize("msg,why", [
    (dict(encoding="32FC1"), "unsupported encoding '32FC1'"),
    (dict(data=b"\x00" * 10), "data holds 10 bytes"),
    (dict(step=5), "step 5 is shorter than a rgb8 row"),
    (dict(width=0), "empty image"),
    (dict(encoding="yuyv", width=3, step=6), "needs an even width"),
    (dict(encoding="bayer_rggb8", height=1, width=4, step=4), "at least 2x2"),
])
def test_bad_frames_name_topic_and_stamp(msg, why):
    base = dict(header=NS(stamp=STAMP, frame_id="cam"), encoding="rgb8", height=2, width=4, step=12, is_bigendian=0,
                data=np.zeros(24, np.uint8))
    with pytest.raises(FrameError) as e:
        rm.image_to_pil(NS(**{**base, **msg}), "/cam/image_raw")
    assert str(e.value).startswith(WHERE + ": ") and why in str(e.value)
    assert isinstance(e.value, InputError)


@pytest.mark.parametrize("fmt,data,why", [("jpeg", b"\xff\xd8\xff\xe0garbage", "cannot decode"),
                                          ("png", b"not a png", "not an image"), ("jpeg", b"", "empty"),
                                          ("16UC1; compressedDepth", b"x", "compressedDepth"),
                                          ("tiff", b"x", "unsupported format")])
def test_bad_compressed_frames(fmt, data, why):
    msg = NS(header=NS(stamp=STAMP, frame_id="cam"), format=fmt, data=np.frombuffer(data, np.uint8))
    with pytest.raises(FrameError, match=why) as e:
        rm.compressed_to_pil(msg, "/cam/image_raw")
    assert str(e.value).startswith(WHERE)


def _png_bytes(size, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("data,why", [(_png_bytes((4000, 1)), "aspect ratio"),
                                      (_png_bytes((8, 8), "GIF"), "expected jpeg or png")])
def test_compressed_frames_get_the_file_decoders_limits(data, why):
    """A thin strip (or a GIF labelled png) is refused as it is from a file, before it is resized."""
    msg = NS(header=NS(stamp=STAMP, frame_id="cam"), format="png", data=np.frombuffer(data, np.uint8))
    with pytest.raises(FrameError, match=why) as e:
        rm.compressed_to_pil(msg, "/cam/image_raw")
    assert str(e.value).startswith(WHERE)


def test_raw_thin_strip_is_refused():
    msg = NS(header=NS(stamp=STAMP, frame_id="cam"), encoding="mono8", height=1, width=4000, step=4000,
             is_bigendian=0, data=np.zeros(4000, np.uint8))
    with pytest.raises(FrameError, match="aspect ratio"):
        rm.image_to_pil(msg, "/cam/image_raw")


def test_stage1_softmax_matches_the_head_gap():
    from coder.runtime.head import softmax_gap

    s = (rng.normal(size=(1, 12)) * 5).astype(np.float32)
    p = rm.stage1_probabilities(s[0])
    _, gap = softmax_gap(s, 5)
    top2 = np.sort(p)[::-1][:2]
    assert abs(p.sum() - 1) < 1e-12 and abs((top2[0] - top2[1]) - gap[0]) < 1e-6
    np.testing.assert_allclose(p, np.exp(s[0] - s[0].max()) / np.exp(s[0] - s[0].max()).sum(), rtol=1e-6)


def _pred(label, scores, names):
    order = sorted(range(len(scores)), key=lambda c: -scores[c])
    return NS(label=label, name=names[label], top_k=tuple(order), top_k_names=tuple(names[c] for c in order),
              stage1_scores=tuple(scores[c] for c in order))


def test_hypotheses_put_the_final_label_first():
    names = ["cat", "dog", "fox", "owl"]
    p = rm.stage1_probabilities([1.0, 3.0, 2.0, 0.0])
    assert rm.hypotheses(_pred(1, [1.0, 3.0, 2.0, 0.0], names), 2, 4) == [("dog", p[1]), ("fox", p[2])]
    # the rerank chose "cat" (stage-1 third): it comes first, with its own stage-1 probability
    assert rm.hypotheses(_pred(0, [1.0, 3.0, 2.0, 0.0], names), 3, 4) == [("cat", p[0]), ("dog", p[1]), ("fox", p[2])]
    with pytest.raises(ValueError, match="all 5 classes"):
        rm.hypotheses(_pred(0, [1.0, 3.0, 2.0, 0.0], names), 3, 5)


def test_vision_msgs_register_and_round_trip():
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    types = rm.register_vision_msgs(ts)
    meta = rm.FrameMeta("/cam", 1700000000_000000005, "cam_optical", 1)
    msg = rm.classification_msg(types, meta, [("tabby cat", 0.75), ("dog", 0.2)])
    back = ts.deserialize_cdr(ts.serialize_cdr(msg, "vision_msgs/msg/Classification"), "vision_msgs/msg/Classification")
    assert (back.header.stamp.sec, back.header.stamp.nanosec, back.header.frame_id) == (1700000000, 5, "cam_optical")
    assert [(h.class_id, h.score) for h in back.results] == [("tabby cat", 0.75), ("dog", 0.2)]
    fields = {name: ts.fielddefs[name][1] for name in rm.MSG_FILES}
    assert [f[0] for f in fields["vision_msgs/msg/ObjectHypothesis"]] == ["class_id", "score"]
    assert [f[0] for f in fields["vision_msgs/msg/VisionInfo"]] == ["header", "method", "database_location",
                                                                    "database_version"]
    bank = NS(root="/art/banks/c10", class_names=["a", "b"], meta={"npz_sha256": "ffffffff" + "0" * 56})
    info = rm.vision_info(bank)
    assert info["database_version"] == 0x7FFFFFFF and info["labels"] == ["a", "b"]
    vi = rm.vision_info_msg(types, info, 5, "cam")
    ts.serialize_cdr(vi, "vision_msgs/msg/VisionInfo")  # int32 range holds
