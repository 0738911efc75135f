"""Few-shot cache adapters (training-free): CODER-Adapter and plain Tip-Adapter.

CODER-Adapter (METHOD.md, "Few-shot CODER-Adapter" and "Folding"): with T the
(M,D) name+att+ana text embeddings, a support feature f_j has the key
``k_j = normalize(T f_j)``; the query affinity ``q . k_j`` with
``q = normalize(T f)`` equals ``f . (T^T k_j) / ||T f||`` and the per-query
min-max normalisation cancels the positive factor, so only the folded keys
``K_j = T^T k_j`` (N,D) are stored and ``A = minmax(f K^T)``.

Logits: ``100 f W^T + alpha * exp(-beta (1 - A)) @ onehot(labels)``.
Tip-Adapter uses the CLIP features themselves as keys and ``A = f . f_j``.

The adapter file is one ``.npz`` (no pickles): arrays plus a UTF-8 JSON
``meta`` (format ``coder.adapter`` v1, kind, alpha, beta, the bank/encoder
hashes it was fitted with).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from ..store import atomic_path
from ..text_bank.rows import KIND_IDS
from .encoder import l2_normalize

FORMAT = "coder.adapter"
FORMAT_VERSION = 1
KINDS = ("coder", "tip")


def coder_text_matrix(bank) -> np.ndarray:
    """T: the raw name, att and ana embeddings of the bank (M, D)."""
    kinds = [KIND_IDS["name"], KIND_IDS["att"], KIND_IDS["ana"]]
    return bank.raw_emb[np.isin(bank.raw_kind, kinds)]


def fold_keys(support: np.ndarray, T: np.ndarray) -> np.ndarray:
    """(N,D) unit support features -> (N,D) folded CODER keys ``T^T normalize(T f_j)``."""
    return (l2_normalize(support @ T.T) @ T).astype(np.float32)


def affinity(f: np.ndarray, keys: np.ndarray, kind: str) -> np.ndarray:
    """(B,N) affinities in [0,1] (coder: per-row min-max) or cosines (tip)."""
    a = f @ keys.T
    if kind == "tip":
        return a
    lo, hi = a.min(axis=1, keepdims=True), a.max(axis=1, keepdims=True)
    return (a - lo) / np.maximum(hi - lo, 1e-12)


def cache_term(a: np.ndarray, onehot: np.ndarray, beta: float) -> np.ndarray:
    return np.exp(-beta * (1.0 - a)) @ onehot


@dataclass(frozen=True)
class Adapter:
    kind: str
    keys: np.ndarray  # (N,D)
    labels: np.ndarray  # (N,) bank class ids
    alpha: float
    beta: float
    meta: dict[str, Any]

    @property
    def onehot(self) -> np.ndarray:
        n_classes = int(self.meta["classes"])
        return np.eye(n_classes, dtype=np.float32)[self.labels]

    @cached_property
    def _groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys sorted by class (copied once), the classes present and where each class's run starts."""
        order = np.argsort(self.labels, kind="stable")
        present, starts = np.unique(self.labels[order], return_index=True)
        return np.ascontiguousarray(self.keys[order]), present, starts

    def logits(self, f: np.ndarray, clip_w: np.ndarray) -> np.ndarray:
        """(B,D) unit features -> (B,C) few-shot logits.

        The one-hot product is a per-class segment sum: a dense (N, C) one-hot would be
        64 MB at 16 shots x 1000 classes.
        """
        keys, present, starts = self._groups
        weights = np.exp(-self.beta * (1.0 - affinity(f, keys, self.kind)))
        cache = np.zeros((len(f), clip_w.shape[0]), np.float32)
        cache[:, present] = np.add.reduceat(weights, starts, axis=1)
        return 100.0 * f @ clip_w.T + self.alpha * cache


def search(f_val: np.ndarray, y_val: np.ndarray, clip_w: np.ndarray, keys: np.ndarray, labels: np.ndarray,
           kind: str, n_classes: int, rounds: int = 3, points: int = 30) -> tuple[float, float, float]:
    """Grid search of (alpha, beta) on VALIDATION features: beta in [0.1, 200), alpha in [0.1, 20),
    then ``rounds - 1`` zooms around the best. Returns (alpha, beta, val accuracy)."""
    clip = 100.0 * f_val @ clip_w.T
    a = affinity(f_val, keys, kind)
    onehot = np.eye(n_classes, dtype=np.float32)[labels]
    b_lo, b_hi, a_lo, a_hi = 0.1, 200.0, 0.1, 20.0
    best = (-1.0, 1.0, 1.0)
    for _ in range(rounds):
        betas = np.linspace(b_lo, b_hi, points, endpoint=False)
        alphas = np.linspace(a_lo, a_hi, points, endpoint=False)
        for beta in betas:
            cache = cache_term(a, onehot, beta)  # (V,C)
            preds = np.argmax(clip[None] + alphas[:, None, None] * cache[None], axis=2)  # (A,V)
            acc = (preds == y_val[None]).mean(axis=1)
            i = int(np.argmax(acc))
            if acc[i] > best[0]:
                best = (float(acc[i]), float(alphas[i]), float(beta))
        b_step, a_step = (b_hi - b_lo) / points, (a_hi - a_lo) / points
        b_lo, b_hi = max(1e-3, best[2] - 2 * b_step), best[2] + 2 * b_step
        a_lo, a_hi = max(1e-3, best[1] - 2 * a_step), best[1] + 2 * a_step
    return best[1], best[2], best[0]


def save_adapter(path: str | os.PathLike, adapter: Adapter) -> None:
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": adapter.kind, "alpha": adapter.alpha,
            "beta": adapter.beta, **adapter.meta}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keys=adapter.keys, labels=adapter.labels.astype(np.int32),
                     meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def load_adapter(path: str | os.PathLike, bank=None) -> Adapter:
    """Read an adapter; with ``bank`` also check it was fitted with that bank and encoder."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            keys, labels = z["keys"], z["labels"].astype(np.int64)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such adapter file (create one with `coder fit`)") from None
    except (OSError, ValueError, KeyError) as e:
        raise ArtifactError(f"{path}: not a coder adapter ({e})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: adapter format {meta.get('format')!r} v{meta.get('format_version')!r}, "
                            f"this coder reads {FORMAT} v{FORMAT_VERSION}; re-run `coder fit`")
    if bank is not None and (meta.get("bank_sha256") != bank.meta["npz_sha256"]
                             or meta.get("encoder_sha256") != bank.meta["encoder"]["sha256"]):
        raise ArtifactError(f"{path} was fitted with another bank or encoder than {bank.root}; "
                            "re-run `coder fit` against this artifact")
    return Adapter(meta["kind"], keys, labels, float(meta["alpha"]), float(meta["beta"]), meta)
