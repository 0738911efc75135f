"""CODER head cost at ImageNet scale vs the image encoder and vs the naive full-matrix head.

    python benchmarks/bench_head.py --artifacts coder-artifacts/ViT-B-32__none [--json]

Synthetic bank: 1000 classes, ~50 texts per class (2 name/synonym rows, 48 att/ana rows), 20k ordered
pairs with 3 attributes x 7 templates each, D from the artifact. Batch 1, CPU, medians; the head
always reranks (tau = 1.01) so the figure is the worst case. Also reports folded vs raw matrix size.
"""

from __future__ import annotations

import numpy as np

from common import script  # also puts the repository on sys.path

from coder.timing import median_ms  # noqa: E402
from coder.runtime.encoder import ImageEncoder  # noqa: E402
from coder.runtime.head import rerank, stage1_scores  # noqa: E402
from coder.text_bank.fold import fold  # noqa: E402
from coder.text_bank.rows import KIND_IDS, Rows  # noqa: E402

C, N_PER, G_PER, PAIRS, PAIR_TEXTS = 1000, 2, 48, 20_000, 21


def synthetic_rows(dim: int, seed: int = 0) -> tuple[Rows, np.ndarray]:
    rng = np.random.default_rng(seed)
    kind = np.r_[np.tile([KIND_IDS["name"]] + [KIND_IDS["syn"]] * (N_PER - 1) + [KIND_IDS["att"]] * G_PER, C),
                 np.full(PAIRS * PAIR_TEXTS, KIND_IDS["pair"])].astype(np.int8)
    cls_of_class_rows = np.repeat(np.arange(C), N_PER + G_PER)
    flat = rng.choice(C * C, size=PAIRS * 3, replace=False)
    flat = np.unique(flat[(flat // C) != (flat % C)])[:PAIRS]
    src, dst = flat // C, flat % C
    cls = np.r_[cls_of_class_rows, np.repeat(src, PAIR_TEXTS)].astype(np.int32)
    other = np.r_[np.full(len(cls_of_class_rows), -1), np.repeat(dst, PAIR_TEXTS)].astype(np.int32)
    group = np.r_[np.full(len(cls_of_class_rows), -1), np.repeat(np.arange(len(flat)), PAIR_TEXTS)].astype(np.int32)
    emb = rng.standard_normal((len(kind), dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return Rows([""] * len(kind), kind, cls, other, group), emb


class _Bank:
    def __init__(self, arrays):
        self.__dict__.update(arrays)


def naive_head(f: np.ndarray, emb: np.ndarray, rows: Rows) -> np.ndarray:
    """What an unfolded runtime does: cosines to every text, then per-class reductions."""
    sims = emb @ f[0]
    g = np.bincount(rows.cls[rows.kind == KIND_IDS["att"]], sims[rows.kind == KIND_IDS["att"]], minlength=C)
    n_mask = rows.kind <= KIND_IDS["syn"]
    n = np.full(C, -np.inf)
    np.maximum.at(n, rows.cls[n_mask], sims[n_mask])
    pair_mean = np.bincount(rows.group[rows.group >= 0], sims[rows.group >= 0]) / PAIR_TEXTS
    return 100 * (g + n) / (G_PER + 1), pair_mean


def run(artifacts: str, repeats: int) -> dict:
    enc = ImageEncoder.load(artifacts)
    dim = enc.artifact.embed_dim
    rows, emb = synthetic_rows(dim)
    bank = _Bank(fold(rows, emb, C))
    size = tuple(enc.preprocess_config.size)
    x = np.random.default_rng(1).standard_normal((1, 3, *size)).astype(np.float32)
    f = enc.encode_pixels(x)
    t_enc = median_ms(lambda: enc.engine.run(x), repeats)
    t_head = median_ms(lambda: rerank(f, stage1_scores(f, bank), bank, tau=1.01, k=5), repeats * 20)
    t_naive = median_ms(lambda: naive_head(f, emb, rows), repeats)
    folded = sum(bank.__dict__[k].size for k in ("g_sum", "n_emb", "pair_vec", "clip_w"))
    return {"architecture": enc.artifact.architecture, "backend": enc.backend, "classes": C,
            "texts": int(len(emb)), "pairs": int(len(bank.pair_vec)), "encoder_ms": t_enc, "head_ms": t_head,
            "head_pct_of_encoder": 100 * t_head / t_enc, "naive_head_ms": t_naive,
            "folded_speedup_vs_naive": t_naive / t_head, "raw_matrix_mb": emb.nbytes / 2**20,
            "folded_mb": folded * 4 / 2**20, "folded_over_raw": folded / emb.size}


def render(r: dict) -> None:
    print(f"{r['architecture']} ({r['backend']}), {r['classes']} classes, {r['texts']} texts, {r['pairs']} pairs")
    print(f"encoder {r['encoder_ms']:.1f} ms | CODER head (stage 1 + rerank) {r['head_ms']:.3f} ms "
          f"= {r['head_pct_of_encoder']:.2f}% of encoder | naive full-matrix head {r['naive_head_ms']:.1f} ms "
          f"({r['folded_speedup_vs_naive']:.0f}x slower)")
    print(f"raw text matrix {r['raw_matrix_mb']:.0f} MB, folded head {r['folded_mb']:.1f} MB "
          f"(ratio 1/{1 / r['folded_over_raw']:.0f})")


if __name__ == "__main__":
    script(__doc__, run, render, repeats=10)
