"""Native TensorRT engines (the ``[trt]`` extra: ``tensorrt`` + ``cuda-python``; no torch).

Precision comes from the graph, not builder flags: the fp16 ONNX (LayerNorm/Softmax kept in
fp32) is built as a STRONGLY_TYPED network, the one path that serves TensorRT 10.x (Jetson,
JetPack 6: 10.3) and 11.x (no FP16/INT8 builder flags). Engines are written atomically; their
sidecar key and validation record (:mod:`coder.engines.trt_key`) are compared before
deserialising. Building AND validating is :mod:`coder.runtime.engine_build` (it needs the
runtime's reference path); this module only builds, names, checks and runs engine files.

Needs a CUDA GPU; every entry point raises :class:`~coder.errors.BackendError` without one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BackendError, StaleEngineError, one_line
from ..store import atomic_path, critical, read_json, requested, sha256_file
from .trt_key import check_key, check_validated, engine_key, sidecar

SHA_CHARS = 12  # sha256 prefix in engine file names: enough to tell artifacts apart, short to read


def _import_trt():
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a broken CUDA library underneath
        raise BackendError(f"TensorRT unavailable ({one_line(e, 120)}); pip install 'coder[trt]'") from None
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
    """cuda-python returns ``(err, *values)``: raise on an error, else the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA call failed: {err}")
    return None if not rest else rest[0] if len(rest) == 1 else rest


@dataclass(frozen=True)
class EngineTarget:
    """What an engine is compiled for: ``EngineTarget("10.3.0", "8.7", "Orin")``."""

    tensorrt: str
    compute_capability: str
    gpu: str = ""


