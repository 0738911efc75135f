"""coder.store: atomic commits, locks, resolved keys, the signal policy and the cache helper."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from coder.errors import StorageError
from coder.store import (atomic_path, atomic_write_bytes, cached, critical, is_within, output_lock, resolved,
                         same_or_nested, stop_on_signals)
from coder.store.cache import CacheWarning
from coder.store.signals import Interrupted


def test_atomic_write_leaves_no_temp_and_maps_a_full_disk(tmp_path, monkeypatch):
    atomic_write_bytes(tmp_path / "a" / "f.bin", b"x")
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"x" and os.listdir(tmp_path / "a") == ["f.bin"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a" / "g.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert os.listdir(tmp_path / "a") == ["f.bin"]

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match=f"no space left on {tmp_path / 'a'}"):
        atomic_write_bytes(tmp_path / "a" / "f.bin", b"new")
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"x" and os.listdir(tmp_path / "a") == ["f.bin"]


def test_paths_resolve_every_spelling(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    spellings = ["imgs", str(tmp_path / "imgs"), "imgs/../imgs", "./imgs/", "link"]
    assert len({resolved(s) for s in spellings}) == 1
    assert is_within("imgs/a.jpg", "link") and same_or_nested(".", "imgs") and not is_within(".", "imgs")


def _hold_lock_in_child(path, ready, release):
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from coder.store import output_lock
        with output_lock({str(path)!r}):
            Path({str(ready)!r}).write_text("held")
            while not Path({str(release)!r}).exists():
                time.sleep(0.01)
    """)
    return subprocess.Popen([sys.executable, "-c", code])


def test_output_lock_names_the_holder_and_dies_with_it(tmp_path):
    out, ready, release = tmp_path / "out.parquet", tmp_path / "ready", tmp_path / "release"
    child = _hold_lock_in_child(out, ready, release)
    try:
        while not ready.exists():  # the child writes it only once it holds the lock
            assert child.poll() is None
        with pytest.raises(StorageError, match=f"is being written by pid {child.pid}"):
            with output_lock(tmp_path / "." / "out.parquet"):  # another spelling, the same lock
                pass
    finally:
        child.kill()  # SIGKILL: the kernel drops the lock, no stale lock file blocks the next run
        child.wait()
    with output_lock(out):
        assert not out.exists()  # the lock never creates the output itself


def test_signals_become_interrupted_and_wait_for_a_critical_block():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals():
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.exit_code == 143
        done = []
        with pytest.raises(Interrupted) as e:
            with critical():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("the commit finished")
        assert done and e.value.exit_code == 130
    assert {s: signal.getsignal(s) for s in before} == before  # the previous handlers are back


def test_cached_rebuilds_damaged_and_keeps_unwritable_in_memory(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    builds = []

    def build():
        builds.append(1)
        return np.arange(4.0)

    load = lambda p: np.load(p)["a"]  # noqa: E731
    save = lambda p, v: np.savez(open(p, "wb"), a=v)  # noqa: E731
    np.testing.assert_array_equal(cached(path, load, build, save), np.arange(4.0))
    np.testing.assert_array_equal(cached(path, load, build, save), np.arange(4.0))
    assert len(builds) == 1
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.warns(CacheWarning, match="damaged"):
        cached(path, load, build, save)
    assert len(builds) == 2 and np.load(path)["a"].shape == (4,)
    path.unlink()

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.warns(CacheWarning, match="kept in memory"):
        np.testing.assert_array_equal(cached(path, load, build, save), np.arange(4.0))
    assert not path.exists()


def test_lock_file_is_removed_after_use_and_a_retaken_lock_is_exclusive(tmp_path):
    out = tmp_path / "o"
    with output_lock(out) as path:
        assert path.exists()
    assert not path.exists()  # no clutter beside the user's output
    with output_lock(out):
        with pytest.raises(StorageError):
            with output_lock(out):
                pass
