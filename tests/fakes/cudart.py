"""A strict CPU stand-in for the parts of cuda-python's runtime bindings (``cuda.bindings.runtime``,
formerly ``cuda.cudart``) that coder uses. See :mod:`tests.fakes` for what it proves and what not.

Every call returns a tuple whose first item is a ``cudaError_t``, as cuda-python does:
``cudaMalloc(n) -> (err, ptr)``, ``cudaFree(ptr) -> (err,)``, ``cudaStreamCreate() -> (err, stream)``,
``cudaMemcpyAsync(dst, src, count, kind, stream) -> (err,)``. Arguments are taken as cuda-python takes
them: a pointer is an ``int`` or an object with the buffer protocol (a numpy array), a stream a
``cudaStream_t`` or an ``int`` handle (0: the default stream); anything else is a ``TypeError``.

Asynchrony is modelled: ``cudaMemcpyAsync`` and TensorRT's ``execute_async_v3`` only ENQUEUE work on
their stream; it runs, in order, at ``cudaStreamSynchronize`` (or ``cudaMemcpy``/``cudaFree``, which
synchronize the device as CUDA does, or ``cudaStreamDestroy``). So host output arrays read before the
stream is synchronized still hold whatever was there: a missing sync loses data here too. An array
passed as a host buffer is kept alive until its copy ran; a raw ``int`` host address must be kept alive
by the caller, as with CUDA.

Device pointers are numbered ints far above any host address, each backed by a numpy byte buffer. Misuse
(use after free, a copy larger than either side, a host pointer where a device one belongs, a destroyed
stream) returns an error code AND is appended to :attr:`FakeCudart.violations`, so a test fails even when
the caller forgets the error code.
"""

from __future__ import annotations

import ctypes
import enum
import operator
import types
from typing import Callable

import numpy as np

DEVICE_BASE = 1 << 52  # host addresses on 64-bit Linux stay below 1 << 47
DEFAULT_STREAM = 0  # cudaStreamLegacy / the NULL stream: always valid


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
    """An opaque stream handle: ``int(stream)`` (and ``operator.index``) is the handle TensorRT's
    ``execute_async_v3`` takes; ``getPtr()`` is, as in cuda-python, the HOST address where the handle
    is stored, not the handle."""

    def __init__(self, handle: int = 0):
        self._handle = int(handle)
        self._storage = ctypes.c_uint64(self._handle)

    def __int__(self) -> int:
        return self._handle

    def __index__(self) -> int:
        return self._handle

    def getPtr(self) -> int:
        return ctypes.addressof(self._storage)

    def __repr__(self) -> str:
        return f"<cudaStream_t 0x{self._handle:x}>"


def stream_handle(stream) -> int:
    """The handle of a ``cudaStream_t`` or an int, as cuda-python reads a stream argument."""
    if stream is None:
        return DEFAULT_STREAM
    try:
        return operator.index(stream)
    except TypeError:
        raise TypeError("an integer is required") from None


def host_pointer(ptr) -> tuple[int, object]:
    """(address, owner) of a pointer argument: an int, or an object with the buffer protocol."""
    if isinstance(ptr, np.ndarray):
        if not (ptr.flags.c_contiguous or ptr.flags.f_contiguous):
            raise RuntimeError("Failed to retrieve buffer through Buffer Protocol")
        return ptr.ctypes.data, ptr
    try:
        return operator.index(ptr), None
    except TypeError:
        pass
    if ptr is None:
        return 0, None
    try:
        view = memoryview(ptr)
    except TypeError:
        raise TypeError(f"Provided argument is of type {type(ptr)} but expected Type None, int or object "
                        "with Buffer Protocol") from None
    arr = np.frombuffer(view, np.uint8) if view.readonly else np.asarray(view).view(np.uint8).reshape(-1)
    return arr.ctypes.data, (view, arr)


