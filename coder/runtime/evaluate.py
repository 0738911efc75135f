"""``coder eval``: plain CLIP vs CODER stage 1 vs CODER + rerank on a labelled set.

Reports top-1/top-5 of each, the fraction of images the gate sent to rerank,
and how many rerank decisions turned right->wrong and wrong->right. The most
frequent stage-1 confusions (true class, predicted class) are returned so
``coder texts generate --pairs-file`` can ask the LLM for exactly those pairs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InputError
from .classifier import Classifier
from .datasets import Dataset, match_classes
from .head import rerank, stage1_scores
from .encoder import embed_items


@dataclass(frozen=True)
class EvalReport:
    n: int
    rows: dict[str, dict[str, float]]  # method -> {"top1", "top5"}
    reranked_fraction: float
    right_to_wrong: int
    wrong_to_right: int
    confusions: list[tuple[str, str, int]]  # (true, predicted, count), most frequent first
    missing_classes: list[str]
    failures: int


def _topk_acc(scores: np.ndarray, y: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def embed_dataset(clf: Classifier, ds: Dataset, mapping: dict[str, int], batch: int = 32,
                  on_batch: Callable[[int], None] = lambda n: None) -> tuple[np.ndarray, np.ndarray, int]:
    """Unit embeddings and bank labels of every item whose class is in the bank."""
    items = [(x, mapping[c]) for x, c in ds.items if c in mapping]
    emb, kept, failures = embed_items(clf.encoder, [x for x, _ in items], batch, on_batch)
    return emb, np.asarray([items[i][1] for i in kept], np.int64), len(failures)


def evaluate(clf: Classifier, ds: Dataset, on_batch: Callable[[int], None] = lambda n: None,
             n_confusions: int = 50) -> EvalReport:
    mapping, missing = match_classes(ds.classes, clf.class_names)
    f, y, failures = embed_dataset(clf, ds, mapping, on_batch=on_batch)
    if len(y) == 0:
        raise InputError(f"no evaluable images: none of the dataset classes match the bank ({', '.join(missing[:5])})")
    clip = 100.0 * f @ clf.bank.clip_w.T
    s1 = stage1_scores(f, clf.bank)
    rr = rerank(f, s1, clf.bank, clf.tau, clf.k)  # zero-shot rows; the adapter gets its own row
    final = s1.copy()
    final[np.arange(len(y)), rr.labels] = s1.max(axis=1) + 1.0  # final label first; the rest by stage 1
    stage1_right, final_right = rr.top[:, 0] == y, rr.labels == y
    methods = [("clip", clip), ("coder_stage1", s1), ("coder_rerank", final)]
    if clf.adapter is not None:
        methods.append((f"{clf.adapter.kind}_adapter_{clf.adapter.meta.get('shots')}shot",
                        clf.adapter.logits(f, clf.bank.clip_w)))
    names = clf.class_names
    conf = Counter((names[t], names[p]) for t, p in zip(y, rr.top[:, 0]) if t != p)
    return EvalReport(
        n=len(y),
        rows={m: {"top1": _topk_acc(s, y, 1), "top5": _topk_acc(s, y, 5)} for m, s in methods},
        reranked_fraction=float(rr.fired.mean()),
        right_to_wrong=int((stage1_right & ~final_right).sum()),
        wrong_to_right=int((~stage1_right & final_right).sum()),
        confusions=[(t, p, n) for (t, p), n in conf.most_common(n_confusions)],
        missing_classes=missing,
        failures=failures,
    )
