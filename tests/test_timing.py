"""coder.timing: engines are timed in blocks (every call of one before the next starts), best block kept."""

import numpy as np

from coder.timing import blocks_ms, median_ms, timings_ms


def test_blocks_run_each_callable_in_a_row_and_keep_the_best_block_median():
    calls, fake = [], {"a": iter([9.0, 1.0, 2.0, 3.0, 1.0, 1.0]), "b": iter([5.0, 5.0, 6.0, 4.0, 4.0, 4.0])}

    def clock(name, fn):
        fn()
        return next(fake[name])

    fns = {n: (lambda n=n: calls.append(n)) for n in "ab"}
    ms = blocks_ms(fns, repeats=3, rounds=2, warmup=1, clock=clock)
    # per block: 1 warm-up + 3 timed calls of the same callable, never alternating
    assert calls == ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4
    assert ms == {"a": 1.0, "b": 4.0}  # medians (2, 1) and (5, 4): the best block wins


def test_timings_are_real_milliseconds():
    t = timings_ms(lambda: sum(range(10_000)), repeats=4, warmup=1)
    assert t.shape == (4,) and np.all(t > 0) and np.all(t < 5_000)
    assert 0 <= median_ms(lambda: None, 3) < 5_000
