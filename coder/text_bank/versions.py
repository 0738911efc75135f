"""Versioned banks: ``coder bank add/remove`` write a new version, ``rollback`` points back to an old one.

Layout of a bank directory once it has versions::

    banks/<name>/bank.json                 the CURRENT version: a copy of its version's bank.json with
                                           "version": V and "npz_file": "versions/V/bank.npz"
    banks/<name>/versions/<V>/bank.json    every version, complete and never modified once written
    banks/<name>/versions/<V>/bank.npz
    banks/<name>/versions/<V>/version.json format "coder.bank-version" v1: version, content_sha256, parent,
                                           added, removed, refolded, when

A change is committed in steps that each leave a loadable bank: the new version's directory is written
under a temporary name and renamed into place, then ``bank.json`` is replaced atomically (one rename:
the commit point). Killed at any step, the previous version stays current; a ``.tmp-*`` leftover is
removed by the next change. Writers hold the bank's :func:`~coder.store.output_lock`.

>>> commit_change(bank_dir, new_bank, change)          # doctest: +SKIP
{'version': 3, 'content_sha256': '9f2c...', 'added': ['zebra'], 'removed': [], ...}
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ConfigError
from ..store import atomic_path, atomic_write_json, critical, read_json, remove_stale_temps, sha256_file
from .bank import Bank

FORMAT = "coder.bank-version"
FORMAT_VERSION = 1
VERSIONS = "versions"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def list_versions(bank_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every version record (``version.json``) of a bank, oldest first; [] for a bank never changed."""
    root = Path(bank_dir) / VERSIONS
    out = []
    for d in sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) \
            if root.is_dir() else []:
        try:
            rec = read_json(d / "version.json")
        except (OSError, ValueError):
            continue  # not a complete version (never happens through commit_change; a hand edit)
        if rec.get("format") == FORMAT and rec.get("format_version") == FORMAT_VERSION:
            out.append(rec)
    return out


def current_version(bank_dir: str | os.PathLike) -> int | None:
    """The version ``bank.json`` points at; None for a bank as ``coder bank build`` wrote it."""
    try:
        meta = read_json(Path(bank_dir) / "bank.json")
    except (OSError, ValueError):
        return None
    v = meta.get("version")
    return int(v) if v is not None and str(meta.get("npz_file", "")).startswith(f"{VERSIONS}/") else None


def _write_version(bank_dir: Path, number: int, write_npz, meta: dict[str, Any], record: dict[str, Any]) -> None:
    """versions/<number>/ complete under a temporary name, then renamed into place (atomic)."""
    final = bank_dir / VERSIONS / str(number)
    if final.exists():
        raise ArtifactError(f"{final} exists already; another writer? re-run the change")
    with atomic_path(final) as tmp:
        tmp.unlink()
        tmp.mkdir()
        write_npz(tmp / "bank.npz")
        meta = {**meta, "npz_sha256": sha256_file(tmp / "bank.npz"), "version": number}
        meta.pop("npz_file", None)
        meta.pop("in_memory", None)
        atomic_write_json(tmp / "bank.json", meta)
        atomic_write_json(tmp / "version.json", record)


def _point(bank_dir: Path, number: int) -> None:
    """The commit: ``bank.json`` := version ``number``'s, naming its npz (one atomic rename)."""
    meta = read_json(bank_dir / VERSIONS / str(number) / "bank.json")
    atomic_write_json(bank_dir / "bank.json", {**meta, "version": number,
                                               "npz_file": f"{VERSIONS}/{number}/bank.npz"})


def _record(number: int, sha: str, parent: int | None, added, removed, refolded=(), note: str = "") -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": number, "content_sha256": sha,
            "parent": parent, "added": list(added), "removed": list(removed),
            "refolded": [{"class": c, "ana_dropped": list(w)} for c, w in refolded], "when": _now(), "note": note}


def _snapshot_current(bank_dir: Path, bank: Bank, versions: list[dict]) -> int:
    """The version of the current bank, recording it first when it has none (a plain `coder bank build`)."""
    current = current_version(bank_dir)
    if current is not None:
        return current
    number = max((v["version"] for v in versions), default=0) + 1
    before = set(versions[-1]["classes"]) if versions and "classes" in versions[-1] else set()
    names = bank.class_names
    record = _record(number, bank.content_sha256, versions[-1]["version"] if versions else None,
                     [n for n in names if n not in before], sorted(before - set(names)),
                     note="built (coder bank build)")
    record["classes"] = list(names)
    src = bank.root / str(bank.meta.get("npz_file", "bank.npz"))
    _write_version(bank_dir, number, lambda p: shutil.copyfile(src, p), bank.meta, record)
    return number


def commit_change(bank_dir: str | os.PathLike, old: Bank, new: Bank, change) -> dict[str, Any]:
    """Write ``new`` as the next version of the bank in ``bank_dir`` and make it current; returns its record.

    Call under :func:`~coder.store.output_lock` of ``bank_dir``; ``old`` is the current bank as loaded.
    """
    bank_dir = Path(bank_dir)
    remove_stale_temps(bank_dir / VERSIONS) if (bank_dir / VERSIONS).is_dir() else None
    with critical():  # SIGINT/SIGTERM wait for the commit to finish
        versions = list_versions(bank_dir)
        parent = _snapshot_current(bank_dir, old, versions)
        number = max([v["version"] for v in list_versions(bank_dir)], default=0) + 1
        record = _record(number, new.content_sha256, parent, change.added, change.removed, change.refolded)
        record["classes"] = list(new.class_names)

        def write_npz(path: Path) -> None:
            with open(path, "wb") as f:
                np.savez(f, **new.arrays)

        _write_version(bank_dir, number, write_npz, new.meta, record)
        _point(bank_dir, number)
    return record


def rollback(bank_dir: str | os.PathLike, to: int | None = None) -> dict[str, Any]:
    """Make version ``to`` (default: the current version's parent) current again; returns its record.

    The version's own files are used, so predictions are byte-identical to when it was current.
    """
    bank_dir = Path(bank_dir)
    versions = {v["version"]: v for v in list_versions(bank_dir)}
    current = current_version(bank_dir)
    if to is None:
        if current is None or versions.get(current, {}).get("parent") is None:
            raise ConfigError(f"{bank_dir.name}: no earlier version to roll back to (see coder bank versions)")
        to = versions[current]["parent"]
    if to not in versions:
        have = ", ".join(map(str, versions)) or "none"
        raise ConfigError(f"{bank_dir.name}: no version {to} (have: {have})")
    if current is None:  # an unversioned build would be lost: record it first
        from .bank import load_bank

        _snapshot_current(bank_dir, load_bank(bank_dir), list(versions.values()))
    with critical():
        _point(bank_dir, to)
    return versions[to]
