"""Change the classes of a bank in place of a rebuild: encode only new texts, fold only new rows.

:func:`change_bank` takes a loaded :class:`~.bank.Bank` and returns a NEW bank with classes added and/or
removed, plus a frozen :class:`ClassChange` report. What a new class gets:

* by default what ``coder texts init`` + ``coder texts synonyms -a ARTIFACTS`` give it: its name and its
  WordNet 3.0 synonyms (when WordNet is installed; the synset chosen by the CLIP text encoder);
* or the texts the caller passes (``syn``/``att``/``ana`` words and pair texts, e.g. from a
  ``coder texts generate`` run).

Rows of classes that stay are copied, not recomputed, so their stage-1 scores do not change, except where
METHOD.md's analogous-object rule applies: an ``ana`` word ``g`` of an existing class whose
``a photo of {g}.`` is within cosine 0.9 of a new class's ``a photo of {c}.`` is dropped and that class is
refolded; the report names it. The result equals a from-scratch ``coder bank build`` of the resulting
texts (same arrays, same :func:`~.bank.content_sha256` when the embeddings come from the same cache).

>>> new, change = change_bank(bank, CachingEncoder(enc, cache), add=["zebra"])   # doctest: +SKIP
>>> change.added, change.texts_encoded                                           # (('zebra',), 2)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ArtifactError, ConfigError
from .atg import ANA_MAX_COS
from .bank import Bank, EmbeddingCache, content_sha256, embedding_cache, texts_sha256
from .fold import fold
from .rows import KIND_IDS, Rows, expand
from .texts import ClassTexts, Texts, from_json, load_texts, to_json, _name_key

ANA_PROBE = "a photo of {}."  # the texts the analogous-object filter compares (as `coder texts generate`)


@dataclass(frozen=True)
class ClassChange:
    """What a class change did. ``refolded``: (existing class, its ``ana`` words dropped) pairs."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    refolded: tuple[tuple[str, tuple[str, ...]], ...]
    new_ana_dropped: tuple[tuple[str, tuple[str, ...]], ...]  # caller-passed ana words of new classes dropped
    without_synonyms: tuple[str, ...]  # new classes WordNet has no noun for (or WordNet is not installed)
    wordnet: bool  # synonyms came from WordNet 3.0
    texts_encoded: int  # texts newly run through the text encoder (the rest came from the cache)
    texts_added: int  # rows the new bank has that the old one did not
    previous_sha256: str
    bank_sha256: str
    seconds: float


class CachingEncoder:
    """A :class:`~.text_encoder.TextEncoder` behind the per-text embedding cache; thread-safe.

    ``encode(texts)`` encodes only texts not cached yet (``encoded`` counts them) and appends them to the
    cache on disk with :meth:`save` (a small part file; unwritable: kept in memory with a warning).
    """

    def __init__(self, encoder, cache: EmbeddingCache):
        self.encoder, self.cache, self.encoded = encoder, cache, 0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, encoder, cache_dir: Path) -> "CachingEncoder":
        return cls(encoder, embedding_cache(encoder, cache_dir))

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.encoder.artifact.embed_dim), np.float32)
        with self._lock:
            todo = self.cache.missing(texts)
            if todo:
                self.cache.add(todo, self.encoder.encode(todo, batch_size))
                self.encoded += len(todo)
            return self.cache.lookup(texts)

    def save(self) -> None:
        with self._lock:
            self.cache.save_new()


def bank_texts(bank: Bank) -> Texts:
    """The texts a bank was built from: stored in ``bank.json`` (this coder), else its texts file if unchanged."""
    if "texts" in bank.meta:
        return from_json(bank.meta["texts"], bank.meta.get("name", "bank"))
    path = bank.meta.get("texts_file")
    if path and Path(path).is_file():
        texts = load_texts(path)
        if texts_sha256(texts) == bank.meta.get("texts_sha256"):
            return texts
    raise ArtifactError(f"{bank.root}: built by an older coder that did not store its texts; rebuild it "
                        "(coder bank build) to change its classes")


def clean_name(name: Any) -> str:
    """A class name as a class file line gives it: stripped, ``_`` -> space; empty is refused."""
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        raise ConfigError(f"class name {name!r}: must be a non-empty single line")
    return " ".join(name.strip().replace("_", " ").split())


