"""ONNX Runtime backends: ``cpu``, ``cuda``, ``tensorrt`` (the ORT providers).

ONNX Runtime quietly runs on the CPU when a GPU provider fails to load, and
``get_available_providers()`` lists providers that cannot load. So after the
session exists we compare ``session.get_providers()`` with the request and
raise on any mismatch (PITFALLS.md, "ONNX Runtime").

GPU sessions list ``[TensorRT, CUDA, CPU]`` (``cuda``: ``[CUDA, CPU]``) so that nodes TensorRT
rejects go to CUDA, not the CPU. Where nodes really run is measured, not assumed: the session
is created with profiling on, runs one batch, and the profile's per-node ``provider`` gives the
placement (``session.disable_cpu_ep_fallback`` cannot be used with the CPU provider listed:
ONNX Runtime rejects that combination). Compute nodes on the CPU are an error, or with
``allow_fallback`` a warning and ``backend`` reads e.g. ``tensorrt+cpu``; shape bookkeeping ops
that ONNX Runtime places on the CPU on purpose are not counted.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BackendError, one_line
from ..store import read_json, sha256_file

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
    placement: dict = field(default_factory=dict)  # provider short name -> {op type: nodes}, GPU backends

    def close(self) -> None:
        """Nothing to free by hand: ONNX Runtime releases the session with the object."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """The first output (the embedding, for plain and fused graphs alike)."""
        return self.session.run(None, {self.input_name: x})[0]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x})


SHORT = {v: k for k, v in BACKENDS.items()}
# Shape bookkeeping ONNX Runtime puts on the CPU on purpose (GetCpuPreferredNodes): not compute.
SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Reshape",
                       "ConstantOfShape", "Range", "Expand", "Equal", "Where", "Size", "ReduceProd"})


@dataclass(frozen=True)
class TrtProfile:
    """The batch range ONNX Runtime's TensorRT provider builds for: ``TrtProfile("pixel_values", (3, 224, 224),
    1, 8, 64)`` gives ``trt_profile_min_shapes="pixel_values:1x3x224x224"`` (and opt 8, max 64)."""

    input_name: str
    shape: tuple[int, ...]
    min_batch: int
    opt_batch: int
    max_batch: int

    def shapes(self, batch: int) -> str:
        return f"{self.input_name}:" + "x".join(str(d) for d in (batch, *self.shape))


def load_ort(path: str | os.PathLike | bytes, backend: str = "cpu", precision: str = "fp32",
             allow_fallback: bool = False, threads: int | None = None, profile: TrtProfile | None = None,
             model_sha256: str | None = None) -> OrtEncoder:
    """Open ``path`` (or serialized model bytes) on ``backend`` (cpu|cuda|tensorrt).

    Raises BackendError if another provider ends up running it, or (GPU backends) compute nodes
    run on the CPU, unless ``allow_fallback`` (then a RuntimeWarning, and ``.backend`` names what
    really ran). ``profile`` sets the TensorRT provider's batch range; ``model_sha256`` (else
    hashed here) keys its engine cache.
    """
    ort = import_ort()
    if backend not in BACKENDS:
        raise BackendError(f"unknown ONNX Runtime backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    wanted = BACKENDS[backend]
    if wanted not in ort.get_available_providers():
        raise BackendError(f"backend {backend!r}: onnxruntime {ort.__version__} has no {wanted} "
                           f"(install the [gpu] extra for cuda/tensorrt; `coder doctor` shows what loads)")
    providers = provider_list(backend, path, profile, model_sha256)
    name = "<in-memory model>" if isinstance(path, bytes) else Path(path).name
    so = session_options(precision, threads)
    with tempfile.TemporaryDirectory(prefix="coder-placement-") as tmp:
        if backend != "cpu":  # one profiled run tells where every node ran
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "placement")
        try:
            source = path if isinstance(path, bytes) else str(path)
            sess = ort.InferenceSession(source, sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"backend {backend!r} could not load {name}: {one_line(e, 200)}") from None
        used = sess.get_providers()
        placement, cpu_compute = _placement(sess, profile) if backend != "cpu" else ({}, [])
    inp = sess.get_inputs()[0]
    backend = _reported_backend(backend, wanted, used, placement, cpu_compute, name, allow_fallback)
    return OrtEncoder(Path(name if isinstance(path, bytes) else path), backend, used, sess, inp.name, inp.type,
                      placement)


def provider_list(backend: str, path, profile: TrtProfile | None = None, model_sha256: str | None = None) -> list:
    """``cpu``: [CPU]; ``cuda``: [CUDA, CPU]; ``tensorrt``: [(TensorRT, options), CUDA, CPU]."""
    if backend == "cpu":
        return ["CPUExecutionProvider"]
    if backend == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [(BACKENDS["tensorrt"], trt_provider_options(path, profile, model_sha256)), "CUDAExecutionProvider",
            "CPUExecutionProvider"]


def _reported_backend(backend: str, wanted: str, used: list[str], placement: dict, cpu_compute: list[str],
                      name: str, allow_fallback: bool) -> str:
    """The backend that really ran: the requested one, or what ONNX Runtime fell back to (+cpu)."""
    msg = None
    if used[0] != wanted:
        msg = f"backend {backend!r} requested but ONNX Runtime runs {name} on {used[0]}"
        backend = SHORT.get(used[0], used[0])
    elif placement:
        ran = list(dict.fromkeys(p for p in ("tensorrt", "cuda", *placement) if p in placement and p != "cpu"))
        if cpu_compute:
            msg = f"backend {backend!r}: {name} runs compute nodes on the CPU ({', '.join(cpu_compute[:6])})"
            ran.append("cpu")
        backend = "+".join(ran) or backend
    if msg is None:
        return backend
    if not allow_fallback:
        raise BackendError(msg + "; fix the CUDA/TensorRT install (`coder doctor`), choose another --precision, "
                                 "or pass --allow-fallback")
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return backend


def _placement(sess, profile: TrtProfile | None) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Run one batch with profiling on: ``({"tensorrt": {...}, "cpu": {"Shape": 3}}, [CPU compute op types])``.

    A CPU node is bookkeeping (not compute) if its op type is in :data:`SHAPE_OPS` AND its output
    is tiny (<= 4 KiB): a Gather of pair vectors on the CPU counts as compute, a Gather of a shape does not.
    """
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    if profile is not None:
        shape = [profile.min_batch, *profile.shape]
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
             "tensor(int64)": np.int64}.get(inp.type, np.float32)
    try:
        sess.run(None, {inp.name: np.zeros(shape, dtype)})
    finally:
        events = read_json(sess.end_profiling())
    out: dict[str, dict[str, int]] = {}
    compute: set[str] = set()
    for e in events:
        args = e.get("args", {})
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or "provider" not in args:
            continue
        provider, op = SHORT.get(args["provider"], args["provider"]), args.get("op_name", "?")
        out.setdefault(provider, {})[op] = out.get(provider, {}).get(op, 0) + 1
        if provider == "cpu" and (op not in SHAPE_OPS or int(args.get("output_size", 0) or 0) > 4096):
            compute.add(op)
    return out, sorted(compute)


