"""Timing callables: one place for benchmarks, ``coder bench`` and ``--backend auto``.

Engines are compared in blocks, never round-robin. An ONNX Runtime session keeps its intra-op
threads spinning for a while after every run (``session.intra_op.allow_spinning``, on by default;
OpenVINO's TBB workers do the same), so on a small CPU the engine timed right after it shares the
cores with those threads. Round-robin timing measured that contention, which a deployment running
one engine never sees: on a 2-core CPU it made OpenVINO's int8 ViT-B/32 encoder look 1.9x faster than
ONNX Runtime fp32 at batch 1 when, timed in blocks, it was 3.5x (``benchmarks/bench_cpu_engines.py``).
The threads spin for 50-70 ms after a run on a 2-core VM (an int8 GEMM session timed right after
an fp32 one reached 300 GOPS, 730 GOPS after 0.1 s idle), longer than a block's two warm-up calls of a
fast engine, so every block starts after ``SETTLE_S`` idle.
Blocks are repeated (A..A B..B, B..B A..A) and the best block median is kept, so a load spike that hits
one block does not decide the comparison. On a shared VM the machine's own speed also moves in phases
of seconds: one ONNX Runtime int8 session on a 2-core VM ran 29 ms per call for 7 s, then 22 ms,
in one process. :func:`rounds_ms` gives ratios between blocks run back to back, which share a phase;
benchmark scripts report those and take ``--blocks`` rounds.

>>> blocks_ms({"a": lambda: sum(range(1000)), "b": lambda: sum(range(10))}, repeats=5)  # doctest: +SKIP
{'a': 0.021, 'b': 0.0011}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

Clock = Callable[[str, Callable[[], object]], float]
SETTLE_S = 0.2  # idle before each block: the previous engine's threads stop spinning (measured: 50-70 ms)


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
              clock: Clock = time_call, settle_s: float = SETTLE_S) -> dict[str, float]:
    """Per name, the lowest of ``rounds`` block medians: every callable runs ``warmup`` untimed then
    ``repeats`` timed calls in a row before the next one starts (:func:`rounds_ms`); ``clock(name, fn)``
    times one call."""
    return {name: r.best_ms for name, r in rounds_ms(fns, repeats, rounds, warmup, clock, settle_s).items()}


@dataclass(frozen=True)
class Rounds:
    """One callable's block medians, one per round of :func:`rounds_ms`.

    Example: ``Rounds((21.0, 20.4, 28.9)).speedup_over(Rounds((60.2, 59.9, 83.0)))`` -> (2.87, 2.87, 2.90).
    """

    ms: tuple[float, ...]

    @property
    def best_ms(self) -> float:
        return min(self.ms)

    def speedup_over(self, base: "Rounds") -> tuple[float, float, float]:
        """Median, first and third quartile over rounds of ``base / self`` (> 1: this one is faster)."""
        ratio = np.array(base.ms) / np.array(self.ms)
        return float(np.median(ratio)), float(np.percentile(ratio, 25)), float(np.percentile(ratio, 75))


def rounds_ms(fns: Mapping[str, Callable[[], object]], repeats: int, rounds: int, warmup: int = 2,
              clock: Clock = time_call, settle_s: float = SETTLE_S) -> dict[str, Rounds]:
    """Every round times one block per callable (as :func:`blocks_ms`), each after ``settle_s`` idle, in
    order on even rounds and in reverse on odd ones, so no callable always follows the same neighbour.
    Ratios between blocks of one round (:meth:`Rounds.speedup_over`) share the machine's phase; each
    callable's best block may not."""
    names = list(fns)
    blocks: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            time.sleep(settle_s)
            for _ in range(warmup):
                fns[name]()
            blocks[name].append(float(np.median([clock(name, fns[name]) for _ in range(repeats)])))
    return {name: Rounds(tuple(ms)) for name, ms in blocks.items()}
