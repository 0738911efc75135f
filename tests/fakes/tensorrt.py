"""A strict CPU stand-in for the parts of the TensorRT 10 Python API that coder uses.
See :mod:`tests.fakes` for what it proves and what not.

An "engine" is a serialized blob: a magic, a JSON header (TensorRT version, network creation flags,
builder flags, optimization profile, I/O tensors) and the ONNX graph, executed with ONNX Runtime on
the CPU. The API surface follows TensorRT 10 (``build_serialized_network``, ``set_memory_pool_limit``,
``IProgressMonitor``, ``create_timing_cache``/``set_timing_cache``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3(stream_handle)``, ``OnnxParser.parse(model, path)`` and
``parse_from_file``, ``volume``); names TensorRT 10 removed raise ``AttributeError`` saying so, and so
does setting any attribute the real objects do not have.

Faithful both ways: what the real API accepts is accepted (a ``cudaStream_t`` or an int for the stream),
and what the real API reports is reported: ``execute_async_v3`` only enqueues (the outputs land at
``cudaStreamSynchronize``); ``parse`` of a model whose weights are external data fails without the
model's path; ``set_timing_cache`` returns False for a cache from another TensorRT version or GPU;
``create_execution_context`` returns None when :attr:`FakeTensorRT.context_fails` (out of device memory).
"""

from __future__ import annotations

import enum
import json
import struct
import types
from pathlib import Path

import numpy as np

MAGIC = b"FAKETRT\x00"
REMOVED = {
    "build_engine": "removed in TensorRT 10: use Builder.build_serialized_network",
    "build_cuda_engine": "removed in TensorRT 8: use Builder.build_serialized_network",
    "max_workspace_size": "removed in TensorRT 10: use set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)",
    "max_batch_size": "removed in TensorRT 10 (explicit batch only)",
    "execute_async_v2": "removed in TensorRT 10: use set_tensor_address + execute_async_v3",
    "execute_async": "removed in TensorRT 10: use execute_async_v3",
    "execute": "removed in TensorRT 10: use execute_v2 or execute_async_v3",
    "num_bindings": "removed in TensorRT 10: use num_io_tensors",
    "get_binding_index": "removed in TensorRT 10: use tensor names",
    "get_binding_shape": "removed in TensorRT 10: use get_tensor_shape",
    "get_binding_dtype": "removed in TensorRT 10: use get_tensor_dtype",
    "binding_is_input": "removed in TensorRT 10: use get_tensor_mode",
    "set_binding_shape": "removed in TensorRT 10: use set_input_shape",
    "get_binding_name": "removed in TensorRT 10: use get_tensor_name",
    "destroy": "removed in TensorRT 10: objects are freed when released (del)",
}


class _Strict:
    """Unknown reads raise (naming TensorRT 10's replacement); so do writes of attributes the API lacks."""

    _settable: frozenset = frozenset()

    def __getattr__(self, name):  # only reached when normal lookup failed
        why = REMOVED.get(name, "not part of the TensorRT 10 Python API (or not used by coder)")
        raise AttributeError(f"{type(self).__name__}.{name}: {why}")

    def __setattr__(self, name, value):
        if name.startswith("_") or name in self._settable:
            object.__setattr__(self, name, value)
            return
        why = REMOVED.get(name, "no such attribute in the TensorRT 10 Python API")
        raise AttributeError(f"cannot set {type(self).__name__}.{name}: {why}")


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
              2: DataType.UINT8, 7: DataType.INT64, 16: DataType.BF16}


def nptype(dtype: DataType):
    if DataType(dtype) not in _NP:
        raise TypeError(f"no numpy type for {dtype}")
    return _NP[DataType(dtype)]


def volume(iterable) -> int:
    """The product of the dimensions (1 for an empty shape), as ``tensorrt.volume``."""
    out = 1
    for d in iterable:
        out *= int(d)
    return out


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0  # deprecated and ignored in TensorRT 10
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    REFIT = 5
    TF32 = 7
    FP8 = 14
    BF16 = 18


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class Logger(_Strict):
    Severity = _Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(_Severity)
    _settable = frozenset({"min_severity"})

    def __init__(self, min_severity: _Severity = _Severity.WARNING):
        self.min_severity = _Severity(min_severity)
        self._messages: list[tuple[_Severity, str]] = []

    def log(self, severity, msg: str) -> None:
        self._messages.append((_Severity(severity), msg))


