"""Label ROS bags offline with the pure-Python ``rosbags`` library (no ROS installation).

Reads rosbag2 directories, single ``.mcap`` / ``.db3`` files and ROS 1 ``.bag`` files; frames go
through the Classifier in bag order, ``batch_size`` at a time (memory stays bounded by one batch
of decoded frames, whatever the bag size); results can be written to a rosbag2 (mcap) bag of
``vision_msgs/msg/Classification`` messages.

>>> plans = plan_bags([Path("run1.mcap")], ["/cam/image_raw"])          # doctest: +SKIP
>>> for r in classify_bags(clf, plans, BagOptions()):                    # doctest: +SKIP
...     print(r.meta.topic, r.meta.stamp_ns, r.pred.name if r.pred else r.error)
"""

from __future__ import annotations

import json
import math
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import ConfigError, CoderError, FrameError, InputError
from .ros_msgs import IMAGE_TYPES, FrameMeta, classification_msg, frame_meta, msg_to_pil, \
    register_vision_msgs, vision_info_msg

FORMAT = "coder.bag-classifications"
FORMAT_VERSION = 1


def _rosbags():
    try:
        import rosbags  # noqa: F401
    except ImportError:
        raise CoderError("reading ROS bags needs the rosbags package: pip install 'coder[ros]'") from None


def _read_errors() -> tuple[type[BaseException], ...]:
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as Reader1Error
    from rosbags.rosbag2 import ReaderError as Reader2Error

    return AnyReaderError, Reader1Error, Reader2Error, OSError, ValueError, KeyError, EOFError


