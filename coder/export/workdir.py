"""Where an export writes, how it resumes, and how a finished export replaces an old artifact.

* A new or partial target is written in place; the resume state
  (``.coder-export.json``) is written before anything else, so an export
  interrupted at any point, even during its first encoder, can be re-run.
* ``--force`` over a complete artifact builds the replacement in a sibling
  ``.<name>.coder-new/`` and swaps it in only once complete and validated: a
  failed or interrupted replacement leaves the old artifact working. What the
  export does not write (``banks/``, ``engines/``, texts files) is carried over.

Example: ``work = plan(Path("art"), force=True)`` -> ``Path(".art.coder-new")`` when
``art/manifest.json`` exists; after a successful export ``swap_in(work, Path("art"))``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..store import atomic_write_json, read_json, remove_stale_temps
from ..manifest import FORMAT, MANIFEST_NAME

STATE_NAME = ".coder-export.json"
STATE_FORMAT = "coder.export-state"
STATE_VERSION = 2  # 2: the key holds every input that changes a file (checkpoint sha256, validation, versions)


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.coder-new"


def backup_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.coder-old"


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


def _recover_interrupted_swap(out: Path) -> None:
    backup = backup_dir(out)
    if backup.is_dir() and not out.exists():
        os.replace(backup, out)  # stopped between the two renames: the old artifact comes back
    elif backup.is_dir():
        shutil.rmtree(backup)  # stopped after the swap, before the clean-up


def plan(out: Path, force: bool) -> Path:
    """Check the target directory; return the directory this export writes into."""
    _recover_interrupted_swap(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory")
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
    """Make the finished export in ``work`` the artifact at ``out`` (no-op when it was built in place)."""
    if work == out:
        (out / STATE_NAME).unlink(missing_ok=True)
        return
    old_files = set(read_json(out / MANIFEST_NAME).get("files", {})) | {MANIFEST_NAME, STATE_NAME}
    for p in out.iterdir():  # banks, engines, texts files, anything of the user's
        if p.name not in old_files and not p.name.startswith(".tmp-") and not (work / p.name).exists():
            os.replace(p, work / p.name)
    (work / STATE_NAME).unlink(missing_ok=True)
    backup = backup_dir(out)
    os.replace(out, backup)
    os.replace(work, out)
    shutil.rmtree(backup)
