"""WordNet 3.0 nouns read straight from the database files (Debian ``wordnet-base``).

No nltk: its reader wants a ``lexnames`` file that package lacks (PITFALLS.md).
``index.noun`` maps a lemma to its synset offsets (most frequent sense first);
``data.noun`` holds each synset's lemmas and gloss at that byte offset.

>>> wn = WordNet()                                   # doctest: +SKIP
>>> [s.wnid for s in wn.noun_synsets("dog")][:1]     # ['n02084071']
>>> wn.synset("n02084071").lemmas                    # ('dog', 'domestic dog', 'Canis familiaris')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import ConfigError, TextsError

DEFAULT_DIR = Path(os.environ.get("WNHOME", "/usr/share/wordnet"))


@dataclass(frozen=True)
class Synset:
    wnid: str  # "n" + 8-digit data.noun offset, as ImageNet ids are
    lemmas: tuple[str, ...]  # underscores as spaces
    gloss: str  # the definition, without example sentences
    hypernyms: tuple[str, ...] = ()  # wnids of the "is a kind of" parents ("@" and "@i" pointers)

    def synonyms_of(self, name: str) -> tuple[str, ...]:
        """Lemma names other than ``name`` itself (case-insensitive), order kept."""
        seen = {name.strip().lower()}
        out = []
        for lemma in self.lemmas:
            if lemma.lower() not in seen:
                seen.add(lemma.lower())
                out.append(lemma)
        return tuple(out)


class WordNet:
    def __init__(self, directory: str | os.PathLike = DEFAULT_DIR):
        self.dir = Path(directory)
        if not (self.dir / "data.noun").is_file() or not (self.dir / "index.noun").is_file():
            raise ConfigError(f"WordNet 3.0 not found in {self.dir} (apt-get install wordnet-base, or set WNHOME)")

    @cached_property
    def _index(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        with open(self.dir / "index.noun", encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):
                    continue  # licence header
                parts = line.split()
                n_synsets, n_ptrs = int(parts[2]), int(parts[3])
                index[parts[0]] = parts[6 + n_ptrs:6 + n_ptrs + n_synsets]
        return index

    @cached_property
    def _exceptions(self) -> dict[str, str]:
        path = self.dir / "noun.exc"
        if not path.is_file():
            return {}
        return {p[0]: p[1] for p in (line.split() for line in path.read_text(encoding="utf-8").splitlines()) if len(p) > 1}

    def offsets(self, lemma: str) -> list[str]:
        """Synset offsets of ``lemma`` (``_`` for spaces, lower case) by binary search of the sorted
        ``index.noun``, without reading the whole index (WordNet's own lookup; ~1 ms instead of a full parse)."""
        import mmap

        key = lemma.encode("utf-8")
        with open(self.dir / "index.noun", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            lo, hi = 0, len(m)
            while lo < hi:
                start = m.rfind(b"\n", 0, (lo + hi) // 2) + 1
                end = m.find(b"\n", start)
                end = len(m) if end < 0 else end
                line = m[start:end]
                word = line.split(b" ", 1)[0]
                if line.startswith(b" ") or word < key:
                    lo = end + 1
                elif word > key:
                    hi = start
                else:
                    parts = line.decode("utf-8").split()
                    n_synsets, n_ptrs = int(parts[2]), int(parts[3])
                    return parts[6 + n_ptrs:6 + n_ptrs + n_synsets]
        return []

    def synset(self, wnid: str) -> Synset:
        if not (len(wnid) == 9 and wnid[0] == "n" and wnid[1:].isdigit()):
            raise TextsError(f"{wnid!r} is not a WordNet noun id like n01440764")
        with open(self.dir / "data.noun", "rb") as f:
            f.seek(int(wnid[1:]))
            line = f.readline().decode("utf-8")
        if not line.startswith(wnid[1:]):
            raise TextsError(f"{wnid} is not a synset of WordNet 3.0")
        return _parse(line)

    def noun_synsets(self, name: str) -> list[Synset]:
        """Noun synsets of a name, most frequent sense first; tries the plural->singular exceptions."""
        key = "_".join(name.strip().lower().split())
        offsets = self.offsets(key) or (self.offsets(self._exceptions[key]) if key in self._exceptions else [])
        if not offsets and key.endswith("s"):
            offsets = self.offsets(key[:-1])
        return [self.synset("n" + o) for o in offsets]


def _parse(line: str) -> Synset:
    head, _, gloss = line.partition(" | ")
    parts = head.split()
    n_words = int(parts[3], 16)
    lemmas = tuple(parts[4 + 2 * i].replace("_", " ") for i in range(n_words))
    # Adjective markers like "(a)" never occur in nouns, but strip any "(...)" suffix defensively.
    lemmas = tuple(lemma.split("(")[0] for lemma in lemmas)
    definition = gloss.strip().split('; "')[0].strip()
    p0 = 4 + 2 * n_words
    pointers = [parts[p0 + 1 + 4 * k:p0 + 5 + 4 * k] for k in range(int(parts[p0]))]
    hypernyms = tuple("n" + ptr[1] for ptr in pointers if ptr[0] in ("@", "@i") and ptr[2] == "n")
    return Synset("n" + parts[0], lemmas, definition, hypernyms)


def choose_synset(name: str, candidates: list[Synset], text_encoder=None, template: str = "a photo of {c}.") -> Synset | None:
    """The synset whose definition is closest to ``a photo of {name}`` under the CLIP text encoder.

    Without an encoder (or with one candidate) the most frequent sense is taken.
    """
    if not candidates:
        return None
    if text_encoder is None or len(candidates) == 1:
        return candidates[0]
    emb = text_encoder.encode([template.replace("{c}", name)] + [s.gloss for s in candidates])
    return candidates[int((emb[1:] @ emb[0]).argmax())]


def add_synonyms(texts, wn: WordNet, text_encoder=None):
    """Fill each class's ``syn`` from WordNet; returns (new Texts, names with no noun synset).

    A class with a WordNet id gets that synset's lemmas exactly; otherwise the
    synset is chosen by :func:`choose_synset`. Existing synonyms are kept.
    """
    from dataclasses import replace

    classes, unmatched = [], []
    template = texts.templates["name"]
    for c in texts.classes:
        syn = wn.synset(c.wnid) if c.wnid else choose_synset(c.name, wn.noun_synsets(c.name), text_encoder, template)
        if syn is None:
            unmatched.append(c.name)
            classes.append(c)
            continue
        merged = tuple(dict.fromkeys([*c.syn, *syn.synonyms_of(c.name)]))
        classes.append(replace(c, syn=merged))
    return texts.with_classes(classes), unmatched
