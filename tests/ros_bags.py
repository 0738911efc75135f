"""Writing real ROS bags with the rosbags writers, for the bag tests and the bag benchmark.

>>> frames = [Frame("/cam", 10**9, "cam", "rgb8", rgb_array)]                # doctest: +SKIP
>>> write_bag(tmp_path / "run.mcap", frames, "mcap")                         # doctest: +SKIP
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Frame:
    """``encoding`` is a sensor_msgs/Image encoding, or ``jpeg``/``png`` for a CompressedImage;
    ``pixels`` an array in that encoding's layout (ignored when ``raw`` gives the message data)."""

    topic: str
    stamp_ns: int
    frame_id: str
    encoding: str
    pixels: np.ndarray | None = None
    pad: int = 0  # extra bytes at the end of each row (step padding)
    big_endian: bool = False
    raw: bytes | None = None  # message data as is (corrupt frames)
    width: int | None = None
    height: int | None = None
    fmt: str | None = None  # CompressedImage ``format`` (default: ``encoding``), e.g. "mono16; png compressed mono16"


def _time(ts, ns):
    return ts.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def _header(ts, f: Frame, ros1: bool):
    h = ts.types["std_msgs/msg/Header"]
    return h(seq=0, stamp=_time(ts, f.stamp_ns), frame_id=f.frame_id) if ros1 else \
        h(stamp=_time(ts, f.stamp_ns), frame_id=f.frame_id)


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG" if fmt == "jpeg" else "PNG", **({"quality": 90} if fmt == "jpeg" else {}))
    return buf.getvalue()


def message(ts, f: Frame, ros1: bool = False):
    """(msgtype, message object) of one frame."""
    header = _header(ts, f, ros1)
    if f.encoding in ("jpeg", "png"):
        data = f.raw if f.raw is not None else encode(f.pixels, f.encoding)
        cls = ts.types["sensor_msgs/msg/CompressedImage"]
        return cls.__msgtype__, cls(header=header, format=f.fmt or f.encoding, data=np.frombuffer(data, np.uint8))
    px = f.pixels
    if f.encoding == "mono16":
        px = px.astype(">u2" if f.big_endian else "<u2")
    rows = np.ascontiguousarray(px).view(np.uint8).reshape(px.shape[0], -1)
    packed_yuv = f.encoding in ("uyvy", "yuv422", "yuyv", "yuv422_yuy2")  # pixels given as (H, 2W) bytes
    w = f.width if f.width is not None else px.shape[1] // (2 if packed_yuv else 1)
    h = f.height if f.height is not None else px.shape[0]
    if f.pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], f.pad), 7, np.uint8)], axis=1)
    data = np.frombuffer(f.raw, np.uint8) if f.raw is not None else rows.reshape(-1)
    cls = ts.types["sensor_msgs/msg/Image"]
    return cls.__msgtype__, cls(header=header, height=h, width=w, encoding=f.encoding, is_bigendian=int(f.big_endian),
                                step=rows.shape[1], data=np.ascontiguousarray(data))


def write_bag(path: Path, frames: list[Frame], storage: str = "mcap", log_start_ns: int = 10**9,
              log_step_ns: int = 10**8) -> Path:
    """A rosbag2 (``mcap``/``sqlite3``: a directory) or ROS 1 (``ros1``: ``path`` ends in .bag) bag;
    frame i is logged at ``log_start_ns + i * log_step_ns``."""
    from rosbags.typesys import Stores, get_typestore

    ros1 = storage == "ros1"
    ts = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    if ros1:
        from rosbags.rosbag1 import Writer
        writer = Writer(path)
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer
        writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    conns = {}
    with writer:
        for i, f in enumerate(frames):
            msgtype, msg = message(ts, f, ros1)
            if (f.topic, msgtype) not in conns:
                conns[f.topic, msgtype] = writer.add_connection(f.topic, msgtype, typestore=ts)
            data = ts.serialize_ros1(msg, msgtype) if ros1 else ts.serialize_cdr(msg, msgtype)
            writer.write(conns[f.topic, msgtype], log_start_ns + i * log_step_ns, data)
    return path


def storage_file(bag_dir: Path) -> Path:
    """The single .mcap / .db3 file inside a rosbag2 directory."""
    return next(p for p in Path(bag_dir).iterdir() if p.suffix in (".mcap", ".db3"))