def gpu_identity(device: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of ``device``."""
    cudart = _cudart()
    prop = _check(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return name, f"{prop.major}.{prop.minor}"


def current_target() -> EngineTarget:
    """This machine's TensorRT version and GPU; BackendError without TensorRT, cuda-python or a GPU."""
    trt = _import_trt()
    name, cc = gpu_identity()
    return EngineTarget(trt.__version__, cc, name)


def require_trt() -> str:
    """TensorRT version if TensorRT, cuda-python and a CUDA GPU are all usable; else BackendError."""
    return current_target().tensorrt


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mb: int = 4096
    timing_cache: Path | None = None


def expected_key(onnx_path: Path, opts: BuildOptions) -> dict:
    target = current_target()
    return engine_key(sha256_file(onnx_path), opts.precision, (opts.min_batch, opts.opt_batch, opts.max_batch),
                      target.tensorrt, target.gpu, target.compute_capability,
                      {"workspace_mb": opts.workspace_mb, "strongly_typed": True})


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
            return bool(report(f"{phase_name}: step {step}"))  # False cancels the build (Ctrl-C)

        def phase_finish(self, phase_name):
            report(f"{phase_name} done")

    return Monitor()


def build_engine_trt(onnx_path: Path, out_path: Path, opts: BuildOptions,
                     report: Callable[[str], bool] = lambda msg: True) -> dict:
    """Parse ``onnx_path`` as a strongly typed network, write the plan to ``out_path``; returns its key.

    Writes no sidecar: an engine becomes loadable only once validated
    (:func:`coder.runtime.engine_build.build_image_engine` writes key + validation).
    """
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # From the file, not its bytes: the parser finds external-data weights (> 2 GB, fused graphs) beside it.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    name = network.get_input(0).name
    shape = tuple(network.get_input(0).shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (opts.min_batch, *shape), (opts.opt_batch, *shape), (opts.max_batch, *shape))
    if config.add_optimization_profile(profile) < 0:
        raise BackendError(f"TensorRT rejected the batch profile {opts.min_batch}/{opts.opt_batch}/{opts.max_batch}")
    cache_bytes = opts.timing_cache.read_bytes() if opts.timing_cache and opts.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise BackendError(f"timing cache {opts.timing_cache} is from another TensorRT/GPU: delete it and rebuild")
    # The one signal policy (coder.store.signals): SIGINT/SIGTERM during the build are held, the progress
    # monitor sees them and returns False so TensorRT stops between steps, and the end of the block raises
    # Interrupted (exit 130/143) with nothing written.
    with critical():
        # Held in a local while building: TensorRT keeps only a reference the Python side must keep alive.
        monitor = _progress_monitor(trt, lambda msg: report(msg) is not False and requested() is None)
        config.progress_monitor = monitor
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT build of {onnx_path} failed (see the TensorRT log above)")
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(bytes(plan))
    if opts.timing_cache:
        with atomic_path(opts.timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    return expected_key(onnx_path, opts)


@dataclass
class TrtEncoder:
    """A deserialised engine, one CUDA stream and device buffers grown on demand.

    ``run``/``run_all`` take (B,3,H,W) numpy (converted to the engine's input dtype: float32 for the
    fp32, fp16 and int8 graphs coder exports) and return numpy, outputs in ``output_names``
    order (the ONNX graph's order for fused graphs: :data:`coder.engines.head_graph.OUTPUTS`).
    The stream is created once; ``close()`` (or leaving a ``with`` block) destroys it and frees
    every device buffer. Not thread-safe (one execution context): give each thread its own.

    >>> with open_engine(Path("image_encoder.fp16.e1a2b3c4d5e6f.trt10.3.0.sm87.engine")) as enc:  # doctest: +SKIP
    ...     enc.run(pixels).shape          # (B, D) float32, B <= enc.max_batch
    """

    path: Path
    engine: object = field(repr=False)
    context: object = field(repr=False)
    input_name: str
    output_names: list[str]
    max_batch: int
    backend: str = "tensorrt-native"
    providers: list[str] = field(default_factory=lambda: ["TensorRT"])
    _stream: object = field(default=None, repr=False)
    _buffers: dict = field(default_factory=dict, repr=False)  # name -> (device pointer, bytes)
    _owners: tuple = field(default=(), repr=False)  # logger and runtime: must outlive the engine

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[0]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        trt, cudart = _import_trt(), _cudart()
        if self.context is None:
            raise BackendError(f"engine {self.path.name} was closed")
        x = np.ascontiguousarray(x, dtype=trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        if not 1 <= len(x) <= self.max_batch:
            raise BackendError(f"batch {len(x)} outside the engine profile's 1..{self.max_batch}")
        if not self.context.set_input_shape(self.input_name, x.shape):
            raise BackendError(f"engine {self.path.name} rejects input shape {x.shape}")
        if self._stream is None:
            self._stream = _check(cudart.cudaStreamCreate())
        stream = self._stream
        outs = [np.empty(tuple(self.context.get_tensor_shape(n)), trt.nptype(self.engine.get_tensor_dtype(n)))
                for n in self.output_names]
        kind = cudart.cudaMemcpyKind
        d_in = self._device(self.input_name, x.nbytes)
        # Host buffers are passed as arrays (cuda-python takes the buffer protocol): they stay alive until the sync.
        _check(cudart.cudaMemcpyAsync(d_in, x, x.nbytes, kind.cudaMemcpyHostToDevice, stream))
        for name, ptr in [(self.input_name, d_in)] + [(n, self._device(n, max(o.nbytes, 1)))
                                                      for n, o in zip(self.output_names, outs)]:
            if not self.context.set_tensor_address(name, ptr):
                raise BackendError(f"engine {self.path.name} has no tensor {name!r}")
        if not self.context.execute_async_v3(int(stream)):
            raise BackendError(f"TensorRT could not enqueue engine {self.path.name}")
        for name, out in zip(self.output_names, outs):
            _check(cudart.cudaMemcpyAsync(out, self._buffers[name][0], out.nbytes, kind.cudaMemcpyDeviceToHost,
                                          stream))
        _check(cudart.cudaStreamSynchronize(stream))  # the host arrays are complete only after this
        return outs

    def _device(self, name: str, nbytes: int) -> int:
        """Device pointer for tensor ``name`` with room for ``nbytes`` (grown, never shrunk)."""
        cudart = _cudart()
        ptr, size = self._buffers.get(name, (None, 0))
        if size < nbytes:
            if ptr is not None:
                del self._buffers[name]
                _check(cudart.cudaFree(ptr))
            self._buffers[name] = (_check(cudart.cudaMalloc(nbytes)), nbytes)
        return self._buffers[name][0]

    def close(self) -> None:
        """Free every device buffer and destroy the stream (idempotent); the encoder is unusable after."""
        if self.context is None:
            return
        cudart = _cudart()
        errors = []
        if self._stream is not None:
            errors.append(int(cudart.cudaStreamSynchronize(self._stream)[0]))
        for ptr, _ in self._buffers.values():
            errors.append(int(cudart.cudaFree(ptr)[0]))
        self._buffers.clear()
        if self._stream is not None:
            errors.append(int(cudart.cudaStreamDestroy(self._stream)[0]))
            self._stream = None
        self.context = self.engine = None  # TensorRT 10 frees them when released: context first
        self._owners = ()
        if any(errors):
            raise BackendError(f"CUDA errors while freeing engine {self.path.name}: {[e for e in errors if e]}")

    def __enter__(self) -> "TrtEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_engine(engine_path: Path, max_batch: int | None = None) -> TrtEncoder:
    """Deserialise ``engine_path`` WITHOUT checking key or validation (validation itself uses this)."""
    from .head_graph import OUTPUTS

    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise StaleEngineError(f"TensorRT could not deserialise {engine_path}; rebuild it (--rebuild-stale)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if sorted(outputs) == sorted(OUTPUTS):
        outputs = list(OUTPUTS)
    profile_max = int(engine.get_tensor_profile_shape(inputs[0], 0)[2][0])
    context = engine.create_execution_context()
    if context is None:  # TensorRT reports failure (e.g. no device memory for the context) by returning None
        raise BackendError(f"TensorRT could not create an execution context for {engine_path.name} "
                           f"(out of GPU memory? see the TensorRT log above)")
    return TrtEncoder(engine_path, engine, context, inputs[0], outputs,
                      min(profile_max, max_batch or profile_max), _owners=(logger, runtime))


def load_engine_trt(engine_path: Path, onnx_path: Path, precision: str) -> TrtEncoder:
    """Check the key and the validation record, then deserialise; a stale or unvalidated engine raises.

    >>> enc = load_engine_trt(engine_path(art, "fp16"), art.encoder("image", "fp16"), "fp16")  # doctest: +SKIP
    >>> enc.run(pixels).shape           # (B, D) float32 raw embeddings, B <= enc.max_batch
    """
    opts = options_from_key(engine_path, precision)
    found = check_key(engine_path, expected_key(onnx_path, opts))
    check_validated(engine_path, found)
    return open_engine(engine_path, opts.max_batch)


def default_engine_dir(artifact_root: Path) -> Path:
    """``$CODER_ENGINE_DIR`` (robots keep engines on a data partition), else ``<artifact>/engines``."""
    return Path(os.environ.get("CODER_ENGINE_DIR", artifact_root / "engines"))


def engine_stem(art, precision: str, bank=None, k: int = 5) -> str:
    """The artifact part of an engine's name: encoder sha, and with a fused head the bank sha and k.

    ``image_encoder.fp16.e1a2b3c4d5e6f`` or ``image_head.cifar10.b0f9e8d7c6b5a.fp16.k5.e1a2b3c4d5e6f``.
    """
    from ..manifest import encoder_filename
    from .head_graph import clamp_k

    # int8: the export's TensorRT QDQ file (symmetric), not the CPU one
    name = art.encoder_name("image", precision, "tensorrt") if precision == "int8" else \
        encoder_filename("image", precision)
    enc = art.manifest["files"][name]["sha256"][:SHA_CHARS]
    if bank is None:
        return f"image_encoder.{precision}.e{enc}"
    bank_sha = bank.meta["npz_sha256"][:SHA_CHARS]
    return f"image_head.{bank.root.name}.b{bank_sha}.{precision}.k{clamp_k(k, len(bank.class_names))}.e{enc}"


def engine_filename(stem: str, target: EngineTarget) -> str:
    """``<stem>.trt10.3.0.sm87.engine``: one TensorRT version, one GPU architecture."""
    return f"{stem}.trt{target.tensorrt}.sm{target.compute_capability.replace('.', '')}.engine"


def engine_path(art, precision: str, engine_dir=None, bank=None, k: int = 5,
                target: EngineTarget | None = None) -> Path:
    """Where the engine for (artifact encoder, precision, optional fused bank and k, TensorRT, GPU) lives."""
    directory = Path(engine_dir) if engine_dir else default_engine_dir(Path(art.root))
    return directory / engine_filename(engine_stem(art, precision, bank, k), target or current_target())


def find_engine(art, precision: str, engine_dir=None, bank=None, k: int = 5) -> Path | None:
    """The engine for this machine, None if none was built for this artifact; StaleEngineError if only
    engines for another TensorRT version or GPU exist (``--backend auto`` must not skip those silently).
    """
    directory = Path(engine_dir) if engine_dir else default_engine_dir(Path(art.root))
    stem = engine_stem(art, precision, bank, k)
    others = sorted(p.name for p in directory.glob(f"{stem}.trt*.engine")) if directory.is_dir() else []
    if not others:
        return None
    path = engine_path(art, precision, engine_dir, bank, k)
    if path.is_file():
        return path
    raise StaleEngineError(f"engine(s) {', '.join(others)} were built for another TensorRT version or GPU "
                           f"(this machine: {path.name}); rebuild: coder build-engine {art.root}")
