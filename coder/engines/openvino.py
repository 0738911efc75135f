"""OpenVINO backends: ``openvino`` (the CPU), ``openvino:GPU``, ``openvino:NPU`` (OpenVINO's own runtime).

The ``openvino`` wheel (the ``[openvino]`` extra) is torch-free and reads the artifact's ONNX files
directly. Its own runtime is used, not ONNX Runtime's OpenVINO execution provider: the provider ships
as a separate ``onnxruntime-openvino`` wheel that owns the same ``onnxruntime`` module as the
``[cpu]``/``[gpu]`` extras, so both could never be installed side by side (README "OpenVINO").

The precision a model runs at is OpenVINO's ``INFERENCE_PRECISION_HINT``: ``f32`` or a reduced one
(``bf16`` on a CPU that reports ``BF16`` in ``OPTIMIZATION_CAPABILITIES``; ``f16`` on a GPU). The
hint is what the caller asks for; ``backend`` names what the compiled model reports it runs
(``openvino-bf16``, ``openvino-f32``, ``openvino:GPU-f16``), never what was merely requested.

Compiled models are cached (OpenVINO ``CACHE_DIR``) in a directory keyed like the TensorRT caches
(model sha256, OpenVINO version, device): ``<model dir>/engines/openvino/<stem>-<sha16>-ov<version>-<DEVICE>/``,
created before use; where the artifact is read-only, the same key under the user cache
(``$XDG_CACHE_HOME/coder/openvino/`` or ``~/.cache/coder/openvino/``).

>>> enc = load_openvino("art/image_encoder.fp32.onnx", "openvino", hint="bf16")   # doctest: +SKIP
>>> enc.backend, enc.run(x).shape                                                 # ('openvino-bf16', (1, 512))
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BackendError, one_line
from ..store import sha256_file

PREFIX = "openvino"
DEVICES = ("CPU", "GPU", "NPU")
BACKENDS = (PREFIX, *(f"{PREFIX}:{d}" for d in DEVICES[1:]))
HINTS = ("f32", "bf16", "f16")
REDUCED = {"CPU": ("bf16", "BF16"), "GPU": ("f16", "FP16")}  # device -> (hint, capability it needs)
NO_OV = "no OpenVINO installed: pip install 'coder[openvino]'"


def import_ov():
    """The ``openvino`` module, or BackendError naming the install line."""
    try:
        import openvino
    except ImportError:
        raise BackendError(NO_OV) from None
    return openvino


def installed() -> bool:
    """True if the ``openvino`` wheel can be imported here (without importing it twice)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def is_openvino(backend: str) -> bool:
    """``is_openvino("openvino:GPU") is True``; also true for reported names such as ``openvino-bf16``."""
    return backend == PREFIX or backend.startswith((PREFIX + ":", PREFIX + "-"))


