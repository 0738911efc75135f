"""Native TensorRT engines (the ``[trt]`` extra: ``tensorrt`` + ``cuda-python``; no torch).

Precision comes from the graph, not builder flags: the fp16 ONNX (LayerNorm/Softmax kept in
fp32) is built as a STRONGLY_TYPED network, the one path that serves TensorRT 10.x (Jetson,
JetPack 6: 10.3) and 11.x (no FP16/INT8 builder flags). Engines are written atomically with a
sidecar key (:mod:`coder.engines.trt_key`) that is compared before deserialising.

Needs a CUDA GPU; every entry point raises :class:`~coder.errors.BackendError` without one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BackendError, StaleEngineError
from ..fsutil import atomic_path, sha256_file
from ..fsutil import read_json
from .trt_key import check_key, engine_key, sidecar, write_key


def _import_trt():
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a broken CUDA library underneath
        raise BackendError(f"TensorRT unavailable ({str(e).splitlines()[0][:120]}); pip install 'coder[trt]'") from None
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendError("cuda-python unavailable; pip install 'coder[trt]'") from None
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA call failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of ``device``."""
    cudart = _cudart()
    prop = _check(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return name, f"{prop.major}.{prop.minor}"


def require_trt() -> str:
    """TensorRT version if TensorRT, cuda-python and a CUDA GPU are all usable; else BackendError."""
    trt = _import_trt()
    gpu_identity()
    return trt.__version__


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mb: int = 4096
    timing_cache: Path | None = None


def expected_key(onnx_path: Path, opts: BuildOptions) -> dict:
    trt = _import_trt()
    name, cc = gpu_identity()
    return engine_key(sha256_file(onnx_path), opts.precision, (opts.min_batch, opts.opt_batch, opts.max_batch),
                      trt.__version__, name, cc, {"workspace_mb": opts.workspace_mb, "strongly_typed": True})


def options_from_key(engine_path: Path, precision: str) -> BuildOptions:
    """The build options recorded in an engine's sidecar (defaults where it is missing or unreadable).

    Profile and workspace are choices made at build time, not facts that invalidate an
    engine: loading takes them from the sidecar, and a ``--rebuild-stale`` reuses them.
    """
    try:
        found = read_json(sidecar(engine_path))
        lo, opt, hi = (int(v) for v in found["profile"])
        return BuildOptions(precision, lo, opt, hi, int(found["builder"]["workspace_mb"]))
    except (OSError, ValueError, KeyError, TypeError):
        return BuildOptions(precision)


def _progress_monitor(trt, report: Callable[[str], bool]):
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            report(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return report(f"{phase_name}: step {step}")  # False cancels the build (Ctrl-C)

        def phase_finish(self, phase_name):
            report(f"{phase_name} done")

    return Monitor()


@contextlib.contextmanager
def _cancel_on_sigint():
    """While building, Ctrl-C sets a flag the progress monitor returns, so TensorRT stops between steps."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield flag.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def build_engine_trt(onnx_path: Path, engine_path: Path, opts: BuildOptions,
                     report: Callable[[str], bool] = lambda msg: True) -> dict:
    """Parse ``onnx_path`` as a strongly typed network and write ``engine_path`` + its key."""
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    name = network.get_input(0).name
    shape = tuple(network.get_input(0).shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (opts.min_batch, *shape), (opts.opt_batch, *shape), (opts.max_batch, *shape))
    config.add_optimization_profile(profile)
    cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    with _cancel_on_sigint() as cancelled:
        config.progress_monitor = _progress_monitor(trt, lambda msg: report(msg) and not cancelled())
        plan = builder.build_serialized_network(network, config)
    if cancelled():
        raise KeyboardInterrupt  # nothing was written; the CLI exits 130
    if plan is None:
        raise BackendError(f"TensorRT build of {onnx_path} failed (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(plan))
    if opts.timing_cache:
        with atomic_path(opts.timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    key = expected_key(onnx_path, opts)
    write_key(engine_path, key)
    return key


@dataclass
class TrtEncoder:
    """A deserialised engine with device buffers grown on demand; ``run``/``run_all`` take and return numpy.

    Outputs come back in ``output_names`` order: the ONNX graph's order for fused graphs
    (:data:`coder.engines.head_graph.OUTPUTS`), whatever order TensorRT lists otherwise.
    Not thread-safe (one execution context): give each thread its own.
    """

    path: Path
    engine: object = field(repr=False)
    context: object = field(repr=False)
    input_name: str
    output_names: list[str]
    max_batch: int
    backend: str = "tensorrt-native"
    providers: list[str] = field(default_factory=lambda: ["TensorRT"])
    _buffers: dict = field(default_factory=dict, repr=False)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[0]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        trt, cudart = _import_trt(), _cudart()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not 1 <= len(x) <= self.max_batch:
            raise BackendError(f"batch {len(x)} outside the engine profile's 1..{self.max_batch}")
        self.context.set_input_shape(self.input_name, x.shape)
        outs = [np.empty(tuple(self.context.get_tensor_shape(n)), trt.nptype(self.engine.get_tensor_dtype(n)))
                for n in self.output_names]
        kind = cudart.cudaMemcpyKind
        d_in = self._device(self.input_name, x.nbytes)
        _check(cudart.cudaMemcpy(d_in, x.ctypes.data, x.nbytes, kind.cudaMemcpyHostToDevice))
        self.context.set_tensor_address(self.input_name, d_in)
        for name, out in zip(self.output_names, outs):
            self.context.set_tensor_address(name, self._device(name, max(out.nbytes, 1)))
        stream = self._buffers.setdefault("stream", _check(cudart.cudaStreamCreate()))
        if not self.context.execute_async_v3(stream):
            raise BackendError("TensorRT execution failed")
        _check(cudart.cudaStreamSynchronize(stream))
        for name, out in zip(self.output_names, outs):
            _check(cudart.cudaMemcpy(out.ctypes.data, self._buffers[name], out.nbytes, kind.cudaMemcpyDeviceToHost))
        return outs

    def _device(self, name: str, nbytes: int):
        """Device pointer for tensor ``name`` with room for ``nbytes`` (grown, never shrunk)."""
        cudart = _cudart()
        if self._buffers.get(name + ":bytes", 0) < nbytes:
            if name in self._buffers:
                _check(cudart.cudaFree(self._buffers[name]))
            self._buffers[name] = _check(cudart.cudaMalloc(nbytes))
            self._buffers[name + ":bytes"] = nbytes
        return self._buffers[name]


def load_engine_trt(engine_path: Path, onnx_path: Path, precision: str, rebuild_stale: bool = False,
                    report: Callable[[str], bool] = lambda msg: True) -> TrtEncoder:
    """Check the key, then deserialise; a stale or undeserialisable engine raises (or is rebuilt).

    >>> enc = load_engine_trt(Path("engines/image_encoder.fp16.engine"), art.encoder("image", "fp16"), "fp16")
    >>> enc.run(pixels).shape           # (B, D) float32 raw embeddings, B <= enc.max_batch
    """
    from .head_graph import OUTPUTS

    trt = _import_trt()
    opts = options_from_key(engine_path, precision)
    try:
        check_key(engine_path, expected_key(onnx_path, opts))
    except StaleEngineError:
        if not rebuild_stale:
            raise
        build_engine_trt(onnx_path, engine_path, opts, report)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise StaleEngineError(f"TensorRT could not deserialise {engine_path}; rebuild it (--rebuild-stale)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if sorted(outputs) == sorted(OUTPUTS):
        outputs = list(OUTPUTS)
    return TrtEncoder(engine_path, engine, engine.create_execution_context(), inputs[0], outputs, opts.max_batch)


def default_engine_dir(artifact_root: Path) -> Path:
    """``$CODER_ENGINE_DIR`` (robots keep engines on a data partition), else ``<artifact>/engines``."""
    return Path(os.environ.get("CODER_ENGINE_DIR", artifact_root / "engines"))


def engine_path(artifact_root: Path, precision: str, engine_dir=None, bank=None, k: int = 5) -> Path:
    """Where the engine for (precision, optional fused bank, k) lives; ``k`` clamped as the head does."""
    from .head_graph import clamp_k

    directory = Path(engine_dir) if engine_dir else default_engine_dir(Path(artifact_root))
    if bank is None:
        return directory / engine_filename(precision)
    return directory / engine_filename(precision, bank.root.name, clamp_k(k, len(bank.class_names)))


def engine_filename(precision: str, bank: str | None = None, k: int | None = None) -> str:
    """``image_encoder.fp16.engine``, or ``image_head.<bank>.fp16.k5.engine`` with the CODER head fused."""
    return f"image_encoder.{precision}.engine" if bank is None else f"image_head.{bank}.{precision}.k{k}.engine"
