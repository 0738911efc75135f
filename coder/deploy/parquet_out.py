"""The Parquet result dataset of ``coder classify --out`` (single process and ``--ray``).

Layout: ``OUT.parquet/`` is a directory dataset that pyarrow, pandas, Polars, DuckDB
(``'OUT.parquet/*.parquet'``) and ``ray.data.read_parquet`` read as one table::

    OUT.parquet/_coder.json                 format "coder.labels" v3 + the job's settings
    OUT.parquet/part-00000-<run>.parquet    rows; schema metadata repeats _coder.json
    OUT.parquet/part-00001-<run>.parquet    ...

One row per input (:data:`SCHEMA`), built from :mod:`coder.runtime.records`, so it equals
``coder classify --json``; ``file`` is the input's key (:func:`~coder.deploy.sources.file_key`:
the resolved absolute path, or the URI as listed), so one file is one row however it was spelled.
Each part is written under a hidden ``.tmp-*`` name and renamed (readers skip ``.``/``_`` names),
so a killed job leaves only whole parts; a re-run reads the ``(file, file_size, file_mtime_ns)``
of every row and classifies only the rest. A run holds the dataset's lock
(:func:`coder.store.output_lock`, ``.OUT.parquet.lock`` beside it) from opening to closing, so two runs
never write one dataset at once (the second exits 3 naming the first). A part that cannot be read
(empty, truncated, damaged) is set aside as ``.damaged-<name>.bad`` with a warning and its rows redone.

>>> with writing(Path("out.parquet"), settings) as w:                  # doctest: +SKIP
...     todo = w.plan(sources).todo; w.add(rows)
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ArtifactError, ConfigError, one_line
from ..store import atomic_path, atomic_write_json, critical, fsync_dir, output_lock, read_json, remove_stale_temps
from ..store.files import storage_errors
from .sources import Source

FORMAT = "coder.labels"
FORMAT_VERSION = 3  # 3: settings.bank_sha256 is the bank's content sha256, as in every row (2: the npz file's)
# 2: rows carry bank_sha256; ``file`` is the resolved absolute path / listed URI (1: as given)
META_FILE = "_coder.json"
PART_GLOB = "part-*.parquet"
DAMAGED_PREFIX = ".damaged-"


class DamagedPartWarning(RuntimeWarning):
    """A part file could not be read; it was set aside and its rows will be redone."""

_F32 = pa.float32()
SCHEMA = pa.schema([
    pa.field("file", pa.string(), nullable=False),
    pa.field("label", pa.int32()),
    pa.field("name", pa.string()),
    pa.field("top_k", pa.list_(pa.int32())),
    pa.field("top_k_names", pa.list_(pa.string())),
    pa.field("stage1_scores", pa.list_(_F32)),  # of top_k, x100 scale
    pa.field("gap", _F32),
    pa.field("reranked", pa.bool_()),
    pa.field("rerank_candidates", pa.list_(pa.int32())),
    pa.field("rerank_scores", pa.list_(_F32)),
    pa.field("few_shot", pa.bool_()),
    pa.field("bank_sha256", pa.string()),  # the bank version (content sha256) of this row's prediction
    pa.field("backend", pa.string()),
    pa.field("error", pa.string()),  # null, or the one-line reason this input has no prediction
    pa.field("file_size", pa.int64()),  # resume key, as listed when the job planned it (-1: unlisted)
    pa.field("file_mtime_ns", pa.int64()),
])
KEY = ("file", "file_size", "file_mtime_ns")


def row(record: dict, src: Source) -> dict:
    """A :mod:`~coder.runtime.records` record (prediction or error) -> one row of :data:`SCHEMA`."""
    out = {name: record.get(name) for name in SCHEMA.names}
    out.update(file=src.file, file_size=src.size, file_mtime_ns=src.mtime_ns)
    return out


def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


@dataclass(frozen=True)
class Plan:
    """What a run has to do: ``todo`` inputs, ``done`` already in the dataset, ``redo`` whose
    old rows were dropped (file changed since, or ``retry_errors``)."""

    todo: list[Source]
    done: int
    redo: int


class ParquetOutput:
    """Appends rows to ``OUT.parquet/`` in whole parts: a part is flushed every ``rows_per_part``
    rows or ``seconds_per_part`` seconds, whichever first, so a killed job loses at most that."""

    def __init__(self, root: Path, meta: dict, rows_per_part: int = 5_000, seconds_per_part: float = 10.0):
        self.root, self.meta = root, meta
        self.rows_per_part, self.seconds_per_part = rows_per_part, seconds_per_part
        self.run = uuid.uuid4().hex[:8]
        self._seq = len(list(root.glob(PART_GLOB)))
        self._buf: list[pa.Table] = []
        self._buffered = 0
        self._last_flush = time.monotonic()
        self.rows_written = 0
        self.errors_written = 0

    def _parts(self) -> list[Path]:
        return sorted(self.root.glob(PART_GLOB))

    def index(self) -> tuple[dict[str, tuple[int, int, bool]], set[str]]:
        """``file -> (size, mtime_ns, is_error)`` of every row already written, and the files that
        have more than one row. A part that cannot be read is set aside (:meth:`_set_aside`)."""
        out, twice = {}, set()
        for part in self._parts():
            try:
                t = pq.read_table(part, columns=[*KEY, "error"])
            except (pa.ArrowException, OSError) as e:
                self._set_aside(part, e)
                continue
            for f, s, m, e in zip(*(t.column(c).to_pylist() for c in (*KEY, "error"))):
                if f in out:
                    twice.add(f)
                out[f] = (s, m, e is not None)
        return out, twice

    def _set_aside(self, part: Path, e: BaseException) -> None:
        """Rename an unreadable part to a hidden ``.damaged-*.bad`` name (readers skip it; nothing is
        deleted) and warn; its rows are no longer in the dataset, so this run redoes them."""
        aside = part.with_name(f"{DAMAGED_PREFIX}{part.name}.bad")  # hidden, and no *.parquet glob takes it
        with critical(), storage_errors(self.root):
            os.replace(part, aside)
            fsync_dir(self.root)
        warnings.warn(f"{part}: damaged part ({one_line(e, 120)}); set aside as {aside.name}, its rows are redone",
                      DamagedPartWarning, stacklevel=2)

    def plan(self, sources: Iterable[Source], retry_errors: bool = False) -> Plan:
        """Skip inputs whose row exists with the same size and mtime; drop the rows of changed
        files (and of errors, with ``retry_errors``; and every row of an input found twice) before
        they are redone: never two rows per file."""
        have, twice = self.index()
        todo, stale, done, seen = [], set(), 0, set()
        for src in sources:
            if src.file in seen:  # the same file named twice: one row
                continue
            seen.add(src.file)
            old = have.get(src.file)
            if old is not None and src.file not in twice and old[:2] == (src.size, src.mtime_ns) \
                    and not (retry_errors and old[2]):
                done += 1
                continue
            if old is not None:
                stale.add(src.file)
            todo.append(src)
        if stale:
            self._drop(stale)
        return Plan(todo, done, len(stale))

    def _drop(self, files: set[str]) -> None:
        """Rewrite (atomically, part by part) every part holding a row of ``files`` without it."""
        import pyarrow.compute as pc

        for part in self._parts():
            t = pq.read_table(part)
            keep = pc.invert(pc.is_in(t.column("file"), value_set=pa.array(sorted(files), pa.string())))
            if pc.all(keep).as_py():
                continue
            kept = t.filter(keep)
            if kept.num_rows == 0:
                with critical(), storage_errors(self.root):
                    part.unlink()
                    fsync_dir(self.root)
            else:
                self._write(part, kept)

    def add(self, table: pa.Table) -> None:
        """Buffer rows (a :data:`SCHEMA` table); flushes a part when one is due."""
        if table.num_rows == 0:
            return
        self._buf.append(table.select(SCHEMA.names).cast(SCHEMA))
        self._buffered += table.num_rows
        if self._buffered >= self.rows_per_part or time.monotonic() - self._last_flush >= self.seconds_per_part:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buf:
            return
        table = pa.concat_tables(self._buf)
        self._buf, self._buffered = [], 0
        self._write(self.root / f"part-{self._seq:05d}-{self.run}.parquet", table)
        self._seq += 1
        self.rows_written += table.num_rows
        self.errors_written += table.num_rows - table.column("error").null_count

    def _write(self, path: Path, table: pa.Table) -> None:
        """Commit one part atomically; SIGINT/SIGTERM wait for the commit (:func:`coder.store.critical`)."""
        table = table.replace_schema_metadata({b"coder": json.dumps(self.meta).encode()})
        with critical(), atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")

    def close(self) -> None:
        self.flush()


@contextlib.contextmanager
def writing(out: Path, settings: dict, overwrite: bool = False, **part_options) -> Iterator[ParquetOutput]:
    """Open ``out`` (:func:`open_output`) under its exclusive lock and close it (every buffered row
    committed) when the block ends, also on Ctrl-C, SIGTERM or an error. A second run on the same
    dataset, however spelled, is a :class:`~coder.errors.StorageError` (exit 3) naming the holder."""
    out = Path(out)
    _check_target(out)
    with storage_errors(out.parent if out.parent != out else out):
        out.mkdir(parents=True, exist_ok=True)  # the lock lives inside the dataset directory
    with output_lock(out):
        output = open_output(out, settings, overwrite, **part_options)
        try:
            yield output
        finally:
            output.close()


def open_output(out: Path, settings: dict, overwrite: bool = False, **part_options) -> ParquetOutput:
    """Create or reopen ``out`` (the caller holds its lock: use :func:`writing`). Reopening checks the
    format version and that ``settings`` (artifact/bank/adapter sha256, tau, top-k, ...) equal the ones
    the rows were made with: mixing two models' labels in one table is a :class:`ConfigError` naming
    ``--overwrite``."""
    out = Path(out)
    _check_target(out)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings}
    meta_path = out / META_FILE
    if overwrite and out.is_dir():
        _clear(out)
    if meta_path.is_file() or any(out.glob(PART_GLOB)):
        _check_existing(out, _read_meta(out), settings)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    atomic_write_json(meta_path, meta)
    return ParquetOutput(out, meta, **part_options)


def _own_files(out: Path) -> bool:
    """True when ``out`` holds nothing but what a coder result holds (or is empty)."""
    return all(p.name == META_FILE or p.name.startswith((".tmp-", DAMAGED_PREFIX))
               or p.match(PART_GLOB) for p in out.iterdir())


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory (the result is a Parquet dataset directory)")
    if out.is_dir() and not (out / META_FILE).is_file() and not _own_files(out):
        raise ConfigError(f"--out {out}: a non-empty directory that is not a coder result; choose another path")


def _read_meta(out: Path) -> dict:
    """``_coder.json``; if it is damaged, the metadata every part repeats (warning); else ArtifactError."""
    try:
        return read_json(out / META_FILE)
    except (ValueError, OSError) as e:
        for part in sorted(out.glob(PART_GLOB)):
            try:
                found = json.loads(pq.read_schema(part).metadata[b"coder"])
            except (pa.ArrowException, OSError, ValueError, KeyError, TypeError):
                continue
            warnings.warn(f"{out / META_FILE} is damaged ({one_line(e, 120)}); using the metadata of {part.name}",
                          DamagedPartWarning, stacklevel=2)
            return found
        raise ArtifactError(f"{out / META_FILE} is damaged ({one_line(e, 120)}) and no part repeats it: "
                            f"pass --overwrite or another --out") from None


def _check_existing(out: Path, found: dict, settings: dict) -> None:
    if found.get("format") != FORMAT:
        raise ArtifactError(f"{out}: not a {FORMAT} dataset (format {found.get('format')!r})")
    if found.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{out}: {FORMAT} format_version {found.get('format_version')} (this coder writes "
                            f"{FORMAT_VERSION}): pass --overwrite or another --out")
    differ = sorted(k for k in set(found.get("settings", {})) | set(settings)
                    if found["settings"].get(k) != settings.get(k))
    if differ:
        raise ConfigError(f"--out {out} holds rows made with other settings ({', '.join(differ)} differ): "
                          f"pass --overwrite to start fresh, or another --out")


def _clear(out: Path) -> None:
    """``--overwrite``: remove only what a coder result holds (never a user's other files)."""
    if not (out / META_FILE).is_file() and not _own_files(out):
        raise ConfigError(f"--out {out}: not a coder result directory; refusing to clear it")
    for p in [*out.glob(PART_GLOB), *out.glob(".tmp-*"), *out.glob(DAMAGED_PREFIX + "*"), out / META_FILE]:
        p.unlink(missing_ok=True)


def read_metadata(out: Path) -> dict:
    """The dataset's ``_coder.json`` (format, version, settings)."""
    return read_json(Path(out) / META_FILE)
