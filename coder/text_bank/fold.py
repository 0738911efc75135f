"""Fold raw text embeddings into the CODER head (METHOD.md, "Folding").

Everything after the encoder is linear in ``f`` except a segment max, a top-k
and a softmax, so per class we keep:

* ``g_sum`` (C,D): sum of the att+ana rows, and ``g_count`` (C,);
* ``n_emb`` (Nn,D) with ``n_class`` (Nn,), sorted by class: name + synonym rows
  (the segment max runs over them);
* ``pair_vec`` (P,D): the mean of the texts of each stored ordered pair, with
  ``pair_from``/``pair_to``;
* ``clip_w`` (C,D): per-class mean of the prompt-ensemble rows, renormalised.
"""

from __future__ import annotations

import numpy as np

from .rows import KIND_IDS, Rows


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def fold(rows: Rows, emb: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Raw unit-norm embeddings (T,D) + row metadata -> the arrays of the folded head."""
    d = emb.shape[1]
    kind, cls = rows.kind, rows.cls
    g_mask = (kind == KIND_IDS["att"]) | (kind == KIND_IDS["ana"])
    g_sum = np.zeros((n_classes, d), np.float64)
    np.add.at(g_sum, cls[g_mask], emb[g_mask].astype(np.float64))
    g_count = np.bincount(cls[g_mask], minlength=n_classes).astype(np.int32)

    n_idx = np.flatnonzero((kind == KIND_IDS["name"]) | (kind == KIND_IDS["syn"]))
    n_idx = n_idx[np.argsort(cls[n_idx], kind="stable")]

    clip_mask = kind == KIND_IDS["clip"]
    clip_sum = np.zeros((n_classes, d), np.float64)
    np.add.at(clip_sum, cls[clip_mask], emb[clip_mask].astype(np.float64))

    p_mask = kind == KIND_IDS["pair"]
    n_pairs = int(rows.group[p_mask].max()) + 1 if p_mask.any() else 0
    pair_sum = np.zeros((n_pairs, d), np.float64)
    np.add.at(pair_sum, rows.group[p_mask], emb[p_mask].astype(np.float64))
    pair_n = np.bincount(rows.group[p_mask], minlength=n_pairs)
    first = {g: i for i, g in reversed(list(enumerate(rows.group))) if g >= 0}
    pair_from = np.array([cls[first[g]] for g in range(n_pairs)], np.int32)
    pair_to = np.array([rows.other[first[g]] for g in range(n_pairs)], np.int32)
    return {
        "g_sum": g_sum.astype(np.float32),
        "g_count": g_count,
        "n_emb": emb[n_idx].astype(np.float32),
        "n_class": cls[n_idx].astype(np.int32),
        "pair_vec": (pair_sum / np.maximum(pair_n, 1)[:, None]).astype(np.float32),
        "pair_from": pair_from,
        "pair_to": pair_to,
        "clip_w": _normalize(clip_sum),
    }
