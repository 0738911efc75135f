"""Atomic file commits and hashing.

Every file coder writes goes to a temporary name in the same directory, is fsynced, renamed into place with
``os.replace`` and the directory is fsynced, so neither an interrupted run nor a power cut leaves a
half-written file under a final name. A full disk or a read-only medium becomes one
:class:`~coder.errors.StorageError` line naming the directory (exit 3), never a traceback.

Example: ``atomic_write_json(Path("art/bank.json"), {"format": "coder.bank"})``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import StorageError

_CHUNK = 1 << 20
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on", errno.EDQUOT: "disk quota exceeded on",
                   errno.EROFS: "read-only file system:", errno.EACCES: "permission denied writing to",
                   errno.EPERM: "permission denied writing to"}


def storage_error(e: OSError, where: str | os.PathLike) -> StorageError | None:
    """The one-line error for a full disk / read-only / permission failure at ``where``, else None.

    >>> str(storage_error(OSError(28, "No space left on device"), "/mnt/x"))
    'no space left on /mnt/x: free some space or choose another directory'
    """
    what = _STORAGE_ERRNOS.get(getattr(e, "errno", None))
    if what is None:
        return None
    fix = "free some space or choose another directory" if e.errno in (errno.ENOSPC, errno.EDQUOT) \
        else "choose a writable directory"
    return StorageError(f"{what} {where}: {fix}")


@contextlib.contextmanager
def storage_errors(where: str | os.PathLike) -> Iterator[None]:
    """Re-raise a full-disk / read-only ``OSError`` inside the block as one :class:`StorageError` line."""
    try:
        yield
    except OSError as e:
        mapped = storage_error(e, where)
        if mapped is None:
            raise
        raise mapped from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; fsync it and rename it onto ``final`` on success.

    The temporary file is removed if the block raises (or the process is killed before the rename:
    then only a ``.tmp-*`` file is left, never ``final``). ENOSPC/EROFS/EACCES become StorageError.
    """
    final = Path(final)
    with storage_errors(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}-", dir=final.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with storage_errors(final.parent):
            yield tmp_path
            if tmp_path.is_file():
                os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared read-only
                fsync_file(tmp_path)
            os.replace(tmp_path, final)
            fsync_dir(final.parent)
    finally:
        if tmp_path.is_dir() and not tmp_path.is_symlink():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(final: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(final, text.encode("utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; raises ``ValueError`` with the path on malformed content."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise ValueError(f"{path}: not valid JSON ({getattr(e, 'msg', 'not UTF-8')}{where})") from None


def remove_stale_temps(directory: str | os.PathLike) -> int:
    """Delete ``.tmp-*`` leftovers of an interrupted run; returns how many."""
    n = 0
    for p in Path(directory).glob(".tmp-*"):
        if p.is_dir():  # a staging directory (ONNX file + external data)
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n