class IProgressMonitor:
    """Base class; subclasses call ``IProgressMonitor.__init__(self)`` and override the three methods."""

    def __init__(self):
        self._initialised = True

    def phase_start(self, phase_name, parent_phase, num_steps):
        raise NotImplementedError

    def step_complete(self, phase_name, step) -> bool:
        raise NotImplementedError

    def phase_finish(self, phase_name):
        raise NotImplementedError


class IHostMemory(_Strict):
    def __init__(self, data: bytes):
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8


class ITensor(_Strict):
    def __init__(self, name: str, shape: tuple, dtype: DataType):
        self._name, self._shape, self._dtype = name, tuple(shape), dtype

    name = property(lambda self: self._name)
    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._dtype)


class INetworkDefinition(_Strict):
    def __init__(self, flags: int):
        self._flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._onnx: bytes | None = None

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    def get_flag(self, flag: NetworkDefinitionCreationFlag) -> bool:
        return bool(self._flags & (1 << int(flag)))


class IParserError(_Strict):
    def __init__(self, desc: str):
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc


class OnnxParser(_Strict):
    def __init__(self, network: INetworkDefinition, logger: Logger):
        if not isinstance(network, INetworkDefinition) or not isinstance(logger, Logger):
            raise TypeError("OnnxParser(network: INetworkDefinition, logger: ILogger)")
        self._network, self._errors = network, []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> IParserError:
        return self._errors[index]

    def parse(self, model, path: str | None = None) -> bool:
        """``path``: the model file, needed (as in TensorRT) to find weights stored as external data."""
        import os

        import onnx
        from onnx.external_data_helper import _get_all_tensors, load_external_data_for_model, uses_external_data

        try:
            # No onnx.checker: like onnx-tensorrt (which sorts nodes itself), accept unsorted graphs.
            proto = onnx.load_model_from_string(bytes(model))
            if not proto.graph.input or not proto.graph.node:
                raise ValueError("graph has no inputs or nodes")
            if any(uses_external_data(t) for t in _get_all_tensors(proto)):
                if path is None:
                    raise ValueError("weights are external data: parse(model, path) or parse_from_file(path) "
                                     "must give the model's path")
                load_external_data_for_model(proto, os.path.dirname(os.path.abspath(path)))
            data = proto.SerializeToString()
        except Exception as e:  # the real parser reports, never raises
            self._errors.append(IParserError(f"ONNX parse failed: {str(e).splitlines()[0]}"))
            return False
        quant = _quantization_error(proto)
        if quant:
            self._errors.append(IParserError(quant))
            return False
        net = self._network
        net._onnx = data
        net._inputs = [_tensor(v) for v in proto.graph.input]
        net._outputs = [_tensor(v) for v in proto.graph.output]
        return True

    def parse_from_file(self, model: str) -> bool:
        if not isinstance(model, str):
            raise TypeError("parse_from_file(model: str)")
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as e:
            self._errors.append(IParserError(f"cannot read {model}: {e}"))
            return False
        return self.parse(data, model)


