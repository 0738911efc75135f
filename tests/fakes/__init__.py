"""CPU stand-ins for TensorRT 10's Python API and cuda-python's cudart: TESTS ONLY, never a backend.

What this proves: that coder USES the APIs correctly: the TensorRT 10 calls and their argument
types (strongly typed networks, one optimization profile, ``set_memory_pool_limit``, a progress
monitor that can cancel, ``set_input_shape`` within the profile, ``set_tensor_address`` +
``execute_async_v3(stream)``), cuda-python's ``(err, value)`` tuples and copy kinds, one stream per
encoder, every device buffer freed on ``close()``, no use after free, no copy of the wrong size, the
stream synchronized before host outputs are read (async copies and inference complete only at
``cudaStreamSynchronize``), the model path given to the parser (external-data weights), and the
return values TensorRT uses to report failure (``set_timing_cache`` False, no execution context).
It is faithful both ways: what the real bindings accept (a stream object or an int, numpy arrays as
host buffers, ``parse_from_file``, ``volume``) is accepted, so valid code passes.
The fake "engine" runs the ONNX graph it was built from with ONNX Runtime on the CPU.

What it does NOT prove: anything about TensorRT's numerics, its kernel/tactic choices, which ONNX
ops its parser accepts, its memory use or speed, or CUDA's timing (work here runs in order at the
synchronization, never concurrently). Those are only checked on a real GPU (``benchmarks/gpu_check.sh``).

>>> gpu = install(monkeypatch)          # in a fixture: tensorrt + cuda.bindings.runtime are the fakes
>>> gpu.cudart.allocs, gpu.cudart.streams_created, gpu.trt.builds
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass

from . import cudart as _cudart
from . import tensorrt as _tensorrt


@dataclass
class FakeGpu:
    trt: _tensorrt.FakeTensorRT
    cudart: _cudart.FakeCudart


def install(monkeypatch, version: str = "10.3.0", compute_capability: tuple[int, int] = (8, 7)) -> FakeGpu:
    """Put the fakes in ``sys.modules`` as ``tensorrt``, ``cuda``, ``cuda.bindings``, ``cuda.bindings.runtime``."""
    cudart = _cudart.FakeCudart(major=compute_capability[0], minor=compute_capability[1])
    trt = _tensorrt.FakeTensorRT(cudart, version)
    monkeypatch.setattr(_tensorrt, "STATE", trt)
    runtime = cudart.module()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, runtime
    for name, mod in (("tensorrt", trt.module()), ("cuda", cuda), ("cuda.bindings", bindings),
                      ("cuda.bindings.runtime", runtime)):
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec works on it
        monkeypatch.setitem(sys.modules, name, mod)
    return FakeGpu(trt, cudart)
