"""Few-shot on real images: zero-shot CODER vs Tip-Adapter vs CODER-Adapter, K = 1, 4, 16.

    python benchmarks/bench_fewshot.py --artifacts coder-artifacts/ViT-B-32__none [--test 1000] [--json]

Fashion-MNIST (Debian ``dataset-fashion-mnist``): support shots and a validation split from the
training set (alpha/beta searched on validation only), top-1 on ``--test`` held-out test images.
The artifact needs a fashion-mnist bank (`coder bank build ... --texts` from
`coder texts init --classes fashion-mnist`). Also times fit per support image, the search, and
the adapter's per-query overhead vs the encoder at 16 shots x 1000 classes (synthetic keys).
"""

from __future__ import annotations

import time

import numpy as np

from common import script  # also puts the repository on sys.path

from coder.bench import median_ms  # noqa: E402
from coder.runtime.adapter import Adapter, fold_keys  # noqa: E402
from coder.runtime.classifier import Classifier  # noqa: E402
from coder.runtime.datasets import fashion_mnist, match_classes, subset  # noqa: E402
from coder.runtime.encoder import l2_normalize  # noqa: E402
from coder.runtime.fewshot import build_adapter, encode_augmented, encode_plain, split_support_val  # noqa: E402
from coder.runtime.head import stage1_scores  # noqa: E402


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(scores, axis=1) == y).mean())


def run(artifacts: str, test: int, val: int, augment_epochs: int, seed: int) -> dict:
    n_test, n_val, epochs = test, val, augment_epochs
    clf = Classifier.load(artifacts, bank="fashion-mnist", backend="cpu")
    train, test = fashion_mnist("train"), fashion_mnist("test")
    mapping, _ = match_classes(train.classes, clf.class_names)
    support, val, _ = split_support_val(train, mapping, 16, 0.02, seed, n_val)
    t0 = time.perf_counter()
    sup_f = encode_augmented(clf, support, epochs, seed)
    t_fit_per_image = (time.perf_counter() - t0) / len(support)
    sup_y = np.array([y for _, y in support])
    val_f, val_y = encode_plain(clf, val)
    test_items = [(x, mapping[c]) for x, c in subset(test.items, n_test, seed + 1)]
    test_f, test_y = encode_plain(clf, test_items)
    rows = {"zero-shot CODER": {k: accuracy(stage1_scores(test_f, clf.bank), test_y) for k in (1, 4, 16)}}
    searches = []
    for kind, label in (("tip", "Tip-Adapter"), ("coder", "CODER-Adapter")):
        rows[label] = {}
        for k in (1, 4, 16):
            # support is class-major with 16 per class: the first k of each class form the k-shot set
            idx = np.concatenate([np.flatnonzero(sup_y == c)[:k] for c in np.unique(sup_y)])
            ad, _, t_search = build_adapter(kind, clf, sup_f[idx], sup_y[idx], val_f, val_y, {"shots": k})
            searches.append(t_search)
            rows[label][k] = accuracy(ad.logits(test_f, clf.bank.clip_w), test_y)
    return {"n_test": len(test_y), "n_val": len(val_y), "augment_epochs": epochs, "rows": rows,
            "fit_ms_per_support_image": 1e3 * t_fit_per_image, "search_s_median": float(np.median(searches)),
            "overhead": overhead(clf)}


def overhead(clf: Classifier, classes: int = 1000, shots: int = 16) -> dict:
    """Adapter cost per query at 16 shots x 1000 classes (synthetic keys) vs the encoder, batch 1."""
    rng = np.random.default_rng(0)
    d = clf.encoder.artifact.embed_dim
    T = l2_normalize(rng.standard_normal((classes * 50, d)).astype(np.float32))
    keys = fold_keys(l2_normalize(rng.standard_normal((classes * shots, d)).astype(np.float32)), T)
    ad = Adapter("coder", keys, np.repeat(np.arange(classes), shots), 1.7, 7.0, {"classes": classes})
    W = l2_normalize(rng.standard_normal((classes, d)).astype(np.float32))
    f = l2_normalize(rng.standard_normal((1, d)).astype(np.float32))
    t_ad = median_ms(lambda: ad.logits(f, W), 50)
    size = clf.encoder.preprocess_config.size
    x = np.zeros((1, 3, *size), np.float32)
    t_enc = median_ms(lambda: clf.encoder.engine.run(x), 10)
    return {"adapter_ms": t_ad, "encoder_ms": t_enc, "pct_of_encoder": 100 * t_ad / t_enc,
            "keys_mb": keys.nbytes / 2**20, "unfolded_keys_mb": classes * shots * len(T) * 4 / 2**20}


def render(r: dict) -> None:
    print(f"Fashion-MNIST, {r['n_test']} test images, top-1 (alpha/beta from {r['n_val']} validation images)")
    print(f"{'method':<16} {'1-shot':>7} {'4-shot':>7} {'16-shot':>8}")
    for name, accs in r["rows"].items():
        print(f"{name:<16} " + " ".join(f"{100 * accs[k]:>6.1f}%" for k in (1, 4)) + f" {100 * accs[16]:>7.1f}%")
    o = r["overhead"]
    print(f"fit {r['fit_ms_per_support_image']:.0f} ms per support image, search {r['search_s_median']:.2f} s; "
          f"adapter at 16 shots x 1000 classes {o['adapter_ms']:.2f} ms/query = {o['pct_of_encoder']:.1f}% of the "
          f"encoder; keys {o['keys_mb']:.0f} MB folded vs {o['unfolded_keys_mb']:.0f} MB as CODER vectors")


if __name__ == "__main__":
    script(__doc__, run, render, test=1000, val=500, augment_epochs=1, seed=0)
