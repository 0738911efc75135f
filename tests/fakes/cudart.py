"""A strict CPU stand-in for the parts of cuda-python's runtime bindings (``cuda.bindings.runtime``,
formerly ``cuda.cudart``) that coder uses. See :mod:`tests.fakes` for what it proves and what not.

Every call returns a tuple whose first item is a ``cudaError_t``, as cuda-python does:
``cudaMalloc(n) -> (err, ptr)``, ``cudaFree(ptr) -> (err,)``, ``cudaStreamCreate() -> (err, stream)``,
``cudaMemcpyAsync(dst, src, count, kind, stream) -> (err,)``. Device pointers are numbered ints far
above any host address, each backed by a numpy byte buffer. Misuse (use after free, a copy larger than
either side, a host pointer where a device one belongs, a destroyed stream) returns an error code AND is
appended to :attr:`FakeCudart.violations`, so a test fails even when the caller forgets the error code.
"""

from __future__ import annotations

import ctypes
import enum
import types

import numpy as np

DEVICE_BASE = 1 << 52  # host addresses on 64-bit Linux stay below 1 << 47


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStream_t:
    """An opaque stream handle; ``int(stream)`` is the value TensorRT's ``execute_async_v3`` takes."""

    def __init__(self, handle: int):
        self._handle = handle

    def __int__(self) -> int:
        return self._handle

    def getPtr(self) -> int:
        return self._handle

    def __repr__(self) -> str:
        return f"<cudaStream_t 0x{self._handle:x}>"


class FakeCudart:
    """State of the fake device: live allocations, freed pointers, streams, copy log."""

    def __init__(self, gpu_name: bytes = b"Fake GPU (numpy)", major: int = 8, minor: int = 7):
        self.prop = types.SimpleNamespace(name=gpu_name, major=major, minor=minor, totalGlobalMem=8 << 30)
        self.allocs: dict[int, np.ndarray] = {}
        self.freed: set[int] = set()
        self.streams: set[int] = set()
        self.streams_created = 0
        self.mallocs = 0
        self.copies: list[tuple[str, int]] = []
        self.violations: list[str] = []
        self._next = DEVICE_BASE

    # -- bookkeeping ---------------------------------------------------------------------------
    def _fail(self, err: cudaError_t, why: str) -> tuple:
        self.violations.append(why)
        return (err,)

    def is_device(self, ptr) -> bool:
        return isinstance(ptr, int) and ptr >= DEVICE_BASE

    def buffer(self, ptr: int, nbytes: int) -> np.ndarray:
        """The live device bytes at ``ptr`` (at least ``nbytes``); raises on misuse (for the TensorRT fake)."""
        if ptr in self.freed:
            self.violations.append(f"use after free of 0x{ptr:x}")
            raise RuntimeError(f"device pointer 0x{ptr:x} was freed")
        if ptr not in self.allocs:
            self.violations.append(f"unknown device pointer {ptr!r}")
            raise RuntimeError(f"unknown device pointer {ptr!r}")
        buf = self.allocs[ptr]
        if buf.nbytes < nbytes:
            self.violations.append(f"0x{ptr:x} holds {buf.nbytes} bytes, {nbytes} used")
            raise RuntimeError(f"device buffer 0x{ptr:x} too small ({buf.nbytes} < {nbytes})")
        return buf

    def live_stream(self, stream) -> bool:
        return int(stream) in self.streams

    # -- the cudart API --------------------------------------------------------------------------
    def cudaGetDeviceCount(self):
        return (cudaError_t.cudaSuccess, 1)

    def cudaGetDeviceProperties(self, device: int):
        if device != 0:
            return (cudaError_t.cudaErrorInvalidValue, None)
        return (cudaError_t.cudaSuccess, self.prop)

    def cudaMalloc(self, size: int):
        if not isinstance(size, int) or size <= 0:
            return self._fail(cudaError_t.cudaErrorInvalidValue, f"cudaMalloc({size!r})") + (0,)
        ptr = self._next
        self._next += (size + 255) // 256 * 256 + 256
        self.allocs[ptr] = np.zeros(size, np.uint8)
        self.mallocs += 1
        return (cudaError_t.cudaSuccess, ptr)

    def cudaFree(self, ptr):
        if ptr in self.freed:
            return self._fail(cudaError_t.cudaErrorInvalidDevicePointer, f"double free of 0x{ptr:x}")
        if ptr not in self.allocs:
            return self._fail(cudaError_t.cudaErrorInvalidDevicePointer, f"cudaFree of unknown {ptr!r}")
        del self.allocs[ptr]
        self.freed.add(ptr)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self):
        self.streams_created += 1
        handle = 0x5000 + self.streams_created
        self.streams.add(handle)
        return (cudaError_t.cudaSuccess, cudaStream_t(handle))

    def cudaStreamDestroy(self, stream):
        if not isinstance(stream, cudaStream_t) or int(stream) not in self.streams:
            return self._fail(cudaError_t.cudaErrorInvalidResourceHandle, f"cudaStreamDestroy of {stream!r}")
        self.streams.discard(int(stream))
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        if not isinstance(stream, cudaStream_t) or int(stream) not in self.streams:
            return self._fail(cudaError_t.cudaErrorInvalidResourceHandle, f"cudaStreamSynchronize of {stream!r}")
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpy(self, dst, src, count, kind):
        return self._copy(dst, src, count, kind, None)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if not isinstance(stream, cudaStream_t) or int(stream) not in self.streams:
            return self._fail(cudaError_t.cudaErrorInvalidResourceHandle, f"cudaMemcpyAsync on stream {stream!r}")
        return self._copy(dst, src, count, kind, stream)

    def _copy(self, dst, src, count, kind, stream):
        kind = cudaMemcpyKind(kind)
        want = {cudaMemcpyKind.cudaMemcpyHostToDevice: (True, False),
                cudaMemcpyKind.cudaMemcpyDeviceToHost: (False, True)}.get(kind)
        if want is None:
            return self._fail(cudaError_t.cudaErrorInvalidMemcpyDirection, f"copy kind {kind.name} not used by coder")
        if (self.is_device(dst), self.is_device(src)) != want:
            return self._fail(cudaError_t.cudaErrorInvalidValue, f"{kind.name} with dst {dst!r}, src {src!r}")
        device = dst if want[0] else src
        try:
            buf = self.buffer(device, count)
        except RuntimeError:
            return (cudaError_t.cudaErrorInvalidValue,)
        host = (ctypes.c_uint8 * count).from_address(src if want[0] else dst)
        if want[0]:
            buf[:count] = np.frombuffer(host, np.uint8)
        else:
            ctypes.memmove(host, buf.ctypes.data, count)
        self.copies.append((kind.name, count))
        return (cudaError_t.cudaSuccess,)

    def module(self) -> types.ModuleType:
        """This fake as the ``cuda.bindings.runtime`` module (only these names; anything else raises)."""
        mod = types.ModuleType("cuda.bindings.runtime", "CPU stand-in for cuda-python's cudart (tests only)")
        for name in ("cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaMalloc", "cudaFree", "cudaStreamCreate",
                     "cudaStreamDestroy", "cudaStreamSynchronize", "cudaMemcpy", "cudaMemcpyAsync"):
            setattr(mod, name, getattr(self, name))
        mod.cudaError_t, mod.cudaMemcpyKind, mod.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
        return mod