def parse_names(value: Any, what: str = "classes") -> tuple[str, ...]:
    """A class list given as a string array or one comma-separated string -> names (stripped); ConfigError
    naming ``what`` for anything else or for empty or repeated names. ``parse_names("cat, dog") == ("cat", "dog")``,
    ``parse_names([]) == ()``."""
    if isinstance(value, str):
        value = value.split(",") if value.strip() else []
    if not isinstance(value, (list, tuple)) or any(not isinstance(n, str) for n in value):
        raise ConfigError(f"{what}: expected a list of class names, got {value!r}")
    names = tuple(n.strip() for n in value)
    try:
        if names:
            check_change([], list(names), [])
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    return names


def check_change(names: Sequence[str], add: Sequence[str], remove: Sequence[str]) -> tuple[list[str], list[int]]:
    """Validated (names to add, indices to remove) or ConfigError: empty or repeated names, a new name that
    normalises to an existing class (case, spaces, ``_``), an unknown class to remove, or no class left."""
    index = {_name_key(n): i for i, n in enumerate(names)}
    added, seen = [], {}
    for raw in add:
        name = clean_name(raw)
        key = _name_key(name)
        if key in seen:
            raise ConfigError(f"class {name!r} is given twice (as {seen[key]!r} and {raw!r})")
        if key in index and index[key] not in {index.get(_name_key(clean_name(r))) for r in remove}:
            raise ConfigError(f"class {name!r} is already in the bank (as {names[index[key]]!r})")
        seen[key] = raw
        added.append(name)
    gone = []
    for raw in remove:
        key = _name_key(clean_name(raw))
        if key not in index:
            raise ConfigError(f"cannot remove {raw!r}: not a class of the bank")
        if index[key] in gone:
            raise ConfigError(f"class {raw!r} is given twice to remove")
        gone.append(index[key])
    if not added and not gone:
        raise ConfigError("no change: give classes to add or remove")
    if len(names) - len(gone) + len(added) < 1:
        raise ConfigError("a bank needs at least one class")
    return added, sorted(gone)


def _given(texts: Texts | Mapping | None, name: str) -> tuple[ClassTexts | None, list[tuple[str, str, tuple]]]:
    """(class texts, [(from, to, pair texts)]) the caller gave for ``name``; (None, []) if none."""
    if texts is None:
        return None, []
    if isinstance(texts, Texts):
        names = texts.class_names
        found = [i for i, n in enumerate(names) if _name_key(n) == _name_key(name)]
        if not found:
            return None, []
        i = found[0]
        pairs = [(name if a == i else names[a], name if b == i else names[b], v)
                 for (a, b), v in texts.pairs.items() if i in (a, b)]
        return replace(texts.classes[i], name=name), pairs
    entry = next((v for k, v in texts.items() if _name_key(clean_name(k)) == _name_key(name)), None)
    if entry is None:
        return None, []
    if not isinstance(entry, Mapping):
        raise ConfigError(f"texts for {name!r}: a mapping of syn/att/ana/pairs, got {type(entry).__name__}")
    words = {k: tuple(entry.get(k, ())) for k in ("syn", "att", "ana")}
    for k, v in words.items():
        if any(not isinstance(w, str) or not w.strip() for w in v):
            raise ConfigError(f"texts for {name!r}: {k} must be non-empty strings")
    pairs = [(name, o, tuple(v)) for o, v in dict(entry.get("pairs", {})).items()]  # this class's side vs o
    pairs += [(o, name, tuple(v)) for o, v in dict(entry.get("pairs_other", {})).items()]  # o's side vs this
    return ClassTexts(name, entry.get("wnid"), words["syn"], words["att"], words["ana"]), pairs


def _with_synonyms(classes: list[ClassTexts], templates: dict, encoder) -> tuple[list[ClassTexts], list[str], bool]:
    """WordNet synonyms for classes without given texts (as ``coder texts synonyms -a``)."""
    from .wordnet import WordNet, add_synonyms

    if not classes:
        return [], [], True
    try:
        wn = WordNet()
    except ConfigError:
        return classes, [c.name for c in classes], False
    mini = Texts("new", "default", templates, tuple(classes))
    new, unmatched = add_synonyms(mini, wn, encoder)
    return list(new.classes), unmatched, True