def open_reader(path: Path):
    """An unopened ``AnyReader`` for one bag (ROS 1 ``.bag``, rosbag2 directory, ``.mcap`` or ``.db3``);
    bags without embedded definitions fall back to the ROS 1 Noetic / ROS 2 Humble types."""
    _rosbags()
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC if path.suffix == ".bag" else Stores.ROS2_HUMBLE)
    try:
        return AnyReader([path], default_typestore=store)
    except FileNotFoundError:
        raise InputError(f"{path}: no such bag") from None
    except _read_errors() as e:
        raise InputError(f"{path}: cannot read bag ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    if "end magic" in text:  # an mcap file without its footer: a recording that was killed
        text += "; an unfinished recording? `mcap recover` rewrites a readable copy"
    return text


@dataclass(frozen=True)
class BagPlan:
    """One readable bag and what will be read from it."""

    path: Path
    topics: tuple[str, ...]
    image_topics: dict[str, tuple[str, int]]  # topic -> (msgtype, message count)
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class BagOptions:
    """``every``: every Nth frame of each topic; ``start``/``end``: seconds from the bag's first message."""

    every: int = 1
    start: float | None = None
    end: float | None = None
    batch_size: int = 16
    top_k: int = 5
    rerank: bool = True

    def check(self) -> None:
        if self.every < 1 or self.batch_size < 1 or self.top_k < 1:
            raise ConfigError("--every, --batch-size and --top-k must be >= 1")
        if (self.start is not None and self.start < 0) or (
                self.end is not None and self.end <= (self.start or 0.0)):
            raise ConfigError("need 0 <= --start < --end (seconds from the bag's first message)")

    def window(self, plan: BagPlan) -> tuple[int | None, int | None]:
        """The [start, stop) log-time window in ns (None: open)."""
        start = None if self.start is None else plan.start_ns + int(round(self.start * 1e9))
        stop = None if self.end is None else plan.start_ns + int(round(self.end * 1e9))
        return start, stop

    def expected_frames(self, plan: BagPlan) -> int:
        """Frames to classify (estimated under a time window, assuming a steady frame rate)."""
        lo, hi = self.window(plan)
        lo = plan.start_ns if lo is None else max(lo, plan.start_ns)
        hi = plan.end_ns if hi is None else min(hi, plan.end_ns)
        share = max(0.0, min(1.0, (hi - lo) / max(plan.end_ns - plan.start_ns, 1)))
        return sum(math.ceil(share * plan.image_topics[t][1] / self.every) for t in plan.topics)


def describe_topics(image_topics: dict[str, tuple[str, int]]) -> str:
    """``/cam (Image, 120 msgs), /cam/compressed (CompressedImage, 120 msgs)``."""
    short = lambda types: "|".join(x.rsplit("/", 1)[-1] for x in types.split("|"))  # noqa: E731
    return ", ".join(f"{t} ({short(m)}, {n} msgs)" for t, (m, n) in image_topics.items()) or "none"


def _split_topics(connections) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
    """(image topics -> (type, count), other topics -> type); a topic whose connections carry
    several types counts as an image topic only if all of them are image types."""
    types: dict[str, set] = {}
    counts: dict[str, int] = {}
    for c in connections:
        types.setdefault(c.topic, set()).add(c.msgtype)
        counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
    found = {t: ("|".join(sorted(m)), counts[t]) for t, m in sorted(types.items()) if m <= set(IMAGE_TYPES)}
    others = {t: "|".join(sorted(m)) for t, m in sorted(types.items()) if t not in found}
    return found, others


def plan_bags(paths: Sequence[Path], topics: Sequence[str]) -> tuple[list[BagPlan], list[str], list[str]]:
    """Open every bag's index: (plans, errors for unreadable bags, warnings).

    Raises :class:`ConfigError` when a topic is in none of the readable bags (the message lists
    their image topics) or is not an image topic.
    """
    plans, errors, warnings = [], [], []
    for path in paths:
        try:
            reader = open_reader(Path(path))
            with reader:
                found, others = _split_topics(reader.connections)
                start, end = reader.start_time, reader.end_time
        except InputError as e:
            errors.append(str(e))
            continue
        except _read_errors() as e:
            errors.append(f"{path}: cannot read bag ({_one_line(e)})")
            continue
        for t in topics:
            if t in others:
                raise ConfigError(f"{path}: topic {t} is a {others[t]}, not an image topic; image topics: "
                                  f"{describe_topics(found)}")
        plans.append(BagPlan(Path(path), tuple(t for t in topics if t in found), found, start, end))
    for t in topics:
        having = [p for p in plans if t in p.topics]
        if plans and not having:
            listing = "; ".join(f"{p.path}: {describe_topics(p.image_topics)}" for p in plans)
            raise ConfigError(f"topic {t} is not in the bag{'s' if len(plans) > 1 else ''}; image topics: {listing}")
        warnings += [f"{p.path}: no topic {t}; skipped there" for p in plans if p not in having]
    return plans, errors, warnings


@dataclass(frozen=True)
class FrameResult:
    """One frame's outcome: ``pred`` carries the stage-1 scores of ALL classes, or ``error`` says why not."""

    bag: Path
    meta: FrameMeta
    pred: object | None = None
    error: str | None = None


@dataclass
class _Batch:
    entries: list = field(default_factory=list)  # (bag, meta, image or error text)
    n_images: int = 0


def _frames(reader, plan: BagPlan, opts: BagOptions) -> Iterator[tuple[FrameMeta, object]]:
    """(meta, PIL image or error text) per selected message, in log-time order."""
    conns = [c for c in reader.connections if c.topic in plan.topics]
    seen: dict[str, int] = {}
    start, stop = opts.window(plan)
    for conn, log_time, raw in reader.messages(connections=conns, start=start, stop=stop):
        n = seen.get(conn.topic, 0)
        seen[conn.topic] = n + 1
        if n % opts.every:
            continue
        try:
            msg = reader.deserialize(raw, conn.msgtype)
        except _read_errors() as e:
            meta = FrameMeta(conn.topic, log_time, "", log_time)
            yield meta, f"{conn.topic} @ log time {meta.where.split(' @ ')[1]}: cannot deserialize " \
                        f"{conn.msgtype} ({_one_line(e)})"
            continue
        meta = frame_meta(msg, conn.topic, log_time)
        try:
            yield meta, msg_to_pil(msg, conn.msgtype, conn.topic)
        except FrameError as e:
            yield meta, str(e)


def _flush(clf, batch: _Batch, opts: BagOptions) -> Iterator[FrameResult]:
    images = [x for _, _, x in batch.entries if not isinstance(x, str)]
    preds = iter(clf.classify(images, len(clf.class_names), opts.rerank) if images else [])
    for bag, meta, x in batch.entries:
        yield FrameResult(bag, meta, error=x) if isinstance(x, str) else FrameResult(bag, meta, pred=next(preds))
    batch.entries.clear()
    batch.n_images = 0


def classify_bags(clf, plans: Sequence[BagPlan], opts: BagOptions,
                  on_bag_error=lambda msg: None) -> Iterator[FrameResult]:
    """Every selected frame of every bag, in bag order, classified ``opts.batch_size`` at a time.

    A bag that fails mid-read is reported through ``on_bag_error`` (after its frames read so far)
    and the next bag is read.
    """
    batch = _Batch()
    for plan in plans:
        try:
            with open_reader(plan.path) as reader:
                for meta, x in _frames(reader, plan, opts):
                    batch.entries.append((plan.path, meta, x))
                    batch.n_images += not isinstance(x, str)
                    if batch.n_images >= opts.batch_size:
                        yield from _flush(clf, batch, opts)
        except InputError as e:
            on_bag_error(str(e))
        except _read_errors() as e:
            on_bag_error(f"{plan.path}: read error ({_one_line(e)}); frames after it were not read")
    yield from _flush(clf, batch, opts)


def _parent_namespace(topic: str) -> str:
    return topic.rsplit("/", 1)[0] if topic.count("/") > 1 else ""


class ClassificationBag:
    """A rosbag2 directory (mcap storage) of ``vision_msgs/msg/Classification`` on ``topic``, plus
    one ``VisionInfo`` on ``<namespace>/vision_info``; definitions embedded in the mcap schemas.

    Used as a context manager; leaving it for ANY reason (Ctrl-C included) closes the bag
    properly, so a partial run is still a readable bag. ``metadata.yaml`` ``custom_data`` records
    the format, the bank and whether the run completed.
    """

    def __init__(self, path: Path, topic: str, info: dict, force: bool = False):
        _rosbags()
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if not topic.startswith("/") or topic.endswith("/") or " " in topic:
            raise ConfigError(f"--out-topic {topic!r}: an absolute topic name like /coder/classification")
        path = Path(path)
        if path.exists():
            if not force:
                raise ConfigError(f"{path} exists; pass --force to replace it or choose another --out-bag")
            if not (path / "metadata.yaml").is_file() or any(p.is_dir() for p in path.iterdir()):
                raise ConfigError(f"{path} exists and is not a rosbag2 directory; not replacing it")
            shutil.rmtree(path)
        self.path, self.topic, self.info = path, topic, info
        self.typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.types = register_vision_msgs(self.typestore)
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.count = 0
        self.complete = False

    def __enter__(self) -> "ClassificationBag":
        self.writer.open()
        self.conn = self.writer.add_connection(self.topic, "vision_msgs/msg/Classification", typestore=self.typestore)
        self.info_conn = self.writer.add_connection(_parent_namespace(self.topic) + "/vision_info",
                                                    "vision_msgs/msg/VisionInfo", typestore=self.typestore)
        return self

    def write(self, meta: FrameMeta, results: list[tuple[str, float]]) -> None:
        t = meta.log_time_ns if meta.log_time_ns is not None else meta.stamp_ns
        if self.count == 0:
            info = vision_info_msg(self.types, self.info, meta.stamp_ns, meta.frame_id)
            self.writer.write(self.info_conn, t, self.typestore.serialize_cdr(info, "vision_msgs/msg/VisionInfo"))
        msg = classification_msg(self.types, meta, results)
        self.writer.write(self.conn, t, self.typestore.serialize_cdr(msg, "vision_msgs/msg/Classification"))
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.complete = exc_type is None
        for key, value in {"coder.format": FORMAT, "coder.format_version": str(FORMAT_VERSION),
                           "coder.complete": "true" if self.complete else "false",
                           "coder.database_location": self.info["database_location"],
                           "coder.database_sha256": self.info["database_sha256"],
                           "coder.labels": json.dumps(self.info["labels"])}.items():
            self.writer.set_custom_data(key, value)
        with _sigint_deferred():  # a second Ctrl-C must not cut the index in half
            self.writer.close()
        return False


class _sigint_deferred:
    """Hold SIGINT while the bag's summary and metadata are written (main thread only)."""

    def __enter__(self):
        self.pending = False
        self.old = None
        try:
            self.old = signal.signal(signal.SIGINT, lambda *a: setattr(self, "pending", True))
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.pending and exc[0] is None:
                raise KeyboardInterrupt
        return False


__all__ = ["BagOptions", "BagPlan", "ClassificationBag", "FrameResult", "classify_bags", "open_reader", "plan_bags"]
