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

from ..errors import CoderError, InputError
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
    kind = "INVALID_ARG" if isinstance(exc, InputError) else "INTERNAL"
    code = getattr(pb.TritonError, kind, None)  # error codes: Python backend r23.06 and later
    return pb.InferenceResponse(error=pb.TritonError(msg) if code is None else pb.TritonError(msg, code))


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

        self.pb = pb
        self.setup()

    def finalize(self) -> None:
        pass


class ClassifyModel(_Base):
    def setup(self) -> None:
        self.clf = self.options().load()
        self.top_k = int(self.settings["top_k"])

    def execute(self, requests):
        return run_batched(self.pb, requests, lambda r: request_images(self.pb, r),
                           lambda ims: self.clf.classify(ims, self.top_k),
                           lambda preds, a, b: prediction_tensors(self.pb, preds[a:b]))


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
