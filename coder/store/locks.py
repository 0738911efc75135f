"""One exclusive lock per output, so two runs never write the same output at once.

The lock is an ``fcntl`` lock on ``.<name>.lock`` beside the output, keyed by the resolved path: ``imgs/out``,
``/abs/imgs/out`` and a symlink to it are one lock. The kernel drops it when the holder dies (also on SIGKILL),
so a stale lock file never blocks a later run; a run that ends normally removes it. The file records the
holder's pid and command line for the error message of the second run.

Example::

    with output_lock(Path("labels.parquet")):
        write_rows()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from ..errors import StorageError
from .files import storage_errors
from .paths import resolved


def lock_file(output: str | os.PathLike) -> Path:
    """``<parent>/.<name>.lock``: always beside the output (file or directory, existing or not), so the lock is
    the same before and after the output is created and never adds a file inside it."""
    out = resolved(output)
    return out.with_name(f".{out.name}.lock")


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"pid {h['pid']} ({h['cmd']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the exclusive lock of ``output`` for the block; StorageError (exit 3) naming the holder if busy.

    ``wait_s`` > 0 waits that long for the holder to finish before giving up. Re-entrant within a process
    is not supported: take the lock once, at the top of the writer.
    """
    path = lock_file(output)
    deadline = time.monotonic() + wait_s
    fd = _acquire(path, output, deadline)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "cmd": " ".join(sys.argv)[:200]}).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still held: a run that opened it meanwhile sees a stale inode, retries
        os.close(fd)  # releases the flock


def _acquire(path: Path, output, deadline: float) -> int:
    """An fd holding the flock of the file now at ``path`` (retrying when the holder removed it meanwhile)."""
    while True:
        with storage_errors(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise StorageError(f"{resolved(output)} is being written by {holder}; "
                                   "wait for it to finish (or stop it) and re-run") from None
            time.sleep(0.05)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # locked a file its previous holder had just removed: take the new one