def new_class_texts(old: Texts, add: list[str], texts, encoder) -> tuple[Texts, list[str], bool]:
    """The texts after adding ``add`` to ``old`` (pairs only between given classes); also returns
    (new classes without synonyms, WordNet used)."""
    given = {n: _given(texts, n) for n in add}
    plain = [ClassTexts(n) for n in add if given[n][0] is None]
    filled, unmatched, wordnet = _with_synonyms(plain, old.templates, encoder)
    by_name = {c.name: c for c in filled}
    classes = [*old.classes, *(given[n][0] or by_name[n] for n in add)]
    index = {_name_key(c.name): i for i, c in enumerate(classes)}
    pairs = dict(old.pairs)
    for n in add:
        for a, b, attrs in given[n][1]:
            i, j = index.get(_name_key(a)), index.get(_name_key(b))
            if i is None or j is None or i == j:
                raise ConfigError(f"texts for {n!r}: a pair {a!r} -> {b!r} needs two different classes of the bank")
            if any(not isinstance(x, str) or not x.strip() for x in attrs):
                raise ConfigError(f"texts for {n!r}: pair texts must be non-empty strings")
            if attrs:
                pairs[(i, j)] = tuple(attrs)
    return replace(old, classes=tuple(classes), pairs=pairs), unmatched, wordnet


def _without(t: Texts, gone: list[int]) -> Texts:
    keep = [i for i in range(len(t.classes)) if i not in set(gone)]
    new_id = {old: new for new, old in enumerate(keep)}
    pairs = {(new_id[i], new_id[j]): v for (i, j), v in t.pairs.items() if i in new_id and j in new_id}
    return replace(t, classes=tuple(t.classes[i] for i in keep), pairs=pairs)


def ana_conflicts(t: Texts, classes: Sequence[int], against: Sequence[int], encoder) -> dict[int, tuple[str, ...]]:
    """For each class in ``classes``: its ana words whose probe is within cosine 0.9 of the name probe of a
    class in ``against`` other than itself (METHOD.md's analogous-object rule)."""
    words = [(c, g) for c in classes for g in t.classes[c].ana]
    if not words or not against:
        return {}
    names = encoder.encode([ANA_PROBE.format(t.classes[c].name) for c in against])
    probes = encoder.encode([ANA_PROBE.format(g) for _, g in words])
    sims = probes @ names.T
    for row, (c, _) in enumerate(words):
        sims[row, [k for k, o in enumerate(against) if o == c]] = -1.0
    out: dict[int, list[str]] = {}
    for (c, g), s in zip(words, sims.max(axis=1)):
        if s > ANA_MAX_COS:
            out.setdefault(c, []).append(g)
    return {c: tuple(v) for c, v in out.items()}


def _drop_ana(t: Texts, drops: dict[int, tuple[str, ...]]) -> Texts:
    classes = list(t.classes)
    for c, words in drops.items():
        classes[c] = replace(classes[c], ana=tuple(g for g in classes[c].ana if g not in set(words)))
    return replace(t, classes=tuple(classes))


def _remap(ids: np.ndarray, new_id: np.ndarray) -> np.ndarray:
    return new_id[ids].astype(np.int32)


