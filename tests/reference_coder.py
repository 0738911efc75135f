"""CODER written straight from METHOD.md with the FULL raw text matrix (no folding).

Deliberately plain loops: this is the oracle the folded runtime is checked against.
Rows are described by parallel arrays ``kind`` (name 0, syn 1, att 2, ana 3,
pair 4, clip 5), ``cls`` and ``other`` (the c' of a pair row).
"""

import numpy as np

NAME, SYN, ATT, ANA, PAIR = 0, 1, 2, 3, 4


def stage1(f, emb, kind, cls, n_classes):
    """score_c = 100 * (sum_{t in G_c} f.t + max_{t in N_c} f.t) / (|G_c| + 1)."""
    sims = emb.astype(np.float64) @ f.astype(np.float64)  # CODER(f): cosines to all texts
    scores = np.zeros(n_classes)
    for c in range(n_classes):
        g = sims[(cls == c) & ((kind == ATT) | (kind == ANA))]
        n = sims[(cls == c) & ((kind == NAME) | (kind == SYN))]
        scores[c] = 100.0 * (g.sum() + n.max()) / (len(g) + 1)
    return scores


def rerank(f, scores, emb, kind, cls, other, tau, k=5):
    """Returns (label, fired, top-k list, r-scores list)."""
    order = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
    p = np.exp(scores - scores.max())
    p = p / p.sum()
    gap = p[order[0]] - (p[order[1]] if len(order) > 1 else 0.0)
    top = order[:k]
    if not gap < tau or len(top) < 2:
        return order[0], False, top, [0.0] * len(top)
    sims = emb.astype(np.float64) @ f.astype(np.float64)

    def mean_pair(a, b):
        m = (kind == PAIR) & (cls == a) & (other == b)
        return sims[m].mean() if m.any() else None

    r = []
    for c in top:
        total = 0.0
        for c2 in top:
            if c2 == c:
                continue
            fwd, bwd = mean_pair(c, c2), mean_pair(c2, c)
            total += 0.0 if fwd is None or bwd is None else fwd - bwd
        r.append(total / (len(top) - 1))
    best = max(range(len(top)), key=lambda i: (r[i], -i))  # ties -> higher stage-1 rank
    return top[best], True, top, r
