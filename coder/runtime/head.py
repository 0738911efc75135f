"""The CODER head on a folded bank: stage-1 scores and the gated one-to-one rerank.

Shapes: ``f`` (B,D) unit rows; a bank with C classes, Nn name/synonym rows and
P stored ordered pairs. Everything is a few matmuls plus a segment max.

>>> s1 = stage1_scores(f, bank)          # (B, C) float32, carries the x100 of METHOD.md
>>> out = rerank(f, s1, bank, tau=0.1)   # RerankResult with (B,) labels
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _segment_starts(segment_ids: np.ndarray) -> np.ndarray:
    """Start offset of each run in a sorted id array (every class has a name row)."""
    return np.flatnonzero(np.r_[True, segment_ids[1:] != segment_ids[:-1]])


def stage1_scores(f: np.ndarray, bank) -> np.ndarray:
    """``100 * (sum_G f.t + max_N f.t) / (|G| + 1)`` per class (METHOD.md stage 1)."""
    g = f @ bank.g_sum.T
    n = f @ bank.n_emb.T
    n_max = np.maximum.reduceat(n, _segment_starts(bank.n_class), axis=1)
    return (100.0 * (g + n_max) / (bank.g_count + 1.0)).astype(np.float32)


def softmax_gap(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k class ids (B,k) by score (ties -> lower id) and p(1) - p(2) of softmax(scores)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    z = scores - scores.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    top_p = np.take_along_axis(p, top[:, :2], axis=1)
    gap = top_p[:, 0] - (top_p[:, 1] if top_p.shape[1] > 1 else 0.0)
    return top, gap.astype(np.float32)


def pair_lookup(bank, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys ``from * C + to`` and the pair rows they point to."""
    keys = bank.pair_from.astype(np.int64) * n_classes + bank.pair_to
    if len(keys) < 2 or np.all(keys[1:] > keys[:-1]):  # banks store pairs sorted: skip the sort
        return keys, np.arange(len(keys))
    order = np.argsort(keys)
    return keys[order], order


def _pair_rows(keys: np.ndarray, rows: np.ndarray, a: np.ndarray, b: np.ndarray, n_classes: int) -> np.ndarray:
    """Row of pair (a -> b) for arrays a, b; -1 where not stored."""
    q = a.astype(np.int64) * n_classes + b
    pos = np.searchsorted(keys, q)
    pos_c = np.minimum(pos, max(len(keys) - 1, 0))
    hit = (len(keys) > 0) & (keys[pos_c] == q) if len(keys) else np.zeros(q.shape, bool)
    return np.where(hit, rows[pos_c] if len(rows) else -1, -1)


@dataclass(frozen=True)
class RerankResult:
    labels: np.ndarray  # (B,) final class ids
    top: np.ndarray  # (B,k) stage-1 top-k ids
    gap: np.ndarray  # (B,) softmax gap p1 - p2
    fired: np.ndarray  # (B,) bool, gap < tau
    scores: np.ndarray  # (B,k) rerank scores r(c) of the top-k (0 where the gate did not fire)


def rerank(f: np.ndarray, s1: np.ndarray, bank, tau: float, k: int = 5) -> RerankResult:
    """Gated one-to-one rerank (METHOD.md stage 2); replaces stage 1 where ``gap < tau``."""
    n_classes = s1.shape[1]
    top, gap = softmax_gap(s1, k)
    kk = top.shape[1]
    fired = (gap < tau) & (kk > 1)  # one class: nothing to rerank
    r = np.zeros(top.shape, np.float32)
    labels = top[:, 0].copy()
    if fired.any() and len(bank.pair_vec):
        keys, rows = pair_lookup(bank, n_classes)
        idx = np.flatnonzero(fired)
        t = top[idx]  # (b,k)
        a, b = t[:, :, None], t[:, None, :]  # c, c'
        fwd = _pair_rows(keys, rows, np.broadcast_to(a, (len(idx), kk, kk)), np.broadcast_to(b, (len(idx), kk, kk)),
                         n_classes)
        bwd = np.swapaxes(fwd, 1, 2)
        # Gather only the <= k*(k-1) pair vectors this image needs instead of projecting onto all P pairs.
        both = (fwd >= 0) & (bwd >= 0)
        vec = bank.pair_vec[np.maximum(fwd, 0)] - bank.pair_vec[np.maximum(bwd, 0)]  # (b,k,k,D)
        bracket = np.where(both, np.einsum("bijd,bd->bij", vec, f[idx]), 0.0)
        r[idx] = (bracket.sum(axis=2) / (kk - 1)).astype(np.float32)
        # argmax keeps the first maximum: ties go to the class ranked higher in stage 1.
        labels[idx] = t[np.arange(len(idx)), np.argmax(r[idx], axis=1)]
    return RerankResult(labels, top, gap, fired, r)


def gate(top: np.ndarray, gap: np.ndarray, r_all: np.ndarray, tau: float) -> RerankResult:
    """The rerank decision from precomputed r(c) of every top-k (a fused graph's outputs).

    Same result as :func:`rerank`: where ``gap >= tau`` (or k = 1) the stage-1 winner stays
    and the scores read 0.
    """
    fired = (gap < tau) & (top.shape[1] > 1)
    r = np.where(fired[:, None], r_all, 0.0).astype(np.float32)
    picked = top[np.arange(len(top)), np.argmax(r, axis=1)] if len(top) else top[:, 0]
    return RerankResult(np.where(fired, picked, top[:, 0]), top, gap.astype(np.float32), fired, r)
