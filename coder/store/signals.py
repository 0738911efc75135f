"""The one signal policy of every coder command.

SIGINT (Ctrl-C) and SIGTERM (``kill``, schedulers, ``timeout``, systemd) both raise :class:`Interrupted` in the
main thread, so the current unit of work is dropped, every ``finally`` commits what is done, and the command
exits 130 (SIGINT) or 143 (SIGTERM). Inside :func:`critical` (a multi-step commit such as swapping an export
into place) a signal is held and raised when the block ends, so no commit is ever left half-done.

Libraries that install their own handlers (``ray.init`` replaces SIGTERM's) are followed by :func:`reinstall`.

Example::

    with stop_on_signals():
        for unit in todo:
            result = compute(unit)          # a signal here drops this unit
            with critical():
                commit(result)              # ... and here waits for the commit to finish
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_held = 0  # depth of critical() blocks in the main thread
_pending: int | None = None
_active = 0  # depth of stop_on_signals() blocks


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread for SIGINT or SIGTERM; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _handler(signum, frame) -> None:
    global _pending
    if _held:
        _pending = signum
        return
    raise Interrupted(signum)


def reinstall() -> None:
    """Put the policy's handlers back (after a library replaced them); no-op outside :func:`stop_on_signals`."""
    if _active and _on_main_thread():
        for s in _SIGNALS:
            signal.signal(s, _handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Install the policy for the block (main thread only; elsewhere a no-op) and restore the old handlers."""
    global _active
    if not _on_main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    _active += 1
    try:
        for s in _SIGNALS:
            signal.signal(s, _handler)
        yield
    finally:
        _active -= 1
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the block; a signal that arrived meanwhile is raised when it ends."""
    global _held, _pending
    if not _on_main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if _held == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


def requested() -> int | None:
    """The signal held by an enclosing :func:`critical` block, if any (for loops that finish their unit)."""
    return _pending
