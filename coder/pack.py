"""``coder pack ARTIFACT DIR``: a portable copy of an artifact to carry to another machine (a Jetson).

Copied: ``manifest.json`` (its ``engines`` record dropped: engines are per GPU and TensorRT
version), every file the manifest lists (encoders, tokenizer vocabulary) and each bank's
``bank.json`` + ``bank.npz`` (+ ``clip_w.npz`` when computed and intact). Not copied: ``engines/``,
embedding caches, hash caches, export state. Every copied file's sha256 is compared with its source's.
The copy is written on ``DIR``'s filesystem (beside it, or inside it when ``DIR`` is an existing empty
directory such as a mount point) and moved into place once every file's sha256 matched the manifest (and
each bank its ``bank.json``), so a failed or interrupted pack never leaves a half copy under ``DIR``. On the target the same
checks run whenever the artifact is opened (``load_artifact`` hashes every listed file once).

>>> report = pack_artifact("coder-artifacts/ViT-B-32__openai", Path("/media/usb/vitb32"))  # doctest: +SKIP
>>> report["files"], report["banks"], report["bytes"]       # (6, ["imagenet1k"], 611_000_000)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ArtifactError, StorageError
from .manifest import MANIFEST_NAME, PACK_JOURNAL, load_artifact, write_manifest
from .store import atomic_write_json, critical, fsync_dir, output_lock, read_json, resolved, sha256_file
from .store.files import fsync_file, storage_errors

BANK_FILES = ("bank.json", "bank.npz", "clip_w.npz")


def _bank_dirs(root: Path) -> list[Path]:
    banks = root / "banks"
    return sorted(p.parent for p in banks.glob("*/bank.json")) if banks.is_dir() else []


def verify_copy(dest: Path) -> dict:
    """Open ``dest`` as an artifact and every bank in it: all sha256 checked; ArtifactError otherwise."""
    from .text_bank.bank import load_bank

    art = load_artifact(dest)
    for name in art.manifest["files"]:
        art.file(name)
    banks = [load_bank(b, art).root.name for b in _bank_dirs(dest)]
    return {"files": len(art.manifest["files"]), "banks": banks}


def _staging(dest: Path) -> Path:
    """Where the copy is built: inside ``dest`` when it already exists (an empty mount point: a rename from
    its parent's filesystem would cross devices), else beside it. Either way on ``dest``'s filesystem."""
    where = dest if dest.is_dir() else dest.parent
    with storage_errors(where):
        where.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-pack-{dest.name}-", dir=where))


def _plan(art) -> list[tuple[Path, str]]:
    """(source, relative target) of every file to copy; a damaged clip_w.npz cache is left behind."""
    from .store import DAMAGED, warn_damaged

    files = [(art.file(name), name) for name in art.manifest["files"]]  # art.file: the source is checked first
    for bank in _bank_dirs(art.root):
        for f in BANK_FILES:
            src = bank / f
            if f == "clip_w.npz" and src.is_file():
                try:  # a cache has no recorded sha256: read every array (zip CRCs) before carrying it
                    with np.load(src, allow_pickle=False) as z:
                        [z[k] for k in z.files]
                except DAMAGED as e:
                    warn_damaged("plain-CLIP weights cache", src, e)
                    continue
            if src.is_file():
                files.append((src, f"banks/{bank.name}/{f}"))
    return files


def _copy_checked(src: Path, dst: Path) -> int:
    """Copy ``src`` to ``dst`` and compare both sha256s (a copy changed in transit is an ArtifactError)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    fsync_file(dst)
    if sha256_file(src) != sha256_file(dst):
        raise ArtifactError(f"{dst}: the copy differs from {src} (failing medium?); pack again")
    return dst.stat().st_size


JOURNAL = PACK_JOURNAL  # inside DIR while a copy staged in it moves in (see _commit)
JOURNAL_FORMAT, JOURNAL_VERSION = "coder.pack-journal", 1

# Fault injection: called with the name of each durable step of the commit (tests stop the process there).
_hook: Callable[[str], None] | None = None


def _at(step: str) -> None:
    if _hook is not None:
        _hook(step)


def _commit(tmp: Path, dest: Path) -> None:
    """Move the verified copy into ``dest``; signals wait for it.

    Staged beside ``dest``: one rename. Staged inside an existing ``dest`` (a mount point): a journal
    naming the staging folder and its entries is committed first, then the entries move in with the
    manifest last, so ``dest`` is an artifact only once complete, and a pack killed in between is
    finished by the next ``coder pack`` into ``dest`` (:func:`finish_stopped_pack`).
    """
    with critical():
        if tmp.parent != dest:
            tmp.chmod(0o755)  # mkdtemp makes it 0700
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
            _at("renamed")
            return
        names = sorted((p.name for p in tmp.iterdir()), key=lambda n: (n == MANIFEST_NAME, n))
        atomic_write_json(dest / JOURNAL, {"format": JOURNAL_FORMAT, "format_version": JOURNAL_VERSION,
                                           "staging": tmp.name, "entries": names})
        _at("journal")
        _move_in(dest, tmp, names)


def _move_in(dest: Path, tmp: Path, names: list[str]) -> None:
    for name in names:
        if (tmp / name).exists():
            os.replace(tmp / name, dest / name)
            _at(f"moved {name}")
    fsync_dir(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    (dest / JOURNAL).unlink()
    fsync_dir(dest)
    _at("done")


def finish_stopped_pack(dest: Path) -> bool:
    """Roll forward a commit into ``dest`` that was killed after its journal (the copy was verified before
    the journal was written); True if there was one. A journal of another format is left alone (ArtifactError)."""
    journal = dest / JOURNAL
    if not journal.is_file():
        return False
    rec = read_json(journal)
    names, staging = rec.get("entries"), rec.get("staging", "")
    if rec.get("format") != JOURNAL_FORMAT or not isinstance(names, list) or not staging.startswith(".tmp-pack-") \
            or any(not isinstance(n, str) or n != Path(n).name or n in ("", ".", "..") for n in names):
        raise ArtifactError(f"{journal}: not a coder pack journal this version can finish; move {dest} aside")
    with critical():
        _move_in(dest, dest / staging, names)
    return True


def pack_artifact(artifact_dir, dest: Path, report: Callable[[str], None] = lambda msg: None) -> dict:
    """Copy, verify, move into ``dest`` (which must not exist or be empty); returns a summary.

    A full disk (checked before copying, and on every write) is one StorageError line (exit 3) and leaves
    nothing behind; so is a read-only destination.
    """
    art = load_artifact(artifact_dir)
    dest = resolved(dest)
    with output_lock(dest):  # a second pack into the same place exits 3 naming this one
        return _pack_locked(art, dest, report)


def _pack_locked(art, dest: Path, report: Callable[[str], None]) -> dict:
    if dest.is_dir() and finish_stopped_pack(dest):
        report("finished the pack that was stopped while moving in")
        summary = verify_copy(dest)
        return {**summary, "dest": str(dest), "finished_stopped_pack": True,
                "bytes": sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())}
    if dest.exists() and (not dest.is_dir() or any(not p.name.startswith(".tmp-pack-") for p in dest.iterdir())):
        raise ArtifactError(f"{dest} exists and is not empty; pack into a new directory")
    files = _plan(art)
    tmp = _staging(dest)
    try:
        remove_stale_packs(dest, keep=tmp)
        need = sum(src.stat().st_size for src, _ in files)
        free = shutil.disk_usage(tmp).free
        if free < need:
            raise StorageError(f"no space left on {dest}: the copy needs {need / 1e6:.1f} MB, "
                               f"{free / 1e6:.1f} MB free; free some space or choose another directory")
        with storage_errors(dest):
            total = 0
            for src, rel in files:
                report(f"copying {rel}")
                total += _copy_checked(src, tmp / rel)
            write_manifest(tmp, {k: v for k, v in art.manifest.items() if k != "engines"})
            report("verifying the copy")
            summary = verify_copy(tmp)
            for cache in tmp.rglob(".coder-verified.json"):  # written by the check; the target hashes anew
                cache.unlink()
            _commit(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "dest": str(dest), "bytes": total + (dest / MANIFEST_NAME).stat().st_size}


def remove_stale_packs(dest: Path, keep: Path) -> None:
    """Staging folders an interrupted pack into ``dest`` left (inside or beside it); never anything else."""
    for where in (dest, dest.parent):
        if where.is_dir():
            for p in where.glob(f".tmp-pack-{dest.name}-*"):
                if p.is_dir() and p != keep:
                    shutil.rmtree(p, ignore_errors=True)
