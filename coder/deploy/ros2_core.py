"""Everything of the ROS 2 node except the rclpy glue: parameters, the drop-stale frame policy,
and one frame's processing. No rclpy import here, so all of it is tested without ROS.

>>> cfg = NodeConfig.from_params({"artifacts": "art", "top_k": 3})      # doctest: +SKIP
>>> slot = LatestSlot(); slot.put("f1"); slot.put("f2")                 # "f1" is dropped
>>> slot.take(timeout=0), slot.dropped
('f2', 1)
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, fields
from typing import Any, Callable

from ..errors import ConfigError, FrameError
from .ros_msgs import COMPRESSED_TYPE, IMAGE_TYPE, MsgTypes, classification_msg, frame_meta, frame_record, \
    hypotheses, msg_to_pil



@dataclass(frozen=True)
class NodeConfig:
    """The node's ROS parameters (``-p name:=value``) and their defaults.

    ``tau`` < 0 means the bank preset's value (a NaN or infinite number is a usage error, as is any
    non-finite or fractional ``top_k``); ``input_type`` ``auto`` subscribes to a
    CompressedImage when the topic name ends in ``/compressed``; an empty ``json_topic`` publishes
    no JSON.
    """

    artifacts: str = ""
    bank: str = ""
    backend: str = "auto"
    precision: str = "fp32"
    tau: float = -1.0
    top_k: int = 5
    threads: int = 0
    input_topic: str = "image"
    input_type: str = "auto"
    output_topic: str = "coder/classification"
    json_topic: str = ""
    vision_info_topic: str = "coder/vision_info"
    classes: tuple = ()  # string array: classify among these names (names + synonyms bank) instead of ``bank``
    set_classes_topic: str = "coder/set_classes"  # std_msgs/String "cat,dog,zebra": swap the classes live

    @classmethod
    def from_params(cls, values: dict[str, Any]) -> "NodeConfig":
        """Typed, validated config from raw parameter values (unknown names are an error)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(known)}")
        typed = {}
        for name, value in values.items():
            if value is None:  # `-p name:=` (empty) gives a null: keep the default
                continue
            kind = type(known[name].default)
            if kind is tuple:
                typed[name] = parse_classes(value)
                continue
            typed[name] = _coerce(name, kind, value)
        cfg = cls(**typed)
        cfg.check()
        return cfg

    def check(self) -> None:
        if not math.isfinite(self.tau):
            raise ConfigError(f"parameter tau: a finite number (< 0: the bank preset), got {self.tau}")
        try:  # backend, precision and tau are checked where every entry point checks them
            self.classifier_options()
        except ConfigError as e:
            raise ConfigError(f"parameter {e}") from None
        if self.top_k < 1 or self.threads < 0:
            raise ConfigError("parameters top_k >= 1 and threads >= 0")
        if self.input_type not in ("auto", "raw", "compressed"):
            raise ConfigError(f"parameter input_type {self.input_type!r}: choose auto, raw, compressed")
        if not self.input_topic or not self.output_topic:
            raise ConfigError("parameters input_topic and output_topic must not be empty")
        if self.classes and self.bank:
            raise ConfigError("parameters bank and classes: choose one")

    @property
    def input_msgtype(self) -> str:
        compressed = self.input_type == "compressed" or (
            self.input_type == "auto" and self.input_topic.rstrip("/").endswith("/compressed"))
        return COMPRESSED_TYPE if compressed else IMAGE_TYPE

    def classifier_options(self, default_artifacts: str = "coder-artifacts"):
        """The one :class:`~coder.runtime.classifier.ClassifierOptions` the node loads its classifier with."""
        from ..runtime.classifier import ClassifierOptions

        return ClassifierOptions(self.artifacts or default_artifacts, self.bank or None, self.backend,
                                 self.precision, None if self.tau < 0 else self.tau, threads=self.threads or None,
                                 classes=self.classes or None)


def _coerce(name: str, kind: type, value: Any) -> Any:
    """One raw parameter value as ``kind``; ints and floats must be finite (``inf``, ``1e400``, ``nan``:
    ConfigError, exit 2), an int must be whole (``2.5`` and ``True`` are refused)."""
    try:
        if kind in (int, float):
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError
            if kind is int and float(value) != int(float(value)):
                raise ValueError
            return int(float(value)) if kind is int else float(value)
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        what = {int: "a finite whole number", float: "a finite number"}.get(kind, kind.__name__)
        raise ConfigError(f"parameter {name}: expected {what}, got {value!r}") from None


def parse_classes(value: Any) -> tuple[str, ...]:
    """The ``classes`` parameter: a string array, or one comma-separated string (``"cat,dog"``); ConfigError
    for anything else, or for empty or repeated names. ``parse_classes([]) == ()`` (no list: the bank's)."""
    from ..text_bank.live import parse_names

    return parse_names(value, "parameter classes")