class FakeCudart:
    """State of the fake device: live allocations, freed pointers, streams and their queued work, copy log."""

    def __init__(self, gpu_name: bytes = b"Fake GPU (numpy)", major: int = 8, minor: int = 7):
        self.prop = types.SimpleNamespace(name=gpu_name, major=major, minor=minor, totalGlobalMem=8 << 30)
        self.allocs: dict[int, np.ndarray] = {}
        self.freed: set[int] = set()
        self.streams: set[int] = set()
        self.pending: dict[int, list[Callable[[], None]]] = {}  # stream handle -> work not yet run
        self.streams_created = 0
        self.mallocs = 0
        self.syncs = 0
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
        """A created, not destroyed stream, or the default stream (0); raises TypeError on a non-stream."""
        handle = stream_handle(stream)
        return handle == DEFAULT_STREAM or handle in self.streams

    def enqueue(self, stream, work: Callable[[], None]) -> None:
        """Queue ``work`` on ``stream``: it runs at the next synchronization of that stream (or the device)."""
        self.pending.setdefault(stream_handle(stream), []).append(work)

    def _drain(self, handle: int | None = None) -> None:
        """Run the queued work of one stream (``None``: every stream), in order."""
        for h in [handle] if handle is not None else list(self.pending):
            work = self.pending.pop(h, [])
            for fn in work:
                fn()

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
        self._drain()  # cudaFree synchronizes the device first
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
        handle = stream_handle(stream)
        if handle not in self.streams:
            return self._fail(cudaError_t.cudaErrorInvalidResourceHandle, f"cudaStreamDestroy of {stream!r}")
        self._drain(handle)  # queued work still completes; the handle is gone at once
        self.streams.discard(handle)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        if not self.live_stream(stream):
            return self._fail(cudaError_t.cudaErrorInvalidResourceHandle, f"cudaStreamSynchronize of {stream!r}")
        self.syncs += 1
        self._drain(stream_handle(stream))
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpy(self, dst, src, count, kind):
        self._drain()  # synchronous: after all earlier work
        return self._copy(dst, src, count, kind, None)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if not self.live_stream(stream):
            return self._fail(cudaError_t.cudaErrorInvalidResourceHandle, f"cudaMemcpyAsync on stream {stream!r}")
        return self._copy(dst, src, count, kind, stream)

    def _copy(self, dst, src, count, kind, stream):
        """Check the arguments now (errors are returned at once); move the bytes now or, async, at sync."""
        kind = cudaMemcpyKind(kind)
        want = {cudaMemcpyKind.cudaMemcpyHostToDevice: (True, False),
                cudaMemcpyKind.cudaMemcpyDeviceToHost: (False, True)}.get(kind)
        if want is None:
            return self._fail(cudaError_t.cudaErrorInvalidMemcpyDirection, f"copy kind {kind.name} not used by coder")
        (dst_ptr, dst_owner), (src_ptr, src_owner) = host_pointer(dst), host_pointer(src)
        if (self.is_device(dst_ptr), self.is_device(src_ptr)) != want:
            return self._fail(cudaError_t.cudaErrorInvalidValue, f"{kind.name} with dst {dst_ptr!r}, src {src_ptr!r}")
        device, host, owner = (dst_ptr, src_ptr, src_owner) if want[0] else (src_ptr, dst_ptr, dst_owner)
        host_size = owner.nbytes if isinstance(owner, np.ndarray) else None
        if host_size is not None and count > host_size:
            return self._fail(cudaError_t.cudaErrorInvalidValue, f"{kind.name} of {count} bytes, host buffer "
                                                                 f"holds {host_size}")
        try:
            self.buffer(device, count)
        except RuntimeError:
            return (cudaError_t.cudaErrorInvalidValue,)

        def move(owner=owner):  # ``owner`` keeps a host array alive until the copy ran
            try:
                buf = self.buffer(device, count)
            except RuntimeError:
                return
            mem = (ctypes.c_uint8 * count).from_address(host)
            if want[0]:
                buf[:count] = np.frombuffer(mem, np.uint8)
            else:
                ctypes.memmove(mem, buf.ctypes.data, count)

        self.copies.append((kind.name, count))
        if stream is None:
            move()
        else:
            self.enqueue(stream, move)
        return (cudaError_t.cudaSuccess,)

    def module(self) -> types.ModuleType:
        """This fake as the ``cuda.bindings.runtime`` module (only these names; anything else raises)."""
        mod = types.ModuleType("cuda.bindings.runtime", "CPU stand-in for cuda-python's cudart (tests only)")
        for name in ("cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaMalloc", "cudaFree", "cudaStreamCreate",
                     "cudaStreamDestroy", "cudaStreamSynchronize", "cudaMemcpy", "cudaMemcpyAsync"):
            setattr(mod, name, getattr(self, name))
        mod.cudaError_t, mod.cudaMemcpyKind, mod.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
        return mod
