"""What runs inside Triton's Python backend (loaded by the thin ``model.py`` of ``coder triton-repo``).

Roles (``coder_model.json`` ``role``):

* ``classify``: image bytes -> CODER outputs; the whole batch Triton formed is ONE
  :meth:`Classifier.classify` call (one fused encoder+head engine call).
* ``preprocess`` / ``head`` / ``gate``: the three steps of the ensemble layout.

A request whose image cannot be decoded gets an error response of its own (``INVALID_ARG``: HTTP 400,
never a retryable 500); the other requests of the same batch are answered normally. Torch-free.

>>> Model = make_model({"role": "classify", "artifacts": "...", ...})   # doctest: +SKIP
>>> Model().initialize(args); Model().execute(requests)                  # Triton calls these
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, CoderError, InputError
from ..runtime.images import decode_image as _decode_bytes

IMAGE = "image"


def decode_image(data: bytes):
    """Encoded JPEG/PNG/WebP/... bytes of one request -> decoded PIL image, or :class:`InputError`,
    with the same limits as every other input path (pixel count, aspect ratio; see
    :func:`coder.runtime.images.decode_image`)."""
    return _decode_bytes(data, "request image")


def request_images(pb, request) -> list:
    """The decoded images of one request (its ``image`` tensor is (n, 1) bytes)."""
    t = pb.get_input_tensor_by_name(request, IMAGE)
    if t is None:
        raise InputError(f"request has no {IMAGE!r} input")
    return [decode_image(bytes(x)) for x in t.as_numpy().reshape(-1)]


def prediction_tensors(pb, preds) -> list:
    """Output tensors of one request from its Predictions (field names as ``coder classify --json``)."""
    return [pb.Tensor("label", np.array([[p.label] for p in preds], np.int32)),
            pb.Tensor("name", np.array([[p.name.encode("utf-8")] for p in preds], dtype=np.object_)),
            pb.Tensor("top_k", np.array([p.top_k for p in preds], np.int32)),
            pb.Tensor("stage1_scores", np.array([p.stage1_scores for p in preds], np.float32)),
            pb.Tensor("gap", np.array([[p.gap] for p in preds], np.float32)),
            pb.Tensor("reranked", np.array([[p.reranked] for p in preds], np.bool_))]


def _error(pb, exc: Exception):
    """The error response for ``exc``: a bad input (:class:`InputError`: corrupt, empty, too large) is the
    client's fault, ``INVALID_ARG`` (HTTP 400, gRPC INVALID_ARGUMENT), so clients and proxies do not retry it;
    anything else is ``INTERNAL`` (HTTP 500)."""
    msg = str(exc) if isinstance(exc, CoderError) else f"{type(exc).__name__}: {exc}"
    kind = "INVALID_ARG" if isinstance(exc, (ConfigError, InputError)) else "INTERNAL"
    code = getattr(pb.TritonError, kind, None)  # error codes: Python backend r23.06 and later
    return pb.InferenceResponse(error=pb.TritonError(msg) if code is None else pb.TritonError(msg, code))


CLASSES_PARAM = "classes"


def request_classes(request) -> tuple[str, ...] | None:
    """The KServe v2 request parameter ``classes`` ("cat,dog,zebra") of a request; None when absent.
    ConfigError (HTTP 400) for a list with an empty or repeated name."""
    import json

    from ..text_bank.live import parse_names

    raw = request.parameters() if hasattr(request, "parameters") else "{}"
    params = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
    value = params.get(CLASSES_PARAM)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"request parameter {CLASSES_PARAM!r}: a comma-separated string, got {value!r}")
    names = parse_names(value, f"request parameter {CLASSES_PARAM!r}")
    if not names:
        raise ConfigError(f"request parameter {CLASSES_PARAM!r}: no class names")
    return names


class ClassifierCache:
    """Classifiers for per-request class lists, keyed by content (the cleaned names, in order), sharing the
    served classifier's image encoder; least recently used dropped first once their banks exceed
    ``limit_mb``. Banks are those of ``coder classify --classes`` (cached on disk too).

    >>> cache = ClassifierCache(clf, limit_mb=256); cache.get(("cat", "dog")).class_names   # doctest: +SKIP
    ('cat', 'dog')
    """

    def __init__(self, base, limit_mb: float = 256.0):
        import threading
        from collections import OrderedDict

        self.base, self.limit = base, float(limit_mb) * 2**20
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.RLock()  # stats() is also called while get() holds it
        self._text_encoder = None
        self.hits = self.misses = 0

    @staticmethod
    def _size(clf) -> int:
        return sum(a.nbytes for a in clf.bank.arrays.values())

    @property
    def nbytes(self) -> int:
        return sum(self._size(c) for c in self._items.values())

    @property
    def megabytes(self) -> float:
        return self.nbytes / 2**20

    def stats(self) -> dict:
        """``{"class_lists": 2, "bank_cache_mb": 0.118, "bytes": 123904, "hits": 5, "misses": 2,
        "limit_mb": 256.0}``"""
        with self._lock:
            n, size = len(self._items), self.nbytes
        return {"class_lists": n, "bank_cache_mb": round(size / 2**20, 3), "bytes": size, "hits": self.hits,
                "misses": self.misses, "limit_mb": self.limit / 2**20}

    def get(self, names: tuple[str, ...]):
        from dataclasses import replace

        from ..text_bank.class_lists import bank_for_classes
        from ..text_bank.live import _name_key
        from ..text_bank.text_encoder import TextEncoder

        key = tuple(_name_key(n) for n in names)
        with self._lock:
            if key in self._items:
                self.hits += 1
                self._items.move_to_end(key)
                return self._items[key]
            self.misses += 1
            base = self.base
            if self._text_encoder is None:
                self._text_encoder = TextEncoder.load(base.options.artifacts)
            bank = bank_for_classes(base.options.artifacts, names, text_encoder=self._text_encoder)
            clf = replace(base, bank=bank, encoder=base.encoder.with_head(bank, base.k), change=None)
            self._items[key] = clf
            while len(self._items) > 1 and sum(self._size(c) for c in self._items.values()) > self.limit:
                self._items.popitem(last=False)
            self.log(f"coder: class-list banks {self.stats()}")
            return clf

    @staticmethod
    def log(message: str) -> None:
        """Into the server log (``coder serve`` prints its path) when running inside Triton."""
        try:
            import triton_python_backend_utils as pb

            pb.Logger.log_info(message)
        except (ImportError, AttributeError):
            pass


class CacheMetrics:
    """The bank cache of per-request class lists as Prometheus metrics on Triton's metrics port (the Python
    backend's custom metrics, Triton 23.05 and later), labelled with the model, version and instance; what
    ``coder serve`` reads for its ``stats:`` lines. A backend without ``MetricFamily`` publishes nothing.

    >>> m = CacheMetrics(pb, {"model": "coder", "version": "1", "instance": "coder_0_0"})   # doctest: +SKIP
    >>> m.publish(cache.stats())
    """

    GAUGES = {"entries": ("coder_bank_cache_entries", "class lists (request parameter `classes`) whose banks are "
                          "cached"),
              "bytes": ("coder_bank_cache_bytes", "memory of the cached class-list banks, bytes"),
              "limit": ("coder_bank_cache_limit_bytes", "bound on that memory (--bank-cache-mb), bytes")}
    COUNTERS = {"hits": ("coder_bank_cache_hits_total", "requests whose class list was cached"),
                "misses": ("coder_bank_cache_misses_total", "requests whose class list had its bank built")}

    def __init__(self, pb, labels: dict[str, str]):
        self.metrics: dict = {}
        self._counted = {"hits": 0, "misses": 0}
        family = getattr(pb, "MetricFamily", None)
        if family is None:
            return
        self._families = []  # owned here: a family must outlive its metrics
        for kind, table in (("GAUGE", self.GAUGES), ("COUNTER", self.COUNTERS)):
            for key, (name, what) in table.items():
                fam = family(name=name, description=what, kind=getattr(family, kind))
                self._families.append(fam)
                self.metrics[key] = fam.Metric(labels=labels)

    def publish(self, stats: dict) -> None:
        """Set the gauges to ``stats`` (:meth:`ClassifierCache.stats`); counters grow by what was counted since."""
        if not self.metrics:
            return
        self.metrics["entries"].set(float(stats["class_lists"]))
        self.metrics["bytes"].set(float(stats["bytes"]))
        self.metrics["limit"].set(float(stats["limit_mb"]) * 2**20)
        for key in self.COUNTERS:
            step = int(stats[key]) - self._counted[key]
            if step > 0:
                self.metrics[key].increment(float(step))
                self._counted[key] += step


def backend_info(pb, labels: dict[str, str], backend: str):
    """``coder_backend_info{model=,version=,instance=,backend="openvino-f32"} 1`` on the metrics port: the backend
    this instance really runs (what ``auto`` chose, OpenVINO's precision), read by ``coder serve``. Returns the
    ``(family, metric)`` to keep alive, or None where the Python backend has no custom metrics."""
    family = getattr(pb, "MetricFamily", None)
    if family is None:
        return None
    fam = family(name="coder_backend_info", description="the backend this model instance runs its encoder on",
                 kind=family.GAUGE)
    metric = fam.Metric(labels={**labels, "backend": backend})
    metric.set(1.0)
    return fam, metric


def run_batched(pb, requests, decode, infer, encode) -> list:
    """Decode every request (a failure answers only that request), run ``infer`` ONCE on all
    decoded items, split the results back per request and ``encode`` them into tensors."""
    responses: list = [None] * len(requests)
    items, owners = [], []
    for i, r in enumerate(requests):
        try:
            got = decode(r)
        except Exception as e:  # noqa: BLE001 - any bad input answers its own request only
            responses[i] = _error(pb, e)
            continue
        items.extend(got)
        owners.append((i, len(got)))
    if owners:
        try:
            results = infer(items)
        except Exception as e:  # noqa: BLE001 - an engine failure answers this batch, the server lives on
            for i, _ in owners:
                responses[i] = _error(pb, e)
            return responses
        start = 0
        for i, n in owners:
            responses[i] = pb.InferenceResponse(output_tensors=encode(results, start, start + n))
            start += n
    return responses


class _Base:
    settings: dict = {}

    @property
    def threads(self) -> int:
        """ONNX Runtime threads of this instance: as set, else this machine's cores / instances."""
        import os

        s = self.settings
        return int(s["threads"] or max(1, (os.cpu_count() or 1) // int(s.get("instances") or 1)))

    def options(self):
        """The one :class:`~coder.runtime.classifier.ClassifierOptions` of this model, with this instance's threads."""
        from ..runtime.classifier import ClassifierOptions

        return ClassifierOptions.from_dict({**self.settings["options"], "threads": self.threads})

    def initialize(self, args) -> None:
        import triton_python_backend_utils as pb  # only importable inside the stub

        self.pb, self.args = pb, args
        self.setup()

    def metric_labels(self) -> dict[str, str]:
        """Labels of this instance's custom metrics: model, version and instance name (one stub per instance)."""
        a = getattr(self, "args", None) or {}
        return {"model": str(a.get("model_name", "coder")), "version": str(a.get("model_version", "1")),
                "instance": str(a.get("model_instance_name", ""))}

    def finalize(self) -> None:
        pass


class ClassifyModel(_Base):
    def setup(self) -> None:
        s = self.settings
        self.clf = self.options().load()
        self.top_k = int(s["top_k"])
        self.lists = ClassifierCache(self.clf, float(s.get("bank_cache_mb") or 256))
        self.metrics = CacheMetrics(self.pb, self.metric_labels())
        self.metrics.publish(self.lists.stats())
        self.backend_metric = backend_info(self.pb, self.metric_labels(), self.clf.backend)
        ClassifierCache.log(f"coder: {self.metric_labels()['instance'] or 'model'} classifies with backend "
                            f"{self.clf.backend} (asked: {self.clf.options.backend})")
        self._bank_stamp = self._stamp()

    def _stamp(self):
        import os

        root = getattr(getattr(self.clf, "bank", None), "root", None)
        if root is None:
            return None
        try:
            st = os.stat(root / "bank.json")
            return st.st_mtime_ns, st.st_ino, st.st_size
        except OSError:
            return None

    def _served(self):
        """The served classifier; a bank changed on disk (``coder bank add/rollback``) is swapped in between
        batches (batches in flight finish with the one they started with)."""
        stamp = self._stamp()
        if stamp is not None and stamp != self._bank_stamp:
            from dataclasses import replace

            from ..text_bank.bank import load_bank

            bank = load_bank(self.clf.bank.root, self.clf.encoder.artifact)
            if bank.content_sha256 != self.clf.bank_sha256:
                self.clf = replace(self.clf, bank=bank, encoder=self.clf.encoder.with_head(bank, self.clf.k))
                self.lists.base = self.clf  # cached class lists do not depend on the served bank: kept
            self._bank_stamp = stamp
        return self.clf

    def execute(self, requests):
        """Requests grouped by their ``classes`` parameter (none: the served bank); one classify per group."""
        served = self._served()
        groups: dict = {}
        responses: list = [None] * len(requests)
        listed = False
        for i, r in enumerate(requests):
            try:
                names = request_classes(r)
                listed = listed or names is not None
                if names is not None and len(names) < self.top_k:
                    raise ConfigError(f"request parameter {CLASSES_PARAM!r}: {len(names)} classes, this model "
                                      f"returns top_k={self.top_k}: give at least {self.top_k}")
                clf = served if names is None else self.lists.get(names)
            except Exception as e:  # noqa: BLE001 - a bad class list answers its own request only (HTTP 400)
                responses[i] = _error(self.pb, e)
                continue
            groups.setdefault(id(clf), (clf, []))[1].append(i)
        if listed:  # only class lists move the cache's numbers
            self.metrics.publish(self.lists.stats())
        for clf, idx in groups.values():
            out = run_batched(self.pb, [requests[i] for i in idx], lambda r: request_images(self.pb, r),
                              lambda ims, c=clf: c.classify(ims, self.top_k),
                              lambda preds, a, b: prediction_tensors(self.pb, preds[a:b]))
            for i, resp in zip(idx, out):
                responses[i] = resp
        return responses


def make_model(settings: dict):
    """The ``TritonPythonModel`` class for ``settings`` (a ``coder_model.json``)."""
    from .triton_repo import MODEL_FORMAT, REPO_FORMAT_VERSION

    if settings.get("format") != MODEL_FORMAT or settings.get("format_version") != REPO_FORMAT_VERSION:
        raise RuntimeError(f"coder_model.json: expected {MODEL_FORMAT} v{REPO_FORMAT_VERSION}: "
                           f"re-run `coder triton-repo` with this coder version")
    if settings["role"] == "classify":
        base = ClassifyModel
    else:
        from . import triton_ensemble

        base = triton_ensemble.ROLES[settings["role"]]
    return type("TritonPythonModel", (base,), {"settings": settings})
