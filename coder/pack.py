"""``coder pack ARTIFACT DIR``: a portable copy of an artifact to carry to another machine (a Jetson).

Copied: ``manifest.json`` (its ``engines`` record dropped: engines are per GPU and TensorRT
version), every file the manifest lists (encoders, tokenizer vocabulary) and each bank's
``bank.json`` + ``bank.npz`` (+ ``clip_w.npz`` when computed). Not copied: ``engines/``,
embedding caches, hash caches, export state. The copy is written beside ``DIR`` and renamed
into place once every file's sha256 matched the manifest (and each bank its ``bank.json``), so
a failed or interrupted pack never leaves a half copy under ``DIR``. On the target the same
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

from .errors import ArtifactError
from .manifest import MANIFEST_NAME, load_artifact, write_manifest

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


def pack_artifact(artifact_dir, dest: Path, report: Callable[[str], None] = lambda msg: None) -> dict:
    """Copy, verify, rename into ``dest`` (which must not exist or be empty); returns a summary."""
    art = load_artifact(artifact_dir)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArtifactError(f"{dest} exists and is not empty; pack into a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        total = 0
        for name in art.manifest["files"]:
            report(f"copying {name}")
            shutil.copy2(art.file(name), tmp / name)  # art.file: the source is checked first
            total += (tmp / name).stat().st_size
        for bank in _bank_dirs(art.root):
            (tmp / "banks" / bank.name).mkdir(parents=True)
            for f in BANK_FILES:
                if (bank / f).is_file():
                    shutil.copy2(bank / f, tmp / "banks" / bank.name / f)
                    total += (bank / f).stat().st_size
        manifest = {k: v for k, v in art.manifest.items() if k != "engines"}
        write_manifest(tmp, manifest)
        report("verifying the copy")
        summary = verify_copy(tmp)
        for cache in tmp.rglob(".coder-verified.json"):  # written by the check; the target hashes anew
            cache.unlink()
        if dest.exists():
            dest.rmdir()
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "dest": str(dest), "bytes": total + (dest / MANIFEST_NAME).stat().st_size}
