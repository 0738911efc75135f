"""The one job-and-storage layer every writer goes through.

* :mod:`.files` commits a file atomically (temp beside it, fsync, rename, fsync the directory) and turns a
  full disk or a read-only medium into one :class:`~coder.errors.StorageError` line.
* :mod:`.locks` takes an exclusive lock per output; a second run exits 3 naming the holder.
* :mod:`.paths` keys inputs and outputs by their resolved absolute path (or a normalised URI).
* :mod:`.signals` is the one signal policy: SIGINT and SIGTERM stop at a unit boundary, what is done is
  committed, and the process exits 130 / 143; :func:`~.signals.critical` holds signals over a multi-step commit.
* :mod:`.cache` reads a cache or rebuilds it (damaged: warning + rebuild; read-only: kept in memory).

Example::

    with output_lock(out), stop_on_signals():
        for unit in work:
            with atomic_path(out / unit.name) as tmp:
                write(unit, tmp)
"""

from .cache import DAMAGED, cached, warn_damaged, warn_unwritable
from .files import (atomic_path, atomic_write_bytes, atomic_write_json, fsync_dir, read_json, remove_stale_temps,
                    sha256_file, storage_error)
from .locks import output_lock
from .paths import is_within, resolved, same_or_nested
from .signals import Interrupted, critical, reinstall, requested, stop_on_signals

__all__ = ["DAMAGED", "Interrupted", "atomic_path", "atomic_write_bytes", "atomic_write_json", "cached", "critical",
           "fsync_dir", "is_within", "output_lock", "read_json", "reinstall", "requested", "remove_stale_temps", "resolved",
           "same_or_nested", "sha256_file", "stop_on_signals", "storage_error", "warn_damaged", "warn_unwritable"]
