"""The bank of a class list (``coder classify --classes``, per-request lists on Triton), cached by content.

:func:`bank_for_classes` gives the bank ``coder texts init --classes FILE`` + ``coder texts synonyms -a
ARTIFACTS`` + ``coder bank build`` would give for those names, built once and kept under
``banks/.classes/<content key>/`` (not a named bank: ``--bank`` never picks it up).

>>> bank_for_classes("coder-artifacts/ViT-B-32__openai", ["cat", "dog", "zebra"]).class_names   # doctest: +SKIP
['cat', 'dog', 'zebra']
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ArtifactError, ConfigError
from .bank import Bank
from .live import clean_name


def classes_key(artifact, names: Sequence[str], preset: str, precision: str) -> str:
    """Content key of the bank for a class list: names (cleaned, in order), preset, text encoder, tokenizer,
    text encoding, bank format and the WordNet files the synonyms come from."""
    import hashlib
    import json

    from .bank import FORMAT_VERSION
    from .text_encoder import TEXT_ENCODING_VERSION, tokenizer_key
    from .wordnet import DEFAULT_DIR

    data_noun = DEFAULT_DIR / "data.noun"
    wn = [str(data_noun), data_noun.stat().st_size, data_noun.stat().st_mtime_ns] if data_noun.is_file() else None
    enc = artifact.encoder("text", precision).name
    key = {"format": "coder.classes-bank", "bank_format": FORMAT_VERSION, "names": [clean_name(n) for n in names],
           "preset": preset, "encoder_sha256": artifact.manifest["files"][enc]["sha256"],
           "tokenizer": tokenizer_key(artifact), "text_encoding": TEXT_ENCODING_VERSION, "wordnet": wn}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def bank_for_classes(artifact_dir, names: Sequence[str], preset: str = "default", precision: str = "fp32",
                     text_encoder=None) -> Bank:
    """The bank ``coder texts init --classes FILE`` + ``coder texts synonyms -a ARTIFACTS`` + ``coder bank build``
    give for ``names`` (FILE: one name per line), cached under ``banks/.classes/<content key>/``: a repeat call
    only loads it. Unwritable artifact: built and kept in memory with a warning. ``text_encoder``: a loaded
    :class:`~.text_encoder.TextEncoder` of ``precision`` to reuse (a server building many lists).
    """
    from ..manifest import load_artifact
    from ..store import atomic_path, cached
    from .bank import bank_meta, load_bank, texts_arrays
    from .texts import names_texts

    names = [clean_name(n) for n in names]
    art = load_artifact(artifact_dir)
    key = classes_key(art, names, preset, precision)
    root = art.root / "banks" / ".classes" / key[:24]

    def load(path: Path) -> Bank:
        try:
            return load_bank(path.parent, art)
        except ArtifactError as e:
            raise ValueError(str(e)) from None  # damaged: rebuilt by `cached`

    def build() -> Bank:
        from .text_encoder import TextEncoder
        from .wordnet import WordNet, add_synonyms

        texts = names_texts(names, f"classes-{key[:12]}", preset)
        encoder = text_encoder or TextEncoder.load(art.root, precision)
        try:
            texts = add_synonyms(texts, WordNet(), encoder)[0]
        except ConfigError:
            pass  # WordNet not installed: names only
        arrays, rows, n_new = texts_arrays(texts, encoder, art.root / "banks")
        meta = bank_meta(texts, encoder, precision, rows, arrays, n_new)
        return Bank(root, {**meta, "npz_sha256": meta["content_sha256"]}, arrays, art.root)

    def save(tmp: Path, bank: Bank) -> None:
        import json

        with atomic_path(root / "bank.npz") as npz:
            with open(npz, "wb") as f:
                np.savez(f, **bank.arrays)
        from ..store import sha256_file

        bank.meta["npz_sha256"] = sha256_file(root / "bank.npz")
        tmp.write_text(json.dumps(bank.meta, indent=2) + "\n", encoding="utf-8")

    return cached(root / "bank.json", load, build, save, what="class-list bank")