def fold_change(bank: Bank, t: Texts, keep: list[int], refold: list[int], new_pairs: list[tuple[int, int]],
                encoder) -> tuple[dict[str, np.ndarray], Rows]:
    """The new bank's arrays: rows of kept classes copied (ids renumbered), ``refold`` classes (ids of ``t``:
    the new ones and those whose ana words changed) and ``new_pairs`` folded from their own rows.

    ``keep[i]`` is the old id of new class ``i`` for the first ``len(keep)`` classes of ``t``.
    Returns (arrays incl. raw rows, the raw rows' metadata).
    """
    a, n_old, n_new = bank.arrays, len(bank.class_names), len(t.classes)
    new_id = np.full(n_old + 1, -1, np.int64)  # index -1 (no other class) maps to -1
    new_id[keep] = np.arange(len(keep))
    old_refold = [keep[c] for c in refold if c < len(keep)]
    # Texts of refolded existing classes are in the old raw rows; only new texts go to the encoder.
    rows_r = expand(t, classes=refold, pairs=[], clip=False)
    rows_p = expand(t, classes=[], pairs=new_pairs, clip=False)
    known_mask = np.isin(a["raw_class"], old_refold) & (a["raw_kind"] != KIND_IDS["pair"])
    known = dict(zip((bank.meta["raw_texts"][i] for i in np.flatnonzero(known_mask)), a["raw_emb"][known_mask]))
    todo = [x for x in rows_r.texts + rows_p.texts if x not in known]
    fresh = dict(zip(todo, encoder.encode(todo))) if todo else {}
    lookup = {**fresh, **known}
    d = a["n_emb"].shape[1]
    emb_r = np.stack([lookup[x] for x in rows_r.texts]).astype(np.float32) if rows_r.texts else np.zeros((0, d), np.float32)
    emb_p = np.stack([lookup[x] for x in rows_p.texts]).astype(np.float32) if rows_p.texts else np.zeros((0, d), np.float32)
    fr, fp = fold(rows_r, emb_r, n_new), fold(rows_p, emb_p, n_new)

    g_sum = np.zeros((n_new, d), np.float32)
    g_count = np.zeros(n_new, np.int32)
    g_sum[:len(keep)], g_count[:len(keep)] = a["g_sum"][keep], a["g_count"][keep]
    g_sum[refold], g_count[refold] = fr["g_sum"][refold], fr["g_count"][refold]
    old_n = np.isin(a["n_class"], keep)
    added = fr["n_class"] >= len(keep)  # name/synonym rows of existing classes never change
    n_class = np.concatenate([_remap(a["n_class"][old_n], new_id), fr["n_class"][added]])
    n_emb = np.concatenate([a["n_emb"][old_n], fr["n_emb"][added]])
    old_p = (new_id[a["pair_from"]] >= 0) & (new_id[a["pair_to"]] >= 0)
    p_from = np.concatenate([_remap(a["pair_from"][old_p], new_id), fp["pair_from"]]).astype(np.int32)
    p_to = np.concatenate([_remap(a["pair_to"][old_p], new_id), fp["pair_to"]]).astype(np.int32)
    p_vec = np.concatenate([a["pair_vec"][old_p], fp["pair_vec"]]).astype(np.float32)
    order = np.argsort(p_from.astype(np.int64) * n_new + p_to, kind="stable")  # as a full build stores them
    arrays = {"g_sum": g_sum, "g_count": g_count, "n_emb": n_emb.astype(np.float32), "n_class": n_class,
              "pair_vec": p_vec[order], "pair_from": p_from[order], "pair_to": p_to[order]}

    kind, cls, other = a["raw_kind"], a["raw_class"], a["raw_other"]
    keep_raw = (new_id[cls] >= 0) & (kind != KIND_IDS["clip"]) & ~known_mask
    keep_raw &= (other < 0) | (new_id[np.maximum(other, 0)] >= 0)
    old_rows = Rows([bank.meta["raw_texts"][i] for i in np.flatnonzero(keep_raw)], kind[keep_raw],
                    _remap(cls[keep_raw], new_id), np.where(other[keep_raw] >= 0, new_id[np.maximum(other[keep_raw], 0)],
                                                            -1).astype(np.int32), np.full(int(keep_raw.sum()), -1, np.int32))
    rows = _concat([old_rows, rows_r, rows_p])
    arrays.update(raw_emb=np.concatenate([a["raw_emb"][keep_raw], emb_r, emb_p]).astype(np.float32),
                  raw_kind=rows.kind, raw_class=rows.cls, raw_other=rows.other)
    return arrays, rows


def _concat(parts: list[Rows]) -> Rows:
    cols = [np.concatenate([getattr(r, k) for r in parts]).astype(dt)
            for k, dt in (("kind", np.int8), ("cls", np.int32), ("other", np.int32), ("group", np.int32))]
    return Rows([x for r in parts for x in r.texts], *cols)


