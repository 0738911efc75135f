"""The plain-CLIP classifier W (80-template prompt ensemble), computed on first use and cached in the bank.

CODER's zero-shot head never reads W; only ``coder eval``'s baseline row and the few-shot
adapter do. For ImageNet-1k the ensemble is 80,000 of a bank's 81,826 texts, so banks are
built without it and the first user pays once::

    banks/<name>/clip_w.npz   clip_w (C,D) float32 unit rows, key (JSON): format "coder.clip-weights"
                              v1, texts sha256, text encoder sha256 + encoding version, templates

The templates are the bank's own (``bank.json`` ``clip_templates``: the paper's 80 by default),
so the lazy W equals the one an eager build (``coder bank build --clip-weights``) stores in
``bank.npz``. A stale or damaged cache is recomputed; a read-only bank keeps W in memory.

>>> w = plain_clip_weights(bank)        # doctest: +SKIP
>>> w.shape, w.dtype                    # (1000, 512) float32
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ArtifactError
from ..store import cached
from .rows import KIND_IDS, Rows

FORMAT = "coder.clip-weights"
FORMAT_VERSION = 1
FILE = "clip_w.npz"


def cache_key(bank) -> dict:
    enc = bank.meta["encoder"]
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "texts_sha256": bank.meta["texts_sha256"],
            "encoder_sha256": enc["sha256"], "text_encoding": enc.get("text_encoding"),
            "templates": list(bank.meta.get("clip_templates", []))}


def clip_rows(class_names: list[str], templates: list[str]) -> Rows:
    """One row per (class, template): ``template`` with ``{c}`` -> the class name, as the bank expands it."""
    texts = [t.replace("{c}", name) for name in class_names for t in templates]
    n = len(texts)
    cls = np.repeat(np.arange(len(class_names), dtype=np.int32), len(templates))
    return Rows(texts, np.full(n, KIND_IDS["clip"], np.int8), cls, np.full(n, -1, np.int32), np.full(n, -1, np.int32))


def _read(path: Path, key: dict, n_classes: int) -> np.ndarray | None:
    """The cached W, None when it was computed for other texts/encoder (damaged: raises, see store.cached)."""
    with np.load(path, allow_pickle=False) as z:
        if json.loads(str(z["key"])) != key or z["clip_w"].shape[0] != n_classes:
            return None
        return z["clip_w"].astype(np.float32)


def _write(path: Path, w: np.ndarray, key: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, clip_w=w, key=np.array(json.dumps(key, sort_keys=True)))


def plain_clip_weights(bank, artifact_root: str | Path | None = None,
                       on_progress: Callable[[int, int], None] = lambda done, total: None) -> np.ndarray:
    """(C,D) float32 unit rows: per class the mean of its template embeddings, renormalised;
    ``on_progress(done, total)`` counts the texts encoded now (none when cached)."""
    templates = bank.meta.get("clip_templates")
    if not templates:
        raise ArtifactError(f"{bank.root}: this bank has no plain-CLIP templates; rebuild it with `coder bank build`")
    key, path = cache_key(bank), Path(bank.root) / FILE
    root = Path(artifact_root) if artifact_root is not None else Path(bank.root).parent.parent
    if bank.meta.get("in_memory"):  # a bank changed in memory (Classifier.with_classes): its folder holds another
        return _compute(bank, root, templates, on_progress)
    return cached(path, lambda p: _read(p, key, len(bank.class_names)),
                  lambda: _compute(bank, root, templates, on_progress), lambda p, w: _write(p, w, key),
                  what="plain-CLIP weights cache")


def _compute(bank, root: Path, templates: list[str], on_progress) -> np.ndarray:
    from .bank import encode_rows
    from .fold import _normalize
    from .text_encoder import TextEncoder

    encoder = TextEncoder.load(root, bank.meta["encoder"]["precision"])
    if encoder.encoder_sha256 != bank.meta["encoder"]["sha256"]:
        raise ArtifactError(f"{bank.root} was built with another text encoder than {root}; rebuild the bank")
    rows = clip_rows(bank.class_names, templates)
    emb, _ = encode_rows(rows, encoder, Path(bank.root).parent, on_progress)
    sums = np.zeros((len(bank.class_names), emb.shape[1]), np.float64)
    np.add.at(sums, rows.cls, emb.astype(np.float64))
    return _normalize(sums)