def device_of(backend: str) -> str:
    """``device_of("openvino") == "CPU"``, ``device_of("openvino:gpu") == "GPU"``; BackendError otherwise."""
    name, _, dev = backend.partition(":")
    dev = (dev or "CPU").upper()
    if name != PREFIX or dev not in DEVICES:
        raise BackendError(f"unknown OpenVINO backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return dev


def version() -> str:
    """The OpenVINO version without its build suffix: ``"2026.4.1"``."""
    return import_ov().__version__.split("-")[0]


_CORE = None
_CORE_LOCK = threading.Lock()


def core():
    """One ``openvino.Core`` per process (creating one loads every device plugin)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = import_ov().Core()
        return _CORE


def reduced_hint(device: str = "CPU") -> str | None:
    """The reduced precision ``device`` runs natively (``"bf16"`` on a CPU with BF16), else None."""
    hint, capability = REDUCED.get(device, (None, None))
    if hint is None:
        return None
    try:
        caps = core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:  # the device is not there: OpenVINO raises its own RuntimeError types
        return None
    return hint if capability in caps else None


def cache_key(path: Path, sha: str, device: str) -> str:
    """``image_encoder.fp32-<sha16>-ov2026.4.1-CPU``: model bytes, OpenVINO version and device."""
    return f"{path.stem}-{sha[:16]}-ov{version()}-{device}"


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/coder`` (else ``~/.cache/coder``): where caches of read-only artifacts go."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coder"


def writable_dir(primary: Path, fallback: Path) -> Path | None:
    """``primary`` created (parents too) if a file can be written in it, else ``fallback``; None if neither.

    ``os.access`` is not trusted (read-only mounts, root): a probe file is created and removed.
    """
    for d in (primary, fallback):
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
            return d
        except OSError:
            continue
    return None


def compile_cache_dir(path: Path, sha: str, device: str) -> Path | None:
    """``<model dir>/engines/openvino/<key>/``, else ``<user cache>/openvino/<key>/``; None: no caching."""
    key = cache_key(path, sha, device)
    return writable_dir(path.parent / "engines" / PREFIX / key, user_cache_root() / PREFIX / key)


UNKNOWN = object()


def bucket(n: int, max_batch: int | None = None) -> int:
    """The static batch size a batch of ``n`` runs at: the next power of two, at most ``max_batch`` (the
    export's, so that full batches are never padded): ``bucket(5) == 8``, ``bucket(48, 48) == 48``."""
    b = 1 << max(0, n - 1).bit_length()
    return b if max_batch is None or n > max_batch else min(b, max_batch)


def batch_dims(model) -> list[tuple[int, ...]] | None:
    """Each input's shape after its batch dimension, if every input and output has a dynamic batch (dim 0:
    outputs' rows are sliced back) and no input another dynamic dimension; else None (the model then
    compiles once, as it is)."""
    shapes = [p.get_partial_shape() for p in (*model.inputs, *model.outputs)]
    if not all(s.rank.is_static and len(s) > 0 and s[0].is_dynamic for s in shapes):
        return None
    rest = [list(p.get_partial_shape())[1:] for p in model.inputs]
    if any(d.is_dynamic for dims in rest for d in dims):
        return None
    return [tuple(d.get_length() for d in dims) for dims in rest]


@dataclass
class OvEncoder:
    """One model compiled by OpenVINO for one device; ``run`` takes and returns numpy.

    With ``static`` (int8 models), a model whose only dynamic dimension is the batch is compiled at
    static batch sizes, one per power of two that a call needs (:func:`bucket`), the rows padded by
    repeating the last one. On the 2-core AVX-512 CPU ViT-B/32's int8 IR ran 13.9 ms at a static batch
    1 vs 16.2 ms at a dynamic one, for +0.23 GB per size; the fp32 file at bf16 gained 1-4 % for
    +0.70 GB, so it stays dynamic (README "OpenVINO"). Every batch size of a static encoder runs a
    static compile (static and dynamic int8 results differ by up to 0.04), so an image's result does
    not depend on its batch. Thread-safe: each thread has its own infer requests.
    """

    path: Path
    backend: str
    providers: list[str]
    source: object = field(repr=False)  # a model file's path (str), serialized ONNX bytes, or an openvino.Model
    device: str = "CPU"
    config: dict = field(default_factory=dict, repr=False)
    precision_hint: str = "f32"
    cache_dir: Path | None = None
    static: bool = False  # compile at static batch sizes (if only the batch is dynamic)
    max_batch: int | None = None  # the largest static size (the export's max batch); larger batches: bucket(n)
    _compiled: dict = field(default_factory=dict, repr=False)  # static batch (None: as read) -> CompiledModel
    _dims: object = field(default=UNKNOWN, repr=False)  # batch_dims of the model, once read
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def batches(self) -> tuple:
        """The static batch sizes compiled so far (``(None,)`` for a model compiled as it is)."""
        return tuple(self._compiled)

    def _read(self):
        """A fresh ``openvino.Model`` per compile: kept, a read model's constants stay in memory beside
        compiled models loaded from ``CACHE_DIR`` (ViT-B/32 fp32 at bf16: +0.34 GB)."""
        src = self.source
        return core().read_model(src) if isinstance(src, (str, bytes)) else src.clone()

    def compiled(self, n: int = 1):
        """``(static batch or None, compiled model)`` that a batch of ``n`` runs on, compiled on first use
        (BackendError if OpenVINO cannot compile it, e.g. out of memory)."""
        if self._dims is not UNKNOWN:  # the common case: compiled before, no lock
            b = None if self._dims is None else bucket(n, self.max_batch)
            if b in self._compiled:
                return b, self._compiled[b]
        with self._lock:
            model = None
            if self._dims is UNKNOWN:  # the first compile learns whether the batch can be made static
                if self.static:
                    model = self._read()
                self._dims = batch_dims(model) if self.static else None
            b = None if self._dims is None else bucket(n, self.max_batch)
            if b not in self._compiled:
                if model is None:  # a path compiles directly: a CACHE_DIR hit then never reads the file
                    model = self.source if b is None and isinstance(self.source, str) else self._read()
                if b is not None:
                    model.reshape({inp: [b, *d] for inp, d in zip(model.inputs, self._dims)})
                try:
                    self._compiled[b] = core().compile_model(model, self.device, self.config)
                except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
                    at = "" if b is None else f" at batch {b}"
                    raise BackendError(f"OpenVINO could not compile {self.path.name}{at} for {self.device}: "
                                       f"{one_line(e, 200)}") from None  # e.g. out of memory
            return b, self._compiled[b]

    def _request(self, b, compiled):
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        if b not in requests:
            requests[b] = compiled.create_infer_request()
        return requests[b]

    def close(self) -> None:
        """Nothing to free by hand: OpenVINO releases the compiled models with the object."""

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        n = len(x)
        b, compiled = self.compiled(n)
        if b is not None and b > n:  # pad with the last row (zeros for an empty batch); sliced back below
            last = x[-1:] if n else np.zeros((1, *x.shape[1:]), x.dtype)
            x = np.concatenate([x, np.repeat(last, b - n, axis=0)])
        res = self._request(b, compiled).infer({0: np.ascontiguousarray(x)})
        out = [np.array(res[o]) for o in compiled.outputs]  # copies: the request reuses its buffers
        return out if b is None or b == n else [a[:n] for a in out]

    def run(self, x: np.ndarray) -> np.ndarray:
        """The first output (the embedding)."""
        return self.run_all(x)[0]


def load_openvino(path: str | os.PathLike | bytes, backend: str = PREFIX, hint: str | None = "f32",
                  threads: int | None = None, model_sha256: str | None = None, int8: bool = False,
                  max_batch: int | None = None) -> OvEncoder:
    """Compile ``path`` (ONNX or OpenVINO IR ``.xml``, or serialized ONNX bytes) for ``backend``'s device at ``hint``.

    ``backend`` reads e.g. ``openvino-bf16``: the precision the compiled model reports, or ``openvino-int8``
    for a quantized model (``int8``: its quantized layers run int8, the rest at ``hint``); ``hint=None``
    leaves OpenVINO's default. The model is compiled here (an int8 one at batch 1, other batch sizes, up
    to ``max_batch``, on first use: :class:`OvEncoder`). Raises BackendError if OpenVINO is missing, the device is not there,
    or the model does not compile.
    """
    dev = device_of(backend)
    if hint is not None and hint not in HINTS:
        raise BackendError(f"OpenVINO precision hint {hint!r}: choose one of {', '.join(HINTS)}")
    c = core()
    if dev not in c.available_devices:
        raise BackendError(f"backend {backend!r}: OpenVINO {version()} reports no {dev} device here "
                           f"(has: {', '.join(c.available_devices) or 'none'}; `coder doctor` shows what loads)")
    config = {"PERFORMANCE_HINT": "LATENCY"} | ({"INFERENCE_PRECISION_HINT": hint} if hint else {})
    if threads and dev == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    cache = None
    if not isinstance(path, bytes):
        path = Path(path)
        cache = compile_cache_dir(path, model_sha256 or sha256_file(path), dev)
        if cache is not None:
            config["CACHE_DIR"] = str(cache)
    name = "<in-memory model>" if isinstance(path, bytes) else path.name
    try:
        enc = OvEncoder(Path(name) if isinstance(path, bytes) else path, "", [f"{PREFIX}:{dev}"],
                        path if isinstance(path, bytes) else str(path), dev, config, cache_dir=cache, static=int8,
                        max_batch=max_batch)
        ran = enc.compiled(1)[1].get_property("INFERENCE_PRECISION_HINT")
    except BackendError as e:  # the compile failed: the message names the file, batch and device
        raise BackendError(f"backend {backend!r}: {e}") from None
    except Exception as e:  # reading the model failed: OpenVINO raises RuntimeError subclasses of its own
        raise BackendError(f"backend {backend!r} could not load {name}: {one_line(e, 200)}") from None
    enc.precision_hint = ran.get_type_name() if hasattr(ran, "get_type_name") else str(ran)
    label = PREFIX if dev == "CPU" else f"{PREFIX}:{dev}"
    enc.backend = f"{label}-{'int8' if int8 else enc.precision_hint}"
    return enc


def probe_openvino() -> dict[str, str]:
    """``{"openvino": "ok (bf16)", "openvino:GPU": "<why not>", ...}`` from compiling a 1-node model."""
    try:
        c = core()
    except BackendError as e:
        return {b: str(e) for b in BACKENDS}
    from .ort import _identity_model

    model = _identity_model()
    out = {}
    for backend in BACKENDS:
        dev = device_of(backend)
        if dev not in c.available_devices:
            out[backend] = f"OpenVINO {version()} reports no {dev} device"
            continue
        try:
            c.compile_model(c.read_model(model), dev)
            reduced = reduced_hint(dev)
            out[backend] = "ok" + (f" ({reduced} capable)" if reduced else "")
        except Exception as e:
            out[backend] = one_line(e, 160)
    return out