def change_bank(bank: Bank, encoder: CachingEncoder, add: Sequence[str] = (), remove: Sequence[str] = (),
                texts: Texts | Mapping | None = None) -> tuple[Bank, ClassChange]:
    """A new bank with ``add`` appended (in that order, after the classes that stay) and ``remove`` left out.

    ``texts``: a :class:`Texts` (e.g. ``load_texts("texts.json")`` after ``coder texts generate``) or
    ``{"zebra": {"syn": [...], "att": [...], "ana": [...], "pairs": {"horse": [zebra's side]},
    "pairs_other": {"horse": [horse's side]}}}``; classes it does not cover get names + WordNet synonyms. Bad changes raise ConfigError (exit 2) and change nothing.
    """
    t0 = time.perf_counter()
    old = bank_texts(bank)
    added, gone = check_change(bank.class_names, list(add), list(remove))
    encoded_before = encoder.encoded
    base = _without(old, gone)
    t, unmatched, wordnet = new_class_texts(base, added, texts, encoder)
    n_keep = len(base.classes)
    new_ids = list(range(n_keep, len(t.classes)))
    drops_old = ana_conflicts(t, range(n_keep), new_ids, encoder)
    drops_new = ana_conflicts(t, new_ids, range(len(t.classes)), encoder)
    t = _drop_ana(t, {**drops_old, **drops_new})
    keep = [i for i in range(len(old.classes)) if i not in set(gone)]
    refold = sorted(drops_old) + new_ids
    new_pairs = sorted(p for p in t.pairs if p[0] >= n_keep or p[1] >= n_keep)
    arrays, rows = fold_change(bank, t, keep, refold, new_pairs, encoder)
    encoder.save()
    meta = _meta(bank, t, arrays, rows, encoder.encoded - encoded_before)
    names = t.class_names
    change = ClassChange(
        added=tuple(added), removed=tuple(old.class_names[i] for i in gone),
        refolded=tuple((names[c], drops_old[c]) for c in sorted(drops_old)),
        new_ana_dropped=tuple((names[c], drops_new[c]) for c in sorted(drops_new)),
        without_synonyms=tuple(unmatched), wordnet=wordnet, texts_encoded=encoder.encoded - encoded_before,
        texts_added=len(rows.texts) - _kept_rows(bank, rows),
        previous_sha256=bank.content_sha256, bank_sha256=meta["content_sha256"], seconds=time.perf_counter() - t0)
    return Bank(bank.root, meta, arrays, bank.artifact_root), change


def _kept_rows(bank: Bank, rows: Rows) -> int:
    old = set(bank.meta["raw_texts"])
    return sum(1 for x in rows.texts if x in old)


def _meta(bank: Bank, t: Texts, arrays: dict[str, np.ndarray], rows: Rows, n_new: int) -> dict[str, Any]:
    """bank.json of the changed bank, in memory (``npz_sha256`` = content id until it is written)."""
    settings = dict(bank.meta["settings"])
    sha = content_sha256(arrays, t.class_names, settings)
    meta = {**bank.meta, "classes": t.class_names, "texts": to_json(t), "texts_sha256": texts_sha256(t),
            "texts_file": None, "content_sha256": sha, "npz_sha256": sha, "in_memory": True,
            "counts": {"texts": len(rows.texts), "newly_encoded": n_new, "pairs": int(len(arrays["pair_vec"]))},
            "raw_texts": rows.texts, "clip_weights": "on first use"}
    meta.pop("npz_file", None)
    return meta


class LiveTexts:
    """The text side of a classifier, loaded on its first class change and shared by every classifier
    derived from it: the text encoder behind the embedding cache in the bank's directory."""

    def __init__(self, artifact_root: str | Path, precision: str, cache_dir: Path):
        self.artifact_root, self.precision, self.cache_dir = artifact_root, precision, Path(cache_dir)
        self._encoder: CachingEncoder | None = None
        self._lock = threading.Lock()

    def encoder(self) -> CachingEncoder:
        with self._lock:
            if self._encoder is None:
                from .text_encoder import TextEncoder

                self._encoder = CachingEncoder.open(TextEncoder.load(self.artifact_root, self.precision),
                                                    self.cache_dir)
            return self._encoder
