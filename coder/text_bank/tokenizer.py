"""Tokenizers without torch: CLIP byte-level BPE, and Hugging Face ``tokenizers`` files.

:func:`load_tokenizer` picks the one an artifact's manifest names
(``text.tokenizer.kind``: ``clip_bpe`` or ``hf_tokenizers``). Both are called
the same way, ``tok(texts) -> (N, context_length) int32``, and expose
``context_length`` and ``eos_id``.

CLIP BPE:
Produces exactly open_clip's ``SimpleTokenizer`` ids, for each of its text
cleanings (the manifest's ``clean``: ``lower``, the default, ``whitespace`` or
``canonicalize``): text is repaired with ftfy, HTML-unescaped twice,
whitespace-collapsed and lower-cased (``canonicalize`` also turns ``_`` into a
space and drops ASCII punctuation; ``whitespace`` keeps case), split with CLIP's
regex, byte-mapped and BPE-merged by rank.
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


def _basic(text: str) -> str:
    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def clean(text: str) -> str:
    """open_clip's ``clean="lower"``: ftfy, HTML-unescape twice, collapse whitespace, lower-case."""
    return " ".join(_basic(text).split()).strip().lower()


def clean_whitespace(text: str) -> str:
    """open_clip's ``clean="whitespace"`` (case kept)."""
    return " ".join(_basic(text).split()).strip()


def clean_canonicalize(text: str) -> str:
    """open_clip's ``clean="canonicalize"`` (SigLIP): ``_`` -> space, ASCII punctuation dropped, lower-cased."""
    import string

    text = _basic(text).replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
    return " ".join(text.split()).strip()


CLEANERS = {"lower": clean, "whitespace": clean_whitespace, "canonicalize": clean_canonicalize}


class ClipTokenizer:
    """Byte-level BPE over CLIP's merges file (``bpe_simple_vocab_16e6.txt.gz``).

    ``clean`` is open_clip's ``clean`` setting (one of :data:`CLEANERS`); another raises ValueError.
    Example: ``ClipTokenizer(vocab, 77, clean="canonicalize")(["hot_dog, please."])`` == open_clip's ids.
    """

    def __init__(self, vocab_path: str | os.PathLike, context_length: int = 77, clean: str = "lower"):
        import regex

        if clean not in CLEANERS:
            raise ValueError(f"unknown text cleaning {clean!r}; one of {', '.join(CLEANERS)}")
        self.clean = CLEANERS[clean]

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
        clean = info.get("clean", "lower")
        if clean not in CLEANERS:
            raise ArtifactError(f"{artifact.root}: text cleaning {clean!r} is unknown to this coder; upgrade coder")
        return cls(artifact.file(info["file"]), int(info["context_length"]), clean)

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
        for piece in self._pattern.findall(self.clean(text)):
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


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` run by the ``tokenizers`` library (Rust; no torch, no transformers).

    Reproduces open_clip's ``HFTokenizer`` (SigLIP/SigLIP2, NLLB, ...): clean the text
    (``canonicalize`` / ``whitespace`` / ``lower``), encode with the tokenizer's own
    special tokens (e.g. a trailing EOS), truncate to ``context_length`` and pad with
    ``pad_id`` to exactly that length, like ``padding="max_length", truncation=True``.

    >>> tok = HFTokenizer("tokenizer.json", 64, clean="canonicalize", pad_id=1)   # doctest: +SKIP
    >>> tok(["A photo of a cat."]).shape                                          # (1, 64), int32
    """

    def __init__(self, path: str | os.PathLike, context_length: int, clean: str = "whitespace", pad_id: int = 0,
                 pad_token: str = "<pad>", eos_id: int | None = None, sep_id: int | None = None,
                 strip_sep_token: bool = False, padding_side: str = "right", truncation_side: str = "right"):
        from tokenizers import Tokenizer

        if clean not in CLEANERS:
            raise ValueError(f"unknown text cleaning {clean!r}; one of {', '.join(CLEANERS)}")
        self._tok = Tokenizer.from_file(str(path))
        self.context_length = int(context_length)
        self.clean = CLEANERS[clean]
        self.pad_id, self.eos_id, self.sep_id = int(pad_id), eos_id, sep_id
        self.strip_sep_token = strip_sep_token
        self._tok.enable_truncation(self.context_length, direction=truncation_side)
        self._tok.enable_padding(direction=padding_side, pad_id=self.pad_id, pad_token=pad_token,
                                 length=self.context_length)

    @classmethod
    def from_record(cls, path, info: dict) -> "HFTokenizer":
        return cls(path, int(info["context_length"]), info.get("clean", "whitespace"), int(info["pad_id"]),
                   info.get("pad_token", "<pad>"), info.get("eos_id"), info.get("sep_id"),
                   bool(info.get("strip_sep_token", False)), info.get("padding_side", "right"),
                   info.get("truncation_side", "right"))

    def lengths(self, ids: np.ndarray) -> np.ndarray:
        """``(N, L)`` ids -> ``(N,)`` token counts up to the first EOS (full length without an EOS id)."""
        return eos_lengths(ids, -1 if self.eos_id is None else self.eos_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of one cleaned text with the tokenizer's special tokens, unpadded."""
        enc = self._tok.encode(self.clean(text))
        return [i for i, m in zip(enc.ids, enc.attention_mask) if m]

    def __call__(self, texts: list[str] | str, context_length: int | None = None) -> np.ndarray:
        """``(N, context_length)`` int32 ids; only the artifact's own context length is valid."""
        if isinstance(texts, str):
            texts = [texts]
        if context_length not in (None, self.context_length):
            raise ValueError(f"this tokenizer pads to {self.context_length} tokens, not {context_length}")
        encs = self._tok.encode_batch([self.clean(t) for t in texts])
        out = np.array([e.ids for e in encs], dtype=np.int32).reshape(len(texts), self.context_length)
        if self.strip_sep_token and self.sep_id is not None:
            out[out == self.sep_id] = 0
        return out


def load_tokenizer(artifact):
    """The tokenizer an artifact's manifest records (its file sha256-checked): ClipTokenizer or HFTokenizer."""
    from ..errors import ArtifactError

    info = artifact.manifest["text"]["tokenizer"]
    kind = info.get("kind")
    if kind == "clip_bpe":
        return ClipTokenizer.from_artifact(artifact)
    if kind == "hf_tokenizers":
        path = artifact.file(info["file"])
        try:
            return HFTokenizer.from_record(path, info)
        except ImportError:
            raise ArtifactError(f"{artifact.root}: its tokenizer needs the `tokenizers` package "
                                "(pip install tokenizers)") from None
        except Exception as e:  # tokenizers raises its own Exception type for unreadable files
            raise ArtifactError(f"{artifact.root}: cannot read tokenizer {info['file']}: {e}") from None
    raise ArtifactError(f"{artifact.root}: tokenizer kind {kind!r} is not supported by this coder; upgrade coder")
