"""Expand a :class:`Texts` into the list of sentences the bank encodes.

Every sentence becomes one row with its kind, class and (for pair texts) the
other class. Kinds follow METHOD.md: ``name``/``syn`` form the max set N_c,
``att``/``ana`` the sum set G_c, ``pair`` the one-to-one texts, ``clip`` the
prompt ensemble for the plain-CLIP weights W.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .texts import Texts

KIND_IDS = {"name": 0, "syn": 1, "att": 2, "ana": 3, "pair": 4, "clip": 5}


@dataclass(frozen=True)
class Rows:
    """Parallel arrays: ``texts[i]`` of kind ``kind[i]`` for class ``cls[i]`` (vs ``other[i]`` or -1)."""

    texts: list[str]
    kind: np.ndarray  # (T,) int8
    cls: np.ndarray  # (T,) int32
    other: np.ndarray  # (T,) int32
    group: np.ndarray  # (T,) int32: pair rows -> index of their ordered pair, else -1


def _fill(template: str, **slots: str) -> str:
    out = template
    for key, value in slots.items():
        out = out.replace("{" + key + "}", value)
    return out


def expand(t: Texts, classes=None, pairs=None, clip: bool = True) -> Rows:
    """All sentences of a texts file, templates applied (names with ``_`` already spaced).

    ``classes`` / ``pairs`` (ids / ordered pairs of ``t``) restrict the rows to those, keeping the
    ids and the order a full expansion gives them (``group`` then counts only the pairs asked for);
    ``clip=False`` leaves out the plain-CLIP prompt ensemble.
    """
    tpl = t.templates
    texts: list[str] = []
    meta: list[tuple[int, int, int, int]] = []

    def add(sentence: str, kind: str, c: int, other: int = -1, group: int = -1) -> None:
        texts.append(sentence)
        meta.append((KIND_IDS[kind], c, other, group))

    for c in (range(len(t.classes)) if classes is None else classes):
        ct = t.classes[c]
        add(_fill(tpl["name"], c=ct.name), "name", c)
        for s in ct.syn:  # a synonym goes into the NAME template in place of the class
            add(_fill(tpl["name"], c=s), "syn", c)
        for a in ct.att:
            add(_fill(tpl["att"], c=ct.name, a=a), "att", c)
        for g in ct.ana:
            add(_fill(tpl["ana"], c=ct.name, g=g), "ana", c)
        for template in (tpl["clip"] if clip else ()):
            add(_fill(template, c=ct.name), "clip", c)
    names = t.class_names
    chosen = sorted(t.pairs.items()) if pairs is None else [(p, t.pairs[p]) for p in sorted(pairs)]
    for g, ((i, j), attrs) in enumerate(chosen):
        for a in attrs:
            for template in tpl["pair"]:
                add(_fill(template, a=a, c=names[i], o=names[j]), "pair", i, j, g)
    arr = np.asarray(meta, dtype=np.int64).reshape(-1, 4)
    return Rows(texts, arr[:, 0].astype(np.int8), arr[:, 1].astype(np.int32), arr[:, 2].astype(np.int32),
                arr[:, 3].astype(np.int32))
