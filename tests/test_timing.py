"""coder.timing: engines are timed in blocks (every call of one before the next starts), best block kept."""

import numpy as np

from coder.timing import blocks_ms, median_ms, timings_ms


def test_blocks_run_each_callable_in_a_row_and_keep_the_best_block_median():
    calls, fake = [], {"a": iter([9.0, 1.0, 2.0, 3.0, 1.0, 1.0]), "b": iter([5.0, 5.0, 6.0, 4.0, 4.0, 4.0])}

    def clock(name, fn):
        fn()
        return next(fake[name])

    fns = {n: (lambda n=n: calls.append(n)) for n in "ab"}
    ms = blocks_ms(fns, repeats=3, rounds=2, warmup=1, clock=clock, settle_s=0)
    # per block: 1 warm-up + 3 timed calls of the same callable, never alternating; rounds in turn
    assert calls == ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4
    assert ms == {"a": 1.0, "b": 4.0}  # medians (2, 1) and (5, 4): the best block wins


def test_timings_are_real_milliseconds():
    t = timings_ms(lambda: sum(range(10_000)), repeats=4, warmup=1)
    assert t.shape == (4,) and np.all(t > 0) and np.all(t < 5_000)
    assert 0 <= median_ms(lambda: None, 3) < 5_000


def test_paired_ratios_come_from_blocks_of_the_same_round_in_alternating_order():
    """A machine twice as slow in rounds 2-3 as in 0-1; b is 2x faster than a in every round."""
    from coder.timing import rounds_ms

    calls, speed = [], [1.0, 1.0, 2.0, 2.0]

    def clock(name, fn):
        fn()
        return {"a": 10.0, "b": 5.0}[name] * speed[(len(calls) - 1) // 4]  # a round: 2 blocks of 2 calls

    fns = {n: (lambda n=n: calls.append(n)) for n in "ab"}
    out = rounds_ms(fns, repeats=2, rounds=4, warmup=0, clock=clock, settle_s=0)
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b", "b", "b", "a", "a"]
    assert out["a"].ms == (10.0, 10.0, 20.0, 20.0) and out["b"].best_ms == 5.0
    assert out["b"].speedup_over(out["a"]) == (2.0, 2.0, 2.0) and out["a"].speedup_over(out["a"])[0] == 1.0
    assert out["a"].best_ms / out["b"].best_ms == 2.0  # here best blocks agree; on the VM they can straddle phases


def test_every_block_starts_after_the_settle_time(monkeypatch):
    """The previous engine's threads spin for tens of ms after its last call: each block waits them out."""
    import coder.timing as timing

    events = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: events.append(("idle", s)))
    fns = {n: (lambda n=n: events.append(n)) for n in "ab"}
    timing.rounds_ms(fns, repeats=1, rounds=2, warmup=1, clock=lambda name, fn: fn() or 1.0, settle_s=0.25)
    idle = ("idle", 0.25)
    assert events == [idle, "a", "a", idle, "b", "b", idle, "b", "b", idle, "a", "a"]
