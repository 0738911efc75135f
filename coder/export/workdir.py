"""Where an export writes, how it resumes, and how a finished export replaces an old artifact.

* A new or partial target is written in place; the resume state
  (``.coder-export.json``) is written before anything else, so an export
  interrupted at any point, even during its first encoder, can be re-run.
* ``--force`` over a complete artifact builds the replacement in a sibling
  ``.<name>.coder-new/`` and swaps it in only once complete and validated: a
  failed or interrupted replacement leaves the old artifact working. What the
  export does not write (``banks/``, ``engines/``, texts files) is carried over,
  byte for byte (moved, never rewritten).
* The swap is several renames. Before the first, a journal
  (``.<name>.coder-swap.json`` beside the artifact) names the staging directory and
  every carried-over entry; the swap runs under :func:`coder.store.critical` (SIGINT
  and SIGTERM wait for it) and every later export of that directory first finishes a
  journaled swap (:func:`recover`), so a process killed at any point (SIGKILL, power
  cut) leaves either the old artifact or the new one, with the user's files, never
  neither.
* Paths are resolved first: a symlinked artifact keeps its link and is replaced at
  its target (staging beside the target, on its filesystem); ``--out .`` inside the
  artifact stages beside it, not in it.

Example: ``work = plan(Path("art"), force=True)`` -> ``Path(".art.coder-new")`` when
``art/manifest.json`` exists; after a successful export ``swap_in(work, Path("art"))``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import ArtifactError, StorageError, one_line
from ..store import atomic_write_json, critical, fsync_dir, read_json, remove_stale_temps, resolved
from ..store.files import storage_errors
from ..manifest import FORMAT, MANIFEST_NAME, swap_journal

STATE_NAME = ".coder-export.json"
STATE_FORMAT = "coder.export-state"
STATE_VERSION = 2  # 2: the key holds every input that changes a file (checkpoint sha256, validation, versions)
SWAP_FORMAT = "coder.export-swap"
SWAP_VERSION = 1

# Fault injection: called with the name of each step of the swap once it is durable (tests stop the process there).
_hook: Optional[Callable[[str], None]] = None


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.coder-new"


def backup_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.coder-old"


def journal_path(out: Path) -> Path:
    return swap_journal(out)  # load_artifact names it when a stopped swap left no artifact


def _at(step: str) -> None:
    if _hook is not None:
        _hook(step)


def _is_coder_file(path: Path, fmt: str) -> bool:
    try:
        return path.is_file() and read_json(path).get("format") == fmt
    except (ValueError, OSError, AttributeError):
        return False


def _kind(d: Path) -> str:
    """"artifact" | "partial" | "empty" | "foreign" (temps of an interrupted write do not count)."""
    if _is_coder_file(d / MANIFEST_NAME, FORMAT):
        return "artifact"
    if _is_coder_file(d / STATE_NAME, STATE_FORMAT):
        return "partial"
    return "foreign" if any(not p.name.startswith(".tmp-") for p in d.iterdir()) else "empty"


def recover(out: Path) -> None:
    """Finish a swap into ``out`` that was stopped (killed, power cut) at any point; no-op when none was.

    A journaled swap is rolled forward (its new artifact was complete before the journal was written);
    a swap of an older coder without a journal gets the old artifact back.
    """
    journal = journal_path(out)
    for tmp in out.parent.glob(f".tmp-{journal.name}-*"):  # a journal never committed: its swap never began
        tmp.unlink(missing_ok=True)
    if _is_coder_file(journal, SWAP_FORMAT):
        carry = [n for n in read_json(journal).get("carry", [])
                 if isinstance(n, str) and n not in ("", ".", "..") and n == Path(n).name]
        with critical(), _swap_errors(out):
            _finish_swap(out, staging_dir(out), backup_dir(out), carry)
        return
    backup = backup_dir(out)
    if backup.is_dir() and not out.exists():
        os.replace(backup, out)  # stopped between the two renames: the old artifact comes back
    elif backup.is_dir():
        shutil.rmtree(backup)  # stopped after the swap, before the clean-up


def plan(out: Path, force: bool) -> Path:
    """Check the target directory (``out`` resolved: see :func:`coder.store.resolved`); return the directory
    this export writes into."""
    out = resolved(out)
    recover(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory")
    with storage_errors(out.parent):
        out.mkdir(parents=True, exist_ok=True)
    kind = _kind(out)
    if kind == "foreign":
        raise ArtifactError(f"{out} is not empty and is not a coder artifact; choose another --out")
    if kind != "artifact":
        return out
    if not force:
        raise ArtifactError(f"{out} already holds an exported artifact; pass --force to replace it")
    work = staging_dir(out)
    if work.is_dir() and _kind(work) not in ("partial", "empty"):
        shutil.rmtree(work)  # ours by name; not a resumable partial (e.g. finished but never swapped)
    with storage_errors(out.parent):
        work.mkdir(exist_ok=True)
    return work


def open_state(work: Path, key: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """The resume state for ``key`` (a new one when the key changed or ``fresh``), saved before any file.

    A staging directory restarted for another key is emptied first (it is ours; nothing of an
    earlier attempt may reach the artifact).
    """
    remove_stale_temps(work)
    path = work / STATE_NAME
    state = read_json(path) if _is_coder_file(path, STATE_FORMAT) else {}
    if fresh or state.get("format_version") != STATE_VERSION or state.get("key") != key:
        state = {"format": STATE_FORMAT, "format_version": STATE_VERSION, "key": key, "files": {}}
        if work.name.endswith(".coder-new"):
            for p in work.iterdir():
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    atomic_write_json(path, state)
    return state


def swap_in(work: Path, out: Path) -> None:
    """Make the finished export in ``work`` the artifact at ``out`` (no-op when it was built in place).

    Entries of ``out`` its manifest does not list (banks, engines, texts files, anything of the user's)
    are moved into the new artifact unchanged. Journaled and signal-safe: see the module docstring.
    """
    work, out = resolved(work), resolved(out)
    if work == out:
        (out / STATE_NAME).unlink(missing_ok=True)
        return
    old_files = set(read_json(out / MANIFEST_NAME).get("files", {})) | {MANIFEST_NAME, STATE_NAME}
    carry = sorted(p.name for p in out.iterdir()  # banks, engines, texts files, anything of the user's
                   if p.name not in old_files and not p.name.startswith(".tmp-")
                   and not os.path.lexists(work / p.name))
    cwd = _cwd_inside(out)
    with critical(), _swap_errors(out):
        if backup_dir(out).is_dir():
            shutil.rmtree(backup_dir(out))  # ours by name, left by an older coder
        atomic_write_json(journal_path(out), {"format": SWAP_FORMAT, "format_version": SWAP_VERSION,
                                              "staging": work.name, "backup": backup_dir(out).name,
                                              "carry": carry})
        _at("journal")
        _finish_swap(out, work, backup_dir(out), carry)
    if cwd is not None:  # the process stood in the old artifact (`--out .`): stand in the new one
        os.chdir(out / cwd if (out / cwd).is_dir() else out)


def _finish_swap(out: Path, work: Path, backup: Path, carry: list[str]) -> None:
    """The swap's steps, each one idempotent, so a stopped swap is finished by running this again."""
    if work.is_dir():
        if out.is_dir():
            if backup.is_dir():
                shutil.rmtree(backup)  # a stale one: a backup and the old artifact never coexist mid-swap
            for name in carry:
                if os.path.lexists(out / name) and not os.path.lexists(work / name):
                    os.replace(out / name, work / name)
                    _at(f"carry {name}")
            fsync_dir(work)  # the moves are on disk before the old artifact is renamed (power cut)
            fsync_dir(out)
            (work / STATE_NAME).unlink(missing_ok=True)
            _at("state")
            os.replace(out, backup)
            fsync_dir(out.parent)
            _at("backup")
        os.replace(work, out)
        fsync_dir(out.parent)
        _at("swap")
    elif not out.is_dir() and backup.is_dir():
        os.replace(backup, out)  # the staging directory is gone (removed by hand): keep the old artifact
    if backup.is_dir():
        for name in carry:  # never delete a carried entry still there (a move a power cut did not keep)
            if os.path.lexists(backup / name) and not os.path.lexists(out / name):
                os.replace(backup / name, out / name)
        shutil.rmtree(backup)
        _at("clean")
    journal_path(out).unlink(missing_ok=True)
    fsync_dir(out.parent)
    _at("done")


@contextlib.contextmanager
def _swap_errors(out: Path) -> Iterator[None]:
    """An OSError mid-swap becomes one StorageError line: the journal lets the next export finish the swap."""
    try:
        yield
    except OSError as e:
        raise StorageError(f"could not swap the new export into {out} ({one_line(e, 160)}); "
                           "re-run the export to finish it") from None


def _cwd_inside(out: Path) -> Optional[Path]:
    """The process's working directory relative to ``out`` when it is inside it, else None."""
    try:
        cwd = resolved(os.getcwd())
    except OSError:
        return None
    return cwd.relative_to(out) if cwd == out or out in cwd.parents else None
