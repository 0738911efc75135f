"""``coder fit``: sample K shots per class, encode them under E augmentations, fold the keys,
search alpha/beta on a validation split (never the evaluation split), return the adapter.

>>> result = fit(clf, train, shots=16, val=None, val_fraction=0.1, epochs=2, seed=0)   # doctest: +SKIP
>>> result.adapter.alpha, result.val_accuracy
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import InputError
from .adapter import Adapter, coder_text_matrix, fold_keys, search
from .augment import apply_view, draw_view
from .classifier import Classifier
from .datasets import Dataset, match_classes
from .encoder import embed_items, l2_normalize
from .images import to_pil
from .preprocess import preprocess_batch


@dataclass(frozen=True)
class FitResult:
    adapter: Adapter
    val_accuracy: float
    short_classes: tuple[tuple[str, int], ...]  # classes with fewer than K images (name, count)
    missing_classes: tuple[str, ...]  # dataset classes not in the bank
    n_support: int
    n_val: int
    seconds_encode: float
    seconds_search: float


def split_support_val(ds: Dataset, mapping: dict[str, int], shots: int, val_fraction: float, seed: int,
                      val_limit: int | None):
    """Per class: ``shots`` support items and a ``val_fraction`` share of the rest, both seeded."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list] = {}
    for x, c in ds.items:
        if c in mapping:
            by_class.setdefault(c, []).append(x)
    support, val, short = [], [], []
    for c, xs in by_class.items():
        order = rng.permutation(len(xs))
        if len(xs) < shots:
            short.append((c, len(xs)))
        support += [(xs[i], mapping[c]) for i in order[:shots]]
        rest = order[shots:]
        val += [(xs[i], mapping[c]) for i in rest[:int(round(len(rest) * val_fraction))]]
    if val_limit is not None and len(val) > val_limit:
        val = [val[i] for i in sorted(rng.permutation(len(val))[:val_limit])]
    return support, val, short


def sample_per_class(items: list, limit: int | None, seed: int) -> list:
    """At most ``limit`` (item, label) pairs, spread evenly over the labels, seeded; order kept.

    Each label gets ``limit // n_labels`` (the remainder goes to labels picked by the seed); a label
    with fewer items gives its unused share to the others. 10 labels x 200 items, ``limit=1000``:
    100 of each label, never the first 1000 in label order.
    """
    if limit is None or len(items) <= limit:
        return items
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(items):
        by_label.setdefault(y, []).append(i)
    labels = list(by_label)
    quota = dict.fromkeys(labels, 0)
    left = limit
    while left > 0:
        open_labels = [y for y in labels if quota[y] < len(by_label[y])]
        share, extra = divmod(left, len(open_labels))
        lucky = set(rng.permutation(len(open_labels))[:extra].tolist())
        for k, y in enumerate(open_labels):
            quota[y] = min(len(by_label[y]), quota[y] + share + (k in lucky))
        left = limit - sum(quota.values())
    keep = [idx for y in labels for idx in rng.permutation(by_label[y])[:quota[y]].tolist()]
    return [items[i] for i in sorted(keep)]


def encode_augmented(clf: Classifier, items: list, epochs: int, seed: int, batch: int = 32,
                     on_step: Callable[[int], None] = lambda n: None) -> np.ndarray:
    """Mean of ``epochs`` augmented views per image, renormalised; ``epochs=0``: the plain view.

    Streams: images are decoded ``batch`` at a time and only their embeddings are kept, so memory is
    one batch of decoded images plus N x D floats, whatever N. The random views are drawn first, in
    the epoch-major order of the seed (from image sizes read from headers), so the result equals
    decoding everything up front and augmenting epoch by epoch: (N, D) float32, rows L2-normalised.
    """
    cfg = clf.encoder.preprocess_config
    views = draw_views([image_size(x) for x, _ in items], epochs, seed) if epochs else None
    total = np.zeros((len(items), clf.encoder.artifact.embed_dim), np.float32)
    for s in range(0, len(items), batch):
        pils = [to_pil(x).convert("RGB") for x, _ in items[s:s + batch]]
        for e in range(max(epochs, 1)):
            shown = [apply_view(p, views[e][s + i], cfg.size) for i, p in enumerate(pils)] if epochs else pils
            total[s:s + batch] += clf.encoder.encode_pixels(preprocess_batch(shown, cfg))
            on_step(len(pils))
    return l2_normalize(total)


