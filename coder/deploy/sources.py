"""Input expansion shared by ``coder classify --out`` and ``coder classify --ray``.

PATHS may be image files (any suffix: a bad one becomes an error row), directories
(recursive, image suffixes only, sorted), glob patterns the shell did not expand, text
files of paths (``*.txt`` / ``*.lst``: one path or URI per line, ``#`` comments; relative
lines are relative to the list file), and URIs of any pyarrow or fsspec filesystem
(``s3://``, ``gs://``, ``hdfs://``, ``file://``, ...). The driver only lists: it records
each file's size and mtime (the resume key) and never reads the bytes; whoever
classifies a file calls :func:`read_bytes` on it (on a cluster: the Ray workers).

Every input is named by its key (:func:`file_key`): a local file by its absolute path with
the directories resolved (``imgs/a.jpg``, ``/abs/imgs/a.jpg`` and ``imgs/../imgs/a.jpg`` are
one input; ``file://`` URIs are local paths), a URI as its filesystem lists it. So one file is
one row however it was spelled, and a Ray worker never resolves a relative path in its own cwd.
Globs follow the local rules everywhere: ``*`` stays within a directory, ``**`` is zero or more
directories, hidden names only when the pattern names them.

>>> [s.file for s in expand_sources(["photos/"])]          # doctest: +SKIP
['/home/me/photos/a.jpg', '/home/me/photos/sub/b.png']
>>> read_bytes("s3://bucket/frames/0001.jpg")[:2]          # doctest: +SKIP
b'\\xff\\xd8'
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import ConfigError, InputError, one_line
from ..runtime.inputs import IMAGE_SUFFIXES, iter_image_paths
from ..store import resolved

LIST_SUFFIXES = (".txt", ".lst")
_WILDCARDS = "*?["


@dataclass(frozen=True)
class Source:
    """One input: ``file`` as every output names it, and its resume key (size, mtime).

    ``size`` is -1 for a file that could not be listed (its read then reports why)."""

    file: str
    size: int
    mtime_ns: int


def file_key(path: str | os.PathLike) -> str:
    """A local path's key: absolute, ``.``/``..`` and symlinked directories resolved
    (:func:`coder.store.resolved`), the file's own name kept (a symlinked file keeps its name).

    >>> file_key("/data/imgs/../imgs/./a.jpg")
    '/data/imgs/a.jpg'
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.name in ("", ".", ".."):
        return str(resolved(p))
    return str(resolved(p.parent) / p.name)


def is_uri(item: str) -> bool:
    """``s3://b/k`` and ``file:///x`` are URIs; ``photos/a.jpg`` and ``C:\\x`` are not."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", item) is not None


def expand_sources(items: Iterable[str | os.PathLike],
                   on_empty: Callable[[str], None] = lambda message: None) -> Iterator[Source]:
    """Every input of ``items`` as a :class:`Source`, lazily, in the order given; a directory,
    glob or list that yields nothing calls ``on_empty("ITEM: ...")`` (as ``classify`` reports it)."""
    for item in items:
        item = str(item)
        if is_uri(item):
            found = _expand_uri(item)
        elif Path(item).suffix.lower() in LIST_SUFFIXES and Path(item).is_file():
            found = _expand_list(Path(item))
        else:
            yield from (_stat_local(p) for p in iter_image_paths([item], on_empty))
            continue
        empty = True
        for src in found:
            empty = False
            yield src
        if empty:
            on_empty(f"{item}: no image files found")


def _stat_local(path: Path) -> Source:
    key = file_key(path)
    try:
        st = os.stat(key)
        return Source(key, st.st_size, st.st_mtime_ns)
    except OSError:
        return Source(key, -1, 0)


def _expand_list(list_file: Path) -> Iterator[Source]:
    """A text file of paths; nested list files are not followed (no cycles)."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{list_file}: cannot read the list of paths ({e})") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if is_uri(line):
            yield from _expand_uri(line)
            continue
        p = Path(line) if Path(line).is_absolute() else list_file.parent / line
        yield from (_stat_local(q) for q in iter_image_paths([p]))


def filesystem(uri: str):
    """``(pyarrow FileSystem, path inside it)`` for a URI: pyarrow's own filesystems first,
    else fsspec's implementation of the scheme wrapped for pyarrow."""
    scheme, rest = uri.split("://", 1)
    netloc, _, key = rest.partition("/")
    fs, native = _filesystem_for(scheme, netloc)
    if scheme == "file" or (native and scheme not in ("hdfs", "viewfs")):
        return fs, rest  # s3://bucket/key -> bucket/key; file:///x -> /x
    return fs, ("/" + key if native else rest)


