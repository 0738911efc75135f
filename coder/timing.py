"""Timing callables: one place for benchmarks, ``coder bench`` and ``--backend auto``.

Engines are compared in blocks, never round-robin. An ONNX Runtime session keeps its intra-op
threads spinning for a while after every run (``session.intra_op.allow_spinning``, on by default;
OpenVINO's TBB workers do the same), so on a small CPU the engine timed right after it shares the
cores with those threads. Round-robin timing measured that contention, which a deployment running
one engine never sees: on a 2-core CPU it made OpenVINO's int8 ViT-B/32 encoder look 1.9x faster than
ONNX Runtime fp32 at batch 1 when, timed in blocks, it was 3.5x (``benchmarks/bench_cpu_engines.py``).
Blocks are repeated (A..A B..B, A..A B..B) and the best block median is kept, so a load spike that hits
one block does not decide the comparison.

>>> blocks_ms({"a": lambda: sum(range(1000)), "b": lambda: sum(range(10))}, repeats=5)  # doctest: +SKIP
{'a': 0.021, 'b': 0.0011}
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np

Clock = Callable[[str, Callable[[], object]], float]


def time_call(name: str, fn: Callable[[], object]) -> float:
    """Milliseconds of one call of ``fn`` (``name`` is for clocks that need it, e.g. test stand-ins)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def timings_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> np.ndarray:
    """``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones, in milliseconds."""
    for _ in range(warmup):
        fn()
    return np.array([time_call("", fn) for _ in range(repeats)])


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """The median of :func:`timings_ms`."""
    return float(np.median(timings_ms(fn, repeats, warmup)))


def blocks_ms(fns: Mapping[str, Callable[[], object]], repeats: int, rounds: int = 2, warmup: int = 2,
              clock: Clock = time_call) -> dict[str, float]:
    """Per name, the lowest of ``rounds`` block medians: every callable runs ``warmup`` untimed then
    ``repeats`` timed calls in a row before the next one starts; ``clock(name, fn)`` times one call."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            block = [clock(name, fn) for _ in range(repeats)]
            best[name] = min(best[name], float(np.median(block)))
    return best
