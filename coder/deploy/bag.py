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
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import ConfigError, CoderError, FrameError, InputError, one_line
from ..store import critical, fsync_dir
from ..store.files import fsync_file, storage_errors
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
    text = one_line(e)
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


def _step(name: str) -> None:
    """A commit point of :class:`ClassificationBag` (``opened``, ``frame``, ``closed``, ``moved-previous``,
    ``renamed``, ``cleaned``): a no-op hook that the fault-injection and signal tests replace."""


def check_out_bag(path: Path, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse an ``--out-bag`` that is, holds or lies inside an input bag (replacing it would delete the
    recording), one that exists without ``--force``, or an existing path that is not a rosbag2 directory.
    Changes nothing on disk; ConfigError (exit 2)."""
    from ..store import same_or_nested

    for bag in inputs:
        if same_or_nested(path, bag):
            raise ConfigError(f"--out-bag {path} is, holds or lies inside the input bag {bag}; writing it would "
                              "replace the recording: choose another --out-bag")
    if path.exists() or path.is_symlink():
        if not force:
            raise ConfigError(f"{path} exists; pass --force to replace it or choose another --out-bag")
        if not path.is_dir() or not (path / "metadata.yaml").is_file() or any(p.is_dir() for p in path.iterdir()):
            raise ConfigError(f"{path} exists and is not a rosbag2 directory; not replacing it")


class ClassificationBag:
    """A rosbag2 directory (mcap storage) of ``vision_msgs/msg/Classification`` on ``topic``, plus
    one ``VisionInfo`` on ``<namespace>/vision_info``; definitions embedded in the mcap schemas.

    Written through the store layer: under the output's lock, into ``.<name>.partial/<name>`` beside it,
    and renamed into place when the context exits. Leaving the context for ANY reason (SIGINT, SIGTERM, an
    error) closes the bag properly: with no previous bag, the partial one (``coder.complete: 'false'``) is
    committed and readable; an existing bag replaced with ``--force`` is kept until a run completes. The
    swap keeps the previous bag as ``.<name>.previous`` between its two renames, so a run killed at any
    point leaves the previous bag or the new one, and the next run restores or removes what is left.

    >>> with ClassificationBag(Path("labels"), "/coder/classification", info) as out:   # doctest: +SKIP
    ...     out.write(meta, [("cat", 0.9)])
    """

    def __init__(self, path: Path, topic: str, info: dict, force: bool = False, inputs: Sequence[Path] = ()):
        _rosbags()
        if not topic.startswith("/") or topic.endswith("/") or " " in topic:
            raise ConfigError(f"--out-topic {topic!r}: an absolute topic name like /coder/classification")
        from ..store import resolved

        check_out_bag(Path(path), force, inputs)
        # A symlinked OUT: the bag it points to is replaced, the link stays.
        self.path, self.topic, self.info, self.force, self.inputs = resolved(path), topic, info, force, tuple(inputs)
        self.stage = self.path.with_name(f".{self.path.name}.partial")
        self.previous = self.path.with_name(f".{self.path.name}.previous")
        self.count = 0
        self.complete = False
        self.kept_previous = False  # an interrupted run left the previous bag in place

    def __enter__(self) -> "ClassificationBag":
        from ..store import output_lock

        self._lock = output_lock(self.path)
        self._lock.__enter__()
        try:
            with critical():
                self._recover()
                check_out_bag(self.path, self.force, self.inputs)
                self._open()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        _step("opened")
        return self

    def _recover(self) -> None:
        """Finish or undo what a killed run left: ``.previous`` without the bag is the user's bag (restored);
        beside a bag it is the replaced one (removed); a ``.partial`` staging directory is dropped."""
        with storage_errors(self.path.parent):
            if self.previous.is_dir():
                if self.path.exists():
                    shutil.rmtree(self.previous)
                else:
                    os.rename(self.previous, self.path)
                    fsync_dir(self.path.parent)
            if self.stage.exists():
                shutil.rmtree(self.stage)

    def _open(self) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.typestore = get_typestore(Stores.ROS2_HUMBLE)
        self.types = register_vision_msgs(self.typestore)
        with storage_errors(self.path.parent):
            self.stage.mkdir(parents=True)
            self.writer = Writer(self.stage / self.path.name, version=9, storage_plugin=StoragePlugin.MCAP)
            self.writer.open()
        self.conn = self.writer.add_connection(self.topic, "vision_msgs/msg/Classification", typestore=self.typestore)
        self.info_conn = self.writer.add_connection(_parent_namespace(self.topic) + "/vision_info",
                                                    "vision_msgs/msg/VisionInfo", typestore=self.typestore)

    def write(self, meta: FrameMeta, results: list[tuple[str, float]]) -> None:
        """Append one frame's Classification; a signal waits until the record is whole."""
        t = meta.log_time_ns if meta.log_time_ns is not None else meta.stamp_ns
        msg = classification_msg(self.types, meta, results)
        with critical():
            if self.count == 0:
                info = vision_info_msg(self.types, self.info, meta.stamp_ns, meta.frame_id)
                self.writer.write(self.info_conn, t, self.typestore.serialize_cdr(info, "vision_msgs/msg/VisionInfo"))
            self.writer.write(self.conn, t, self.typestore.serialize_cdr(msg, "vision_msgs/msg/Classification"))
            self.count += 1
        _step("frame")

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.complete = exc_type is None
        try:
            with critical():  # a second Ctrl-C or a SIGTERM must not cut the index or the swap in half
                self._close()
                _step("closed")
                self._commit()
        finally:
            self._lock.__exit__(None, None, None)
        return False

    def _close(self) -> None:
        for key, value in {"coder.format": FORMAT, "coder.format_version": str(FORMAT_VERSION),
                           "coder.complete": "true" if self.complete else "false",
                           "coder.database_location": self.info["database_location"],
                           "coder.database_sha256": self.info["database_sha256"],
                           "coder.labels": json.dumps(self.info["labels"])}.items():
            self.writer.set_custom_data(key, value)
        staged = self.stage / self.path.name
        with storage_errors(self.path.parent):
            self.writer.close()
            for f in staged.iterdir():
                fsync_file(f)
            fsync_dir(staged)

    def _commit(self) -> None:
        """Rename the staged bag into place (the previous one aside first, removed last)."""
        parent = self.path.parent
        with storage_errors(parent):
            if not self.complete and self.path.exists():  # an unfinished run never replaces a bag
                self.kept_previous = True
                shutil.rmtree(self.stage)
                warnings.warn(f"{self.path}: the run did not finish; the previous bag is kept (re-run to replace "
                              "it)", RuntimeWarning, stacklevel=2)
                return
            if self.path.exists():
                os.rename(self.path, self.previous)
                fsync_dir(parent)
                _step("moved-previous")
            os.rename(self.stage / self.path.name, self.path)
            fsync_dir(parent)
            _step("renamed")
            shutil.rmtree(self.previous, ignore_errors=True)
            shutil.rmtree(self.stage, ignore_errors=True)
            fsync_dir(parent)
            _step("cleaned")
        if not self.complete:
            warnings.warn(f"{self.path}: the run did not finish; wrote the {self.count} results so far (metadata "
                          "coder.complete: 'false')", RuntimeWarning, stacklevel=2)


__all__ = ["BagOptions", "BagPlan", "ClassificationBag", "FrameResult", "check_out_bag", "classify_bags",
           "open_reader", "plan_bags"]