def tensorrt_version() -> str:
    """The TensorRT library ONNX Runtime's TensorRT provider would load ("unknown" if none is found)."""
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        import ctypes
        import ctypes.util

        lib = ctypes.CDLL(ctypes.util.find_library("nvinfer") or "libnvinfer.so")
        v = int(lib.getInferLibVersion())  # major*10000 + minor*100 + patch (TensorRT >= 10)
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    except (OSError, AttributeError, TypeError):
        return "unknown"


def trt_cache_key(path, model_sha256: str | None = None) -> str:
    """``image_encoder.fp16-<sha256[:16]>-ort1.32.0-trt10.3.0``: the model's bytes and both library versions."""
    import onnxruntime as ort

    sha = model_sha256 or sha256_file(path)
    return f"{Path(path).stem}-{sha[:16]}-ort{ort.__version__}-trt{tensorrt_version()}"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/coder`` (default ``~/.cache/coder``): where caches go when an artifact is read-only."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "coder"


def _writable_dir(path: Path) -> bool:
    """Create ``path`` with its parents; True if it is then a directory this process can write into."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def trt_cache_dir(path, model_sha256: str | None = None) -> Path | None:
    """The TensorRT provider's engine/timing cache folder for model ``path``, CREATED (with parents).

    ``<model dir>/engines/ort-trt/<key>/`` (:func:`trt_cache_key`); on a read-only artifact the same key
    under :func:`user_cache_dir` (``~/.cache/coder/ort-trt/<key>/``). ONNX Runtime creates only the last
    level of a missing cache path and otherwise fails the TensorRT provider, so the folder must exist
    before the session. None (with a warning) when neither can be created: the provider then runs
    without an engine cache and rebuilds its engines in every process.
    """
    key = trt_cache_key(path, model_sha256)
    tried = [Path(path).parent / "engines" / "ort-trt" / key, user_cache_dir() / "ort-trt" / key]
    for cache in tried:
        if _writable_dir(cache):
            return cache
    warnings.warn(f"no writable TensorRT engine cache folder ({' or '.join(map(str, tried))}); the TensorRT "
                  f"provider rebuilds its engines in every process", RuntimeWarning, stacklevel=3)
    return None


def trt_provider_options(path, profile: TrtProfile | None = None, model_sha256: str | None = None) -> dict:
    """TensorRT provider options: engine cache keyed by the model's sha256 + ORT and TensorRT versions.

    ONNX Runtime names cached engines after the model file name, input/initializer names and node
    outputs, NOT the weights: re-exported weights or a rebuilt bank under the same names would
    reuse the old engine. So the cache lives in a directory named after the model's bytes:
    ``<model dir>/engines/ort-trt/image_encoder.fp16-<sha16>-ort1.32.0-trt10.3.0/`` (created here;
    :func:`trt_cache_dir`). With ``profile`` the engine covers the artifact's whole batch range (no
    rebuild mid-run). No precision flag (``trt_fp16_enable``, ``trt_int8_enable``): the graph's own
    types decide, so the fp32 LayerNorm islands of the fp16 graph stay fp32.
    """
    opts: dict[str, str] = {}
    cache = None if isinstance(path, bytes) else trt_cache_dir(path, model_sha256)
    if cache is not None:
        opts.update({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                     "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)})
    if profile is not None:
        opts.update({"trt_profile_min_shapes": profile.shapes(profile.min_batch),
                     "trt_profile_opt_shapes": profile.shapes(profile.opt_batch),
                     "trt_profile_max_shapes": profile.shapes(profile.max_batch)})
    return opts


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
            out[name] = one_line(e, 160)
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