def draw_views(sizes: list[tuple[int, int]], epochs: int, seed: int) -> list[list]:
    """``views[epoch][i]`` for images of ``sizes`` (w, h): the seed's draws in epoch-major order."""
    rng = np.random.default_rng(seed)
    return [[draw_view(w, h, rng) for w, h in sizes] for _ in range(epochs)]


def image_size(item) -> tuple[int, int]:
    """(width, height) of an image input without decoding its pixels (files: the header only)."""
    if isinstance(item, Image.Image):
        return item.size
    if isinstance(item, np.ndarray) and item.ndim >= 2:
        return int(item.shape[1]), int(item.shape[0])
    try:
        with Image.open(item) as img:
            return img.size
    except Exception:  # noqa: BLE001 - let the real loader name the problem as an InputError
        return to_pil(item).size


def encode_plain(clf: Classifier, items: list, batch: int = 32, on_step=lambda n: None) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of (image, label) items; an unreadable image stops the fit (InputError)."""
    emb, _, failures = embed_items(clf.encoder, [x for x, _ in items], batch, on_step)
    if failures:
        raise InputError(failures[0][1])
    return emb, np.asarray([y for _, y in items], np.int64)


def build_adapter(kind: str, clf: Classifier, support_f: np.ndarray, support_y: np.ndarray, val_f: np.ndarray,
                  val_y: np.ndarray, meta: dict) -> tuple[Adapter, float, float]:
    """Keys for ``kind`` (coder|tip) + the validation search; returns (adapter, val acc, search seconds)."""
    keys = fold_keys(support_f, coder_text_matrix(clf.bank)) if kind == "coder" else support_f
    t0 = time.perf_counter()
    alpha, beta, acc = search(val_f, val_y, clf.bank.clip_w, keys, support_y, kind, len(clf.class_names))
    meta = {**meta, "kind": kind, "val_accuracy": acc, "classes": len(clf.class_names),
            "bank_sha256": clf.bank.meta["npz_sha256"], "encoder_sha256": clf.bank.meta["encoder"]["sha256"]}
    return Adapter(kind, keys, support_y, alpha, beta, meta), acc, time.perf_counter() - t0


def fit(clf: Classifier, train: Dataset, shots: int, val: Dataset | None = None, val_fraction: float = 0.1,
        epochs: int = 1, seed: int = 0, kind: str = "coder", val_limit: int | None = 1000,
        on_step: Callable[[int], None] = lambda n: None) -> FitResult:
    mapping, missing = match_classes(train.classes, clf.class_names)
    support, val_items, short = split_support_val(train, mapping, shots, 0.0 if val else val_fraction, seed, val_limit)
    if val is not None:
        vmap, _ = match_classes(val.classes, clf.class_names)
        val_items = sample_per_class([(x, vmap[c]) for x, c in val.items if c in vmap], val_limit, seed)
    if not support or not val_items:
        raise InputError(f"nothing to fit: {len(support)} support and {len(val_items)} validation images")
    t0 = time.perf_counter()
    support_f = encode_augmented(clf, support, epochs, seed, on_step=on_step)
    support_y = np.asarray([y for _, y in support], np.int64)
    val_f, val_y = encode_plain(clf, val_items, on_step=on_step)
    t_enc = time.perf_counter() - t0
    meta = {"shots": shots, "augment_epochs": epochs, "seed": seed, "n_support": len(support), "n_val": len(val_y)}
    adapter, acc, t_search = build_adapter(kind, clf, support_f, support_y, val_f, val_y, meta)
    return FitResult(adapter, acc, tuple(short), tuple(missing), len(support), len(val_y), t_enc, t_search)