@functools.lru_cache(maxsize=64)
def _filesystem_for(scheme: str, netloc: str):
    """One filesystem per (scheme, bucket), reused for every file in it (S3 clients are costly);
    ``(fs, True)`` for pyarrow's own, ``(fs, False)`` for an fsspec one."""
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/" if scheme != "file" else "file:///")[0], True
    except Exception:  # pyarrow lacks the scheme (or its client library): try fsspec
        pass
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        impl = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"{scheme}:// is not a filesystem pyarrow or fsspec can open ({e})") from None
    return PyFileSystem(FSSpecHandler(impl)), False


def _uri(scheme: str, netloc: str, path: str, native: bool) -> str:
    """Inverse of :func:`filesystem`: a listed path back to the URI the workers will read."""
    if scheme in ("hdfs", "viewfs") and native:
        return f"{scheme}://{netloc}{path}"
    return f"{scheme}://{path.lstrip('/') if scheme != 'file' else path}"


def _expand_uri(uri: str) -> Iterator[Source]:
    from pyarrow import fs as pafs

    scheme, rest = uri.split("://", 1)
    if scheme.lower() == "file":  # a local path: listed and keyed as one, so file:///x/a.jpg and /x/a.jpg are one
        local = rest[len("localhost"):] if rest.startswith("localhost/") else rest
        yield from (_stat_local(p) for p in iter_image_paths([local]))
        return
    scheme = scheme.lower()
    netloc = rest.partition("/")[0]
    native = _filesystem_for(scheme, netloc)[1]
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        yield Source(_uri(scheme, netloc, info.path, native), int(info.size), int(info.mtime_ns or 0))
        return
    pattern = None
    if info.type == pafs.FileType.NotFound and any(c in path for c in _WILDCARDS):
        pattern, path = path, path[:min(path.find(c) for c in _WILDCARDS if c in path)].rsplit("/", 1)[0]
    elif info.type != pafs.FileType.Directory:
        yield Source(f"{scheme}://{rest}", -1, 0)  # missing: its read becomes the error row
        return
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    for f in sorted(found, key=lambda f: f.path):
        if f.type != pafs.FileType.File:
            continue
        if pattern is not None and not _glob_match(f.path, pattern):
            continue
        if pattern is None and Path(f.path).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        yield Source(_uri(scheme, netloc, f.path, native), int(f.size), int(f.mtime_ns or 0))


def _glob_match(path: str, pattern: str) -> bool:
    """True when ``path`` matches ``pattern`` as :func:`glob.glob` (``recursive=True``) would match it
    locally: ``*``, ``?`` and ``[...]`` stay within one ``/`` level, a ``**`` component is zero or more
    directories (``a/**/*.jpg`` takes ``a/x.jpg`` too), and wildcards do not match names starting with ``.``.

    >>> [_glob_match(p, q) for p, q in [("b/a/x.jpg", "b/**/*.jpg"), ("b/x.jpg", "b/**/*.jpg"), ("b/a/x", "b/*")]]
    [True, True, False]
    """
    return _glob_regex(pattern.strip("/")).match(path.strip("/")) is not None


@functools.lru_cache(maxsize=64)
def _glob_regex(pattern: str) -> re.Pattern:
    parts = pattern.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(r"(?:(?!\.)[^/]+/)*" + (r"(?!\.)[^/]+" if last else ""))
        else:
            out.append(_segment_regex(part) + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z")


def _segment_regex(part: str) -> str:
    """One path component of a glob: ``*`` -> ``[^/]*``, ``?`` -> ``[^/]``, ``[!a]`` -> ``[^a]``."""
    out = [r"(?!\.)"] if part[:1] in ("*", "?", "[") else []
    i = 0
    while i < len(part):
        c = part[i]
        j = part.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and j != -1:
            body = part[i + 1:j].replace("\\", "\\\\")
            body = "^" + body[1:] if body.startswith("!") else ("\\" + body if body.startswith("^") else body)
            out.append(f"[{body}]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def read_bytes(file: str) -> bytes:
    """A file's bytes, local or remote; a failure is an :class:`InputError` naming the file."""
    try:
        if not is_uri(file):
            return Path(file).read_bytes()
        fs, path = filesystem(file)
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{file}: is a directory") from None
    except (OSError, ValueError) as e:  # pyarrow raises OSError subclasses for remote failures
        raise InputError(f"{file}: cannot read ({one_line(e)})") from None
