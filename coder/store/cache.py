"""The one cache helper: read a cache file, or rebuild it.

A damaged cache (truncated, a flipped byte: ``BadZipFile``, CRC or JSON errors) is a warning and a rebuild,
never an exit 70. A cache that cannot be written (read-only artifact, full disk) is kept in memory for this
run with a warning; the result is the same.

Example::

    w = cached(path, load=lambda p: np.load(p)["w"], build=encode_weights,
               save=lambda p, w: np.save(p, w), what="plain-CLIP weights")
"""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import StorageError, one_line
from .files import atomic_path

T = TypeVar("T")
# What reading a truncated, bit-flipped or foreign cache file raises (np.load, zipfile CRC checks, json).
DAMAGED = (zipfile.BadZipFile, zlib.error, ValueError, KeyError, EOFError, OSError)


class CacheWarning(RuntimeWarning):
    """A cache was damaged (rebuilt) or could not be written (kept in memory)."""


def cached(path: str | os.PathLike, load: Callable[[Path], T], build: Callable[[], T],
           save: Callable[[Path, T], None], what: str = "cache") -> T:
    """``load(path)`` if it works; else ``build()``, then ``save(tmp, value)`` committed atomically to ``path``.

    ``load`` raises on a damaged file (any of :data:`DAMAGED`) and returns None for a valid but stale one
    (other key): both rebuild. ``save`` writes to the temp path it is given. Writing failures (read-only, full disk, permissions) warn and return the value anyway.
    """
    path = Path(path)
    if path.is_file():
        try:
            value = load(path)
            if value is not None:
                return value
        except DAMAGED as e:
            warn_damaged(what, path, e)
    value = build()
    try:
        with atomic_path(path) as tmp:
            save(tmp, value)
    except (StorageError, OSError) as e:
        warn_unwritable(what, path, e)
    return value


def warn_damaged(what: str, path: Path, e: BaseException) -> None:
    warnings.warn(f"{what} {path} is damaged ({one_line(e, 120)}); rebuilding it", CacheWarning, stacklevel=3)


def warn_unwritable(what: str, path: Path, e: BaseException) -> None:
    warnings.warn(f"cannot write {what} {path} ({one_line(e, 120)}); kept in memory for this run", CacheWarning,
                  stacklevel=3)