def _quantization_error(proto) -> str | None:
    """onnx-tensorrt's Q/DQ rules: INT8 quantization is symmetric only (every zero point 0, type int8), and
    dequantized constants are INT8 (no INT32 bias dequantization)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        x = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if x is not None and x.data_type != TensorProto.INT8:
            return f"{node.name}: DequantizeLinear of {TensorProto.DataType.Name(x.data_type)} (TensorRT: INT8 only)"
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            return f"{node.name}: the zero point must be an initializer"
        if zp.data_type != TensorProto.INT8 or numpy_helper.to_array(zp).any():
            return (f"{node.name}: TensorRT only supports symmetric INT8 quantization; the zero point of "
                    "QuantizeLinear/DequantizeLinear must be all zeros of type INT8")
    return None


def _tensor(value_info) -> ITensor:
    t = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return ITensor(value_info.name, shape, _FROM_ONNX[t.elem_type])


class IOptimizationProfile(_Strict):
    def __init__(self):
        self._shapes: dict[str, tuple[tuple, tuple, tuple]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:
        lo, mid, hi = (tuple(int(v) for v in s) for s in (min, opt, max))
        if not (len(lo) == len(mid) == len(hi)) or any(not a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self._shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str) -> list[tuple]:
        return list(self._shapes.get(input, ()))


class ITimingCache(_Strict):
    """Tactic timings of one TensorRT version on one GPU (``target``)."""

    def __init__(self, entries: dict, target: list | None = None):
        self._entries = dict(entries)
        self._target = list(target) if target is not None else STATE.target()

    def serialize(self) -> IHostMemory:
        return IHostMemory(b"FAKETC\x00\x00" + json.dumps({"target": self._target, "entries": self._entries}).encode())

    def combine(self, input_cache: "ITimingCache", ignore_mismatch: bool) -> bool:
        self._entries.update(input_cache._entries)
        return True

    def reset(self) -> bool:
        self._entries.clear()
        return True


class IBuilderConfig(_Strict):
    _settable = frozenset({"progress_monitor", "builder_optimization_level", "profiling_verbosity"})

    def __init__(self):
        self.progress_monitor = None
        self.builder_optimization_level = 3
        self.profiling_verbosity = 0
        self._pools: dict[MemoryPoolType, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._flags: set[BuilderFlag] = set()
        self._cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        if not isinstance(pool, MemoryPoolType) or not isinstance(pool_size, int) or pool_size < 0:
            raise TypeError("set_memory_pool_limit(pool: MemoryPoolType, pool_size: int)")
        self._pools[pool] = pool_size

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self._pools.get(pool, 8 << 30)

    def set_flag(self, flag: BuilderFlag) -> None:
        self._flags.add(BuilderFlag(flag))

    def clear_flag(self, flag: BuilderFlag) -> None:
        self._flags.discard(BuilderFlag(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return BuilderFlag(flag) in self._flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile._shapes:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    num_optimization_profiles = property(lambda self: len(self._profiles))

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
        data = bytes(serialized_timing_cache)
        if data.startswith(b"FAKETC\x00\x00"):
            blob = json.loads(data[8:])
            return ITimingCache(blob["entries"], blob["target"])
        return ITimingCache({})

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        """False (cache not attached) for a cache of another TensorRT version or GPU, unless ``ignore_mismatch``."""
        if not isinstance(cache, ITimingCache) or not isinstance(ignore_mismatch, bool):
            raise TypeError("set_timing_cache(cache: ITimingCache, ignore_mismatch: bool)")
        if cache._target != STATE.target() and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._cache


class Builder(_Strict):
    def __init__(self, logger: Logger):
        if not isinstance(logger, Logger):
            raise TypeError("Builder(logger: ILogger)")
        self._logger = logger
        self._state = STATE

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        if not isinstance(flags, int):
            raise TypeError("create_network(flags: int), a bit mask of 1 << NetworkDefinitionCreationFlag")
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        err = _build_errors(network, config)
        if err:
            self._logger.log(_Severity.ERROR, err)
            return None
        monitor = config.progress_monitor
        steps = self._state.build_steps
        if monitor is not None:
            if not getattr(monitor, "_initialised", False):
                raise TypeError("IProgressMonitor subclass must call IProgressMonitor.__init__(self)")
            monitor.phase_start("Building engine", None, steps)
        for step in range(steps):
            self._state.on_build_step(step)
            if monitor is not None and not monitor.step_complete("Building engine", step):
                self._logger.log(_Severity.ERROR, "Build cancelled by the progress monitor")
                return None
        if monitor is not None:
            monitor.phase_finish("Building engine")
        if config._cache is not None:
            config._cache._entries[str(len(config._cache._entries))] = "tactic"
        self._state.builds += 1
        return IHostMemory(_serialize(network, config, self._state.version))


def _build_errors(network: INetworkDefinition, config: IBuilderConfig) -> str | None:
    if network._onnx is None:
        return "network is empty (parse an ONNX model first)"
    strongly_typed = network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    typed = {BuilderFlag.FP16, BuilderFlag.INT8, BuilderFlag.BF16, BuilderFlag.FP8} & config._flags
    if strongly_typed and typed:
        return f"builder flags {sorted(f.name for f in typed)} are not allowed on a strongly typed network"
    if len(config._profiles) != 1:
        return f"expected one optimization profile, got {len(config._profiles)}"
    profile = config._profiles[0]._shapes
    for t in network._inputs:
        if -1 in t.shape:
            if t.name not in profile:
                return f"dynamic input {t.name} has no optimization profile"
            for dims in profile[t.name]:
                if len(dims) != len(t.shape) or any(s != -1 and s != d for s, d in zip(t.shape, dims)):
                    return f"profile shape {dims} does not match input {t.name}{t.shape}"
    return None


def _serialize(network: INetworkDefinition, config: IBuilderConfig, version: str) -> bytes:
    io = [[t.name, list(t.shape), int(t.dtype), int(TensorIOMode.INPUT)] for t in network._inputs]
    io += [[t.name, list(t.shape), int(t.dtype), int(TensorIOMode.OUTPUT)] for t in network._outputs]
    header = {"tensorrt": version, "network_flags": network._flags,
              "builder_flags": sorted(int(f) for f in config._flags),
              "strongly_typed": network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED),
              "workspace": config._pools.get(MemoryPoolType.WORKSPACE),
              "profile": {k: [list(s) for s in v] for k, v in config._profiles[0]._shapes.items()}, "io": io}
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<Q", len(head)) + head + network._onnx


def read_blob(data: bytes) -> tuple[dict, bytes] | None:
    """(header, onnx bytes) of a fake engine, or None if ``data`` is not one."""
    if not data.startswith(MAGIC) or len(data) < 16:
        return None
    n = struct.unpack("<Q", data[8:16])[0]
    try:
        return json.loads(data[16:16 + n]), data[16 + n:]
    except ValueError:
        return None


class Runtime(_Strict):
    def __init__(self, logger: Logger):
        if not isinstance(logger, Logger):
            raise TypeError("Runtime(logger: ILogger)")
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine) -> "ICudaEngine | None":
        blob = read_blob(bytes(serialized_engine))
        if blob is None:
            self._logger.log(_Severity.ERROR, "deserializeCudaEngine: not a TensorRT plan")
            return None
        header, onnx_bytes = blob
        if header["tensorrt"] != STATE.version:
            self._logger.log(_Severity.ERROR, f"plan built with TensorRT {header['tensorrt']}, this is {STATE.version}")
            return None
        return ICudaEngine(header, onnx_bytes)


class ICudaEngine(_Strict):
    def __init__(self, header: dict, onnx_bytes: bytes):
        self._header, self._onnx = header, onnx_bytes
        self._io = {name: (tuple(shape), DataType(dt), TensorIOMode(mode)) for name, shape, dt, mode in header["io"]}
        self._names = [row[0] for row in header["io"]]
        self._session = None

    num_io_tensors = property(lambda self: len(self._names))
    num_optimization_profiles = property(lambda self: 1)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._io[name][2] if name in self._io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._io[name][1]

    def get_tensor_shape(self, name: str) -> tuple:
        return self._io[name][0]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple]:
        if profile_index != 0 or name not in self._header["profile"]:
            raise RuntimeError(f"no profile shape for {name} in profile {profile_index}")
        return [tuple(s) for s in self._header["profile"][name]]

    def create_execution_context(self) -> "IExecutionContext | None":
        """None (as TensorRT returns when it cannot allocate the context's device memory) if ``context_fails``."""
        if STATE.context_fails:
            return None
        return IExecutionContext(self)

    def _run(self, feeds: dict) -> list[np.ndarray]:
        if self._session is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            # BASIC: ORT_ENABLE_ALL crashed on fp16 graphs with fp32 islands (PITFALLS.md)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.intra_op_num_threads = 1
            self._session = ort.InferenceSession(self._onnx, so, providers=["CPUExecutionProvider"])
        return self._session.run(None, feeds)


class IExecutionContext(_Strict):
    def __init__(self, engine: ICudaEngine):
        self._engine = engine
        self._shapes: dict[str, tuple] = {}
        self._addresses: dict[str, int] = {}

    engine = property(lambda self: self._engine)

    def set_input_shape(self, name: str, shape) -> bool:
        """False (and nothing set) outside the optimization profile, as TensorRT does."""
        shape = tuple(int(v) for v in shape)
        if self._engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            return False
        lo, _, hi = self._engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        declared = self._engine.get_tensor_shape(name)
        if self._engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self._shapes.get(name, declared)
        batch = next(iter(self._shapes.values()), (-1,))[0]
        return tuple(batch if d == -1 else d for d in declared)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if not isinstance(memory, int) or self._engine.get_tensor_mode(name) == TensorIOMode.NONE:
            return False
        self._addresses[name] = memory
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        """ENQUEUES the inference on the stream (it runs at synchronization); checks every address and size.

        ``stream_handle``: an int or anything with ``__index__`` (a cuda-python ``cudaStream_t``), as the
        pybind11 binding accepts.
        """
        import operator

        try:
            stream_handle = operator.index(stream_handle)
        except TypeError:
            raise TypeError(f"execute_async_v3(stream_handle: int), got {type(stream_handle).__name__}") from None
        cudart = STATE.cudart
        if not cudart.live_stream(stream_handle):
            cudart.violations.append(f"execute_async_v3 on unknown stream {stream_handle!r}")
            return False
        eng = self._engine
        inputs = [n for n in eng._names if eng.get_tensor_mode(n) == TensorIOMode.INPUT]
        if any(n not in self._shapes for n in inputs) or any(n not in self._addresses for n in eng._names):
            return False
        STATE.on_execute()
        shapes, addresses = dict(self._shapes), dict(self._addresses)
        out_shapes = {n: self.get_tensor_shape(n) for n in eng._names if eng.get_tensor_mode(n) == TensorIOMode.OUTPUT}
        for n in eng._names:  # sizes are checked now: a too-small buffer is an error at enqueue
            shape = shapes[n] if n in shapes else out_shapes[n]
            cudart.buffer(addresses[n], int(np.prod(shape)) * np.dtype(nptype(eng.get_tensor_dtype(n))).itemsize)
        cudart.enqueue(stream_handle, lambda: self._compute(inputs, shapes, addresses, out_shapes))
        return True

    def _compute(self, inputs: list[str], shapes: dict, addresses: dict, out_shapes: dict) -> None:
        eng, cudart = self._engine, STATE.cudart
        feeds = {}
        for n in inputs:
            dtype = nptype(eng.get_tensor_dtype(n))
            nbytes = int(np.prod(shapes[n])) * np.dtype(dtype).itemsize
            raw = cudart.buffer(addresses[n], nbytes)[:nbytes]
            feeds[n] = raw.view(dtype).reshape(shapes[n]).copy()
        outs = eng._run(feeds)
        for n, arr in zip(list(out_shapes), outs):
            arr = np.ascontiguousarray(STATE.corrupt(n, arr), nptype(eng.get_tensor_dtype(n)))
            if tuple(arr.shape) != out_shapes[n]:
                raise RuntimeError(f"fake: output {n} shape {arr.shape} != {out_shapes[n]}")
            cudart.buffer(addresses[n], arr.nbytes)[:arr.nbytes] = arr.reshape(-1).view(np.uint8)


class FakeTensorRT:
    """Knobs and counters of the fake: version, build steps, fault injection."""

    def __init__(self, cudart, version: str = "10.3.0"):
        self.cudart, self.version = cudart, version
        self.build_steps = 4
        self.builds = 0
        self.executions = 0
        self.corrupt_outputs: dict[str, float] = {}  # output name -> value added (a miscompiled layer)
        self.interrupt_execution_at: int | None = None  # raise KeyboardInterrupt on that call (Ctrl-C)
        self.build_step_hook = None  # called with the step number (a test sends SIGINT from here)
        self.context_fails = False  # create_execution_context() returns None (no device memory for it)

    def target(self) -> list:
        """What a timing cache is valid for: [TensorRT version, compute capability]."""
        return [self.version, f"{self.cudart.prop.major}.{self.cudart.prop.minor}"]

    def on_build_step(self, step: int) -> None:
        if self.build_step_hook is not None:
            self.build_step_hook(step)

    def on_execute(self) -> None:
        self.executions += 1
        if self.interrupt_execution_at is not None and self.executions >= self.interrupt_execution_at:
            raise KeyboardInterrupt

    def corrupt(self, name: str, arr: np.ndarray) -> np.ndarray:
        if name not in self.corrupt_outputs:
            return arr
        if arr.dtype.kind in "iu":  # a different TopK order: swap the first two candidates
            return arr[:, ::-1].copy() if arr.ndim == 2 else arr
        return arr + np.asarray(self.corrupt_outputs[name], arr.dtype)

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("tensorrt", "CPU stand-in for the TensorRT 10 Python API (tests only)")
        mod.__version__ = self.version
        for obj in (DataType, TensorIOMode, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, Logger,
                    IProgressMonitor, IHostMemory, ITensor, INetworkDefinition, OnnxParser, IOptimizationProfile,
                    ITimingCache, IBuilderConfig, Builder, Runtime, ICudaEngine, IExecutionContext):
            setattr(mod, obj.__name__, obj)
        mod.nptype, mod.volume = nptype, volume
        mod.float32, mod.float16, mod.int32, mod.int64 = DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.INT64

        def missing(name):
            raise AttributeError(f"tensorrt.{name}: " + REMOVED.get(name, "not in the TensorRT 10 API (or not faked)"))

        mod.__getattr__ = missing
        return mod


STATE: FakeTensorRT = None  # type: ignore[assignment]  (set by tests.fakes.install)
