"""ONNX Runtime backends: ``cpu``, ``cuda``, ``tensorrt`` (the ORT providers).

ONNX Runtime quietly runs on the CPU when a GPU provider fails to load, and
``get_available_providers()`` lists providers that cannot load. So after the
session exists we compare ``session.get_providers()`` with the request and
raise on any mismatch (PITFALLS.md, "ONNX Runtime").
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BackendError

BACKENDS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


NO_ORT = ("no ONNX Runtime installed: pip install 'coder[cpu]' (or 'coder[gpu]' for CUDA/TensorRT; "
          "on a Jetson, NVIDIA's onnxruntime-gpu wheel, README \"Jetson\")")


def import_ort():
    """The ``onnxruntime`` module, or BackendError naming the install line (the base install has none)."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(NO_ORT) from None
    return onnxruntime


def session_options(precision: str, threads: int | None = None, spinning: bool = True):
    """CPU-friendly options; fp16 graphs get BASIC optimisation only.

    ``ORT_ENABLE_ALL`` on an fp16 graph with fp32 LayerNorm islands crashed the
    process (segfault) on onnxruntime 1.32 CPU; BASIC keeps constant folding and
    is stable (PITFALLS.md, "Numerics").
    """
    ort = import_ort()
    so = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    so.graph_optimization_level = level.ORT_ENABLE_BASIC if precision == "fp16" else level.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    if not spinning:  # robots: do not burn a core between frames
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


@dataclass
class OrtEncoder:
    """One ONNX model in one ONNX Runtime session; ``run`` takes and returns numpy."""

    path: Path
    backend: str
    providers: list[str]
    session: object = field(repr=False)
    input_name: str = ""
    input_dtype: str = ""

    def run(self, x: np.ndarray) -> np.ndarray:
        """The first output (the embedding, for plain and fused graphs alike)."""
        return self.session.run(None, {self.input_name: x})[0]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})


def load_ort(path: str | os.PathLike | bytes, backend: str = "cpu", precision: str = "fp32",
             allow_fallback: bool = False, threads: int | None = None) -> OrtEncoder:
    """Open ``path`` (or serialized model bytes) on ``backend`` (cpu|cuda|tensorrt).

    Raises BackendError if another provider ends up running it, unless ``allow_fallback``
    (then a RuntimeWarning, and ``.backend`` names the provider really used).
    """
    ort = import_ort()
    if backend not in BACKENDS:
        raise BackendError(f"unknown ONNX Runtime backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    wanted = BACKENDS[backend]
    providers = [wanted] if backend == "cpu" else [_with_options(wanted, path), "CPUExecutionProvider"]
    if wanted not in ort.get_available_providers():
        raise BackendError(f"backend {backend!r}: onnxruntime {ort.__version__} has no {wanted} "
                           f"(install the [gpu] extra for cuda/tensorrt; `coder doctor` shows what loads)")
    name = "<in-memory model>" if isinstance(path, bytes) else Path(path).name
    try:
        source = path if isinstance(path, bytes) else str(path)
        sess = ort.InferenceSession(source, sess_options=session_options(precision, threads), providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BackendError(f"backend {backend!r} could not load {name}: {str(e).splitlines()[0][:200]}") from None
    used = sess.get_providers()
    if used[0] != wanted:
        msg = f"backend {backend!r} requested but ONNX Runtime runs {name} on {used[0]}"
        if not allow_fallback:
            raise BackendError(msg + "; fix the CUDA/TensorRT install (`coder doctor`) or pass --allow-fallback")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        backend = next((k for k, v in BACKENDS.items() if v == used[0]), used[0])
    inp = sess.get_inputs()[0]
    return OrtEncoder(Path(name if isinstance(path, bytes) else path), backend, used, sess, inp.name, inp.type)


def _with_options(provider: str, path):
    """The TensorRT provider builds an engine at every session start unless told to cache it.

    Engines and timing cache go to ``<model dir>/engines/ort-trt`` (ONNX Runtime keys them by
    model and GPU itself); precision comes from the graph, as for native engines.
    """
    if provider != BACKENDS["tensorrt"] or isinstance(path, bytes):
        return provider
    cache = str(Path(path).parent / "engines" / "ort-trt")
    return (provider, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
                       "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache})


def probe_providers() -> dict[str, str]:
    """Try each ORT backend on a 1-node model; ``{"cpu": "ok", "cuda": "<why not>", ...}``."""
    try:
        ort = import_ort()
    except BackendError as e:
        return {name: str(e) for name in BACKENDS}
    model = _identity_model()
    out = {}
    for name, provider in BACKENDS.items():
        if provider not in ort.get_available_providers():
            out[name] = "not in this onnxruntime build"
            continue
        try:
            sess = ort.InferenceSession(model, providers=[provider])
            used = sess.get_providers()[0]
            out[name] = "ok" if used == provider else f"falls back to {used}"
        except Exception as e:
            out[name] = str(e).splitlines()[0][:160]
    return out


def _identity_model() -> bytes:
    """A serialized 1-node ONNX model (Identity on float[1]), built without the onnx package."""
    # Hand-built protobuf: ir_version 8, opset 17, graph with one Identity node x -> y.
    def varint(n: int) -> bytes:
        b = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            b.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(b)

    def fld(num: int, wire: int, payload: bytes) -> bytes:
        key = varint((num << 3) | wire)
        return key + (varint(len(payload)) + payload if wire == 2 else payload)

    def s(num: int, text: str) -> bytes:
        return fld(num, 2, text.encode())

    dim = fld(1, 0, varint(1))
    shape = fld(1, 2, dim)
    tensor_type = fld(1, 0, varint(1)) + fld(2, 2, shape)  # elem_type FLOAT
    type_proto = fld(1, 2, tensor_type)

    def value_info(name: str) -> bytes:
        return s(1, name) + fld(2, 2, type_proto)

    node = s(1, "x") + s(2, "y") + s(4, "Identity")
    graph = fld(1, 2, node) + s(2, "probe") + fld(11, 2, value_info("x")) + fld(12, 2, value_info("y"))
    opset = s(1, "") + fld(2, 0, varint(17))
    return fld(1, 0, varint(8)) + fld(7, 2, graph) + fld(8, 2, opset)