class Vocabulary:
    """The node's current classifier and its VisionInfo, swapped whole between frames.

    A frame reads :attr:`clf` once and uses that classifier throughout, so a swap never lands within a
    frame. :meth:`set_classes` builds the new classifier first (only new texts are encoded, the image
    encoder is shared) and then swaps one reference; ``info`` (VisionInfo) then has ``database_version``
    incremented and ``database_location`` naming the new bank version (``<bank dir>@<content sha256[:16]>``).
    A bad list raises ConfigError and changes nothing.

    >>> v = Vocabulary(clf, "coder CODER (cpu)")        # doctest: +SKIP
    >>> v.set_classes(["cat", "dog", "zebra"])["database_version"] == v.info["database_version"]
    True
    """

    def __init__(self, clf, method: str):
        from .ros_msgs import vision_info

        self._lock = threading.Lock()
        self.clf = clf
        self.swaps = 0
        self.info = {**vision_info(clf.bank, method), "database_location": _location(clf)}

    def set_classes(self, names) -> dict:
        """Classify among exactly ``names`` from the next frame on; returns the new VisionInfo dict."""
        names = parse_classes(names)
        if not names:
            raise ConfigError("parameter classes: give at least one class name")
        with self._lock:  # one change at a time; frames keep using the current classifier meanwhile
            from ..text_bank.live import _name_key

            current = self.clf
            wanted = {_name_key(n) for n in names}
            have = {_name_key(n): n for n in current.class_names}
            remove = [n for k, n in have.items() if k not in wanted]
            add = [n for n in names if _name_key(n) not in have]
            new = current.with_classes(add=add, remove=remove) if add or remove else current
            info = {**self.info, "database_version": (int(self.info["database_version"]) + 1) & 0x7FFFFFFF,
                    "database_location": _location(new), "database_sha256": new.bank_sha256,
                    "labels": list(new.class_names)}
            self.clf, self.info, self.swaps = new, info, self.swaps + 1  # the swap: reference assignments
            return info


def _location(clf) -> str:
    return f"{clf.bank.root}@{clf.bank_sha256[:16]}"


class LatestSlot:
    """A one-slot mailbox: ``put`` replaces an item not yet taken (counted in ``dropped``), ``take``
    waits for the newest. There is never more than one frame waiting, so latency stays one frame
    however slow inference is."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.dropped = 0
        self.received = 0

    def put(self, item: Any) -> bool:
        """Store ``item``; True if it replaced (dropped) a stale one."""
        with self._cond:
            replaced = self._full
            self.dropped += replaced
            self.received += 1
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The newest item (and empty the slot); None on timeout or after :meth:`close`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class LatestWorker:
    """One thread that handles the newest submitted item, dropping the ones it had no time for.

    ``handle(item)`` runs on the worker thread; an exception from it goes to ``on_error(item, exc)``
    and the worker goes on.
    """

    def __init__(self, handle: Callable[[Any], None], on_error: Callable[[Any, Exception], None]):
        self.slot = LatestSlot()
        self.handle, self.on_error = handle, on_error
        self.handled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coder-worker", daemon=True)

    def start(self) -> "LatestWorker":
        self._thread.start()
        return self

    def submit(self, item: Any) -> bool:
        """Called from the subscription callback; never blocks on inference."""
        return self.slot.put(item)

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self.slot.take(timeout=0.1)
            if item is None:
                continue
            try:
                self.handle(item)
            except Exception as e:  # noqa: BLE001 - one bad frame must not stop the node
                self.on_error(item, e)
            self.handled += 1

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.slot.close()
        self._thread.join(timeout)


@dataclass(frozen=True)
class FrameOutput:
    """What the node publishes for one frame."""

    classification: Any  # vision_msgs/Classification built with the given MsgTypes
    record: dict  # the JSON record (same schema as ``coder bag --json``)


def process_frame(clf, msg: Any, msgtype: str, topic: str, top_k: int, types: MsgTypes) -> FrameOutput:
    """One image message -> its Classification (source header) and JSON record. Raises
    :class:`~coder.errors.FrameError` for a frame that cannot be converted."""
    meta = frame_meta(msg, topic)
    image = msg_to_pil(msg, msgtype, topic)
    n = len(clf.class_names)
    [pred] = clf.classify([image], n)
    return FrameOutput(classification_msg(types, meta, hypotheses(pred, top_k, n)),
                       frame_record(topic, meta, pred, top_k, n))


__all__ = ["FrameError", "FrameOutput", "LatestSlot", "LatestWorker", "NodeConfig", "Vocabulary", "parse_classes",
           "process_frame"]
