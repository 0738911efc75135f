"""CLIP byte-level BPE tokenizer without torch.

Produces exactly open_clip's ``SimpleTokenizer`` ids (``clean="lower"``): text
is repaired with ftfy, HTML-unescaped twice, whitespace-collapsed and
lower-cased, split with CLIP's regex, byte-mapped and BPE-merged by rank.
Sequences are ``[SOT] tokens [EOT]``, truncated to the context length with the
last position forced to EOT, zero padded. A text's length is where its first
EOT is (:func:`eos_lengths`), never a count of non-zero ids: id 0 is the token
``!`` (as in "meow!(sometimes)"), not padding.

>>> tok = ClipTokenizer.from_artifact(artifact)                # doctest: +SKIP
>>> tok(["a photo of a cat."]).shape, tok(["x"]).dtype         # (1, 77), int32
"""

from __future__ import annotations

import gzip
import html
import os
from functools import lru_cache

import numpy as np

SPECIAL = ("<start_of_text>", "<end_of_text>")
# Merges used by CLIP: the first 49152 - 256 - 2 lines after the header.
N_MERGES = 49152 - 256 - 2


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (no whitespace/control characters)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def eos_lengths(ids: np.ndarray, eos_id: int | None) -> np.ndarray:
    """Tokens up to and including each row's first end-of-text id; a row without one counts in full.

    Works for any tokenizer with an EOS id, whatever its padding id (0, or EOS itself); with
    ``eos_id=None`` (a tokenizer without one) every row counts in full.
    Example: ``eos_lengths(np.array([[49406, 0, 49407, 0]]), 49407)`` -> ``array([3])`` (id 0 is "!").
    """
    ids = np.asarray(ids)
    if eos_id is None:
        return np.full(ids.shape[0], ids.shape[1], np.int64)
    is_eos = ids == eos_id
    return np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, ids.shape[1]).astype(np.int64)


def clean(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Byte-level BPE over CLIP's merges file (``bpe_simple_vocab_16e6.txt.gz``)."""

    def __init__(self, vocab_path: str | os.PathLike, context_length: int = 77):
        import regex

        merges = gzip.open(vocab_path).read().decode("utf-8").split("\n")[1:N_MERGES + 1]
        merges = [tuple(m.split()) for m in merges]
        units = list(byte_to_unicode().values())
        vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + list(SPECIAL)
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SPECIAL[0]], self.encoder[SPECIAL[1]]
        self.eos_id = self.eot  # the end-of-text id: :func:`eos_lengths` takes text lengths from it
        self.context_length = context_length
        self._bytes = byte_to_unicode()
        self._cache: dict[str, list[int]] = {}
        self._pattern = regex.compile(
            "|".join(SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def lengths(self, ids: np.ndarray) -> np.ndarray:
        """``(N, L)`` ids from this tokenizer -> ``(N,)`` token counts including SOT and EOT."""
        return eos_lengths(ids, self.eos_id)

    @classmethod
    def from_artifact(cls, artifact) -> "ClipTokenizer":
        """The tokenizer recorded in an artifact's manifest (vocabulary sha256-checked)."""
        from ..errors import ArtifactError

        info = artifact.manifest["text"]["tokenizer"]
        if info.get("kind") != "clip_bpe":
            raise ArtifactError(f"{artifact.root}: tokenizer kind {info.get('kind')!r} is not supported")
        return cls(artifact.file(info["file"]), int(info["context_length"]))

    def _bpe(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), -1), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            ranked = [(r, i) for r, i in pairs if r >= 0]
            if not ranked:
                break
            at = min(ranked)[1]
            first, second = parts[at], parts[at + 1]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.encoder[p] for p in parts]
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without SOT/EOT."""
        ids: list[int] = []
        for piece in self._pattern.findall(clean(text)):
            if piece in SPECIAL:
                ids.append(self.encoder[piece])
                continue
            ids.extend(self._bpe("".join(self._bytes[b] for b in piece.encode("utf-8"))))
        return ids

    def __call__(self, texts: list[str] | str, context_length: int | None = None) -> np.ndarray:
        """``(N, context_length)`` int32 ids, zero padded, truncated with EOT last."""
        if isinstance(texts, str):
            texts = [texts]
        n_ctx = context_length or self.context_length
        out = np.zeros((len(texts), n_ctx), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > n_ctx:
                ids = ids[:n_ctx]
                ids[-1] = self.eot
            out[row, :len(ids)] = ids
        return out
