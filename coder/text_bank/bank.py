"""``coder bank build``: encode every text of a texts file and write the folded CODER bank.

Layout, under the artifact directory (or ``--out``)::

    banks/<name>/bank.json   format "coder.bank" v1: encoder sha256, texts sha256, settings, raw texts
    banks/<name>/bank.npz    folded head + raw rows (numpy, loaded with allow_pickle=False)
    banks/.embed-cache-<sha>-t<v>.npz   text-embedding cache per encoder and text-encoding version
                                        (only changed texts re-encode)

Loading refuses a bank of another format version or whose text encoder differs
from the artifact's (typed error naming the fix).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ArtifactError, StorageError
from ..store import (DAMAGED, atomic_path, atomic_write_json, is_within, read_json, resolved, sha256_file,
                     warn_damaged, warn_unwritable)
from ..manifest import Artifact, load_artifact, verify_file
from .fold import fold
from .rows import KIND_IDS, Rows, expand
from .texts import Texts, to_json

FORMAT = "coder.bank"
FORMAT_VERSION = 1
RAW_KEYS = ("raw_emb", "raw_kind", "raw_class", "raw_other")
HEAD_KEYS = ("g_sum", "g_count", "n_emb", "n_class", "pair_vec", "pair_from", "pair_to")


@dataclass(frozen=True)
class Bank:
    """A loaded bank: the folded head arrays plus raw rows for explain/reference checks."""

    root: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    artifact_root: Path | None = None  # where the text encoder is, for the lazy plain-CLIP W

    @property
    def clip_w(self) -> np.ndarray:
        """(C,D) plain-CLIP weights: stored by an eager build, else computed once (:mod:`.clip_weights`)."""
        return self.load_clip_weights()

    def load_clip_weights(self, on_progress: Callable[[int, int], None] = lambda done, total: None) -> np.ndarray:
        """:attr:`clip_w`, reporting ``on_progress(done, total)`` texts while the ensemble is encoded
        (80,000 texts for ImageNet-1k the first time; nothing when stored or cached)."""
        if "clip_w" not in self.arrays:
            from .clip_weights import plain_clip_weights

            self.arrays["clip_w"] = plain_clip_weights(self, self.artifact_root, on_progress)
        return self.arrays["clip_w"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["classes"]

    @property
    def content_sha256(self) -> str:
        """The version id of this bank's content (:func:`content_sha256`); computed once for older banks."""
        if "content_sha256" not in self.meta:
            self.meta["content_sha256"] = content_sha256(self.arrays, self.class_names, self.meta["settings"])
        return self.meta["content_sha256"]

    @property
    def tau(self) -> float:
        return float(self.meta["settings"]["tau"])

    @property
    def k(self) -> int:
        return int(self.meta["settings"]["k"])

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)


def texts_sha256(t: Texts) -> str:
    return hashlib.sha256(json.dumps(to_json(t), sort_keys=True).encode()).hexdigest()


def default_bank_dir(artifact: Artifact, name: str) -> Path:
    return artifact.root / "banks" / name


class EmbeddingCache:
    """(text encoder sha256, tokenizer, text-encoding version, text) -> embedding, beside the banks.

    One main ``.npz`` per encoder, tokenizer and encoding version, plus small ``.part-*`` files that
    :meth:`save_new` appends (so adding one class does not rewrite a large cache); :meth:`save` merges
    them into the main file. The key is in the file name, so rows of another encoder, tokenizer or encoding
    (for example version 1, which cut texts holding "!" one token short) are never served. A damaged file is
    a warning and is skipped; an unwritable directory is a warning and the rows stay in memory.
    Example: ``EmbeddingCache(Path("banks"), sha, 2, tok).path.name == f".embed-cache-{sha[:16]}-k{tok[:12]}-t2.npz"``.
    """

    MAX_PARTS = 32  # more part files than this: the next save_new merges them

    def __init__(self, directory: Path, encoder_sha: str, encoding_version: int, tokenizer_key: str = ""):
        self.dir = Path(directory)
        stem = f".embed-cache-{encoder_sha[:16]}" + (f"-k{tokenizer_key[:12]}" if tokenizer_key else "") \
            + f"-t{int(encoding_version)}"
        self.path = self.dir / f"{stem}.npz"
        self._part_glob = f"{stem}.part-*.npz"
        # Older names (no encoding version, no tokenizer key): never read, dropped on the next save.
        self.legacy = [self.dir / f".embed-cache-{encoder_sha[:16]}.npz"]
        if tokenizer_key:
            self.legacy.append(self.dir / f".embed-cache-{encoder_sha[:16]}-t{int(encoding_version)}.npz")
        self.table: dict[str, np.ndarray] = {}
        self._unsaved: list[str] = []
        for path in [self.path, *self._parts()]:
            self._read(path)

    def _parts(self) -> list[Path]:
        return sorted(self.dir.glob(self._part_glob)) if self.dir.is_dir() else []

    def _read(self, path: Path) -> None:
        if not path.is_file():
            return
        try:
            with np.load(path, allow_pickle=False) as z:
                self.table.update(zip(z["texts"].tolist(), z["emb"]))
        except DAMAGED as e:  # a damaged cache is only a slower rebuild: its texts are encoded again
            warn_damaged("text-embedding cache", path, e)

    def missing(self, texts: list[str]) -> list[str]:
        return sorted({t for t in texts if t not in self.table})

    def add(self, texts: list[str], emb: np.ndarray) -> None:
        new = [t for t in texts if t not in self.table]
        self.table.update(zip(texts, emb))
        self._unsaved.extend(new)

    def lookup(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)

    def _write(self, path: Path, keys: list[str]) -> bool:
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, texts=np.array(keys, dtype=str), emb=np.stack([self.table[k] for k in keys]))
            return True
        except (StorageError, OSError) as e:
            warn_unwritable("text-embedding cache", path, e)
            return False

    def save(self) -> None:
        """Write every row into the main file and drop the part files and legacy names."""
        if not self.table or not self._write(self.path, list(self.table)):
            return
        self._unsaved = []
        for p in [*self._parts(), *self.legacy]:
            p.unlink(missing_ok=True)

    def save_new(self) -> None:
        """Write only the rows added since the last save, as one small part file (cheap for a large cache)."""
        if not self._unsaved:
            return
        if len(self._parts()) >= self.MAX_PARTS:
            return self.save()
        part = self.dir / self._part_glob.replace("*", f"{os.getpid()}-{time.time_ns()}")
        if self._write(part, list(dict.fromkeys(self._unsaved))):
            self._unsaved = []


def embedding_cache(encoder, directory: Path) -> EmbeddingCache:
    """The cache of ``encoder`` (a :class:`~.text_encoder.TextEncoder`) in ``directory``."""
    return EmbeddingCache(directory, encoder.encoder_sha256, encoder.encoding_version, encoder.tokenizer_key)


def encode_rows(rows: Rows, encoder, cache_dir: Path, on_progress: Callable[[int, int], None] = lambda d, t: None,
                batch_size: int = 64) -> tuple[np.ndarray, int]:
    """Embeddings of every row (cache first); returns (emb, number newly encoded)."""
    cache = embedding_cache(encoder, cache_dir)
    todo = cache.missing(rows.texts)
    done = 0
    on_progress(0, len(todo))
    for start in range(0, len(todo), 4096):  # save the cache every chunk: an interrupt loses little
        chunk = todo[start:start + 4096]
        cache.add(chunk, encoder.encode(chunk, batch_size))
        cache.save()
        done += len(chunk)
        on_progress(done, len(todo))
    return cache.lookup(rows.texts), len(todo)


def _without_clip(rows: Rows) -> Rows:
    keep = rows.kind != KIND_IDS["clip"]
    return Rows([t for t, k in zip(rows.texts, keep) if k], rows.kind[keep], rows.cls[keep], rows.other[keep],
                rows.group[keep])


def texts_arrays(texts: Texts, encoder, cache_dir: Path, clip_weights: bool = False,
                 on_progress: Callable[[int, int], None] = lambda d, t: None) -> tuple[dict[str, np.ndarray], Rows, int]:
    """Encode (cache first) and fold every text: (bank arrays incl. raw rows, rows, number newly encoded)."""
    rows = expand(texts) if clip_weights else _without_clip(expand(texts))
    emb, n_new = encode_rows(rows, encoder, cache_dir, on_progress)
    arrays = fold(rows, emb, len(texts.classes))
    if not clip_weights:
        del arrays["clip_w"]  # zeros here: no ensemble rows were encoded
    arrays.update(raw_emb=emb, raw_kind=rows.kind, raw_class=rows.cls, raw_other=rows.other)
    return arrays, rows, n_new


def content_sha256(arrays: dict[str, np.ndarray], classes: list[str], settings: dict[str, Any]) -> str:
    """The bank's version id: sha256 over the class names, tau/k and the folded head arrays (not the npz
    file's bytes, which carry zip timestamps). Equal ids predict identically."""
    h = hashlib.sha256(json.dumps({"classes": list(classes), "settings": settings}, sort_keys=True).encode())
    for key in HEAD_KEYS:
        a = np.ascontiguousarray(arrays[key])
        h.update(f"|{key}:{a.dtype.str}:{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def bank_meta(texts: Texts, encoder, precision: str, rows: Rows, arrays: dict[str, np.ndarray], n_new: int,
              clip_weights: bool = False, texts_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """bank.json contents (without ``npz_sha256``, which :func:`write_bank` adds)."""
    settings = {"tau": texts.templates["tau"], "k": texts.templates["k"]}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": texts.name,
        "encoder": {"file": encoder.engine.path.name, "sha256": encoder.encoder_sha256, "precision": precision,
                    "text_encoding": encoder.encoding_version, "tokenizer_key": encoder.tokenizer_key},
        "texts_sha256": texts_sha256(texts), "texts_file": str(Path(texts_file).resolve()) if texts_file else None,
        "content_sha256": content_sha256(arrays, texts.class_names, settings),
        "classes": texts.class_names, "preset": texts.preset, "settings": settings,
        "counts": {"texts": len(rows.texts), "newly_encoded": n_new, "pairs": int(len(arrays["pair_vec"]))},
        "raw_texts": rows.texts, "clip_templates": list(texts.templates["clip"]),
        "clip_weights": "stored" if clip_weights else "on first use",
        "texts": to_json(texts),  # the words per class: what `coder bank add/remove` and with_classes start from
    }


def write_bank(out: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``bank.npz`` then ``bank.json`` (each atomically) into ``out``; returns the meta written."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "bank.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    meta = {**meta, "npz_sha256": sha256_file(out / "bank.npz")}
    meta.pop("npz_file", None)
    atomic_write_json(out / "bank.json", meta)
    return meta


def build_bank(artifact_dir: str | os.PathLike, texts: Texts, precision: str = "fp32", out: Path | None = None,
               on_progress: Callable[[int, int], None] = lambda d, t: None,
               clip_weights: bool = False, texts_file: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]]:
    """Encode + fold + write; returns (bank dir, bank.json contents).

    The plain-CLIP prompt ensemble (``templates.clip``) is encoded only with ``clip_weights``;
    otherwise its W is computed on first use (:mod:`.clip_weights`), the same numbers.
    """
    from .text_encoder import TextEncoder

    encoder = TextEncoder.load(artifact_dir, precision)
    out = out or default_bank_dir(encoder.artifact, texts.name)
    arrays, rows, n_new = texts_arrays(texts, encoder, out.parent, clip_weights, on_progress)
    meta = bank_meta(texts, encoder, precision, rows, arrays, n_new, clip_weights, texts_file)
    meta["texts_file"] = _recorded_texts_file(out, texts_file)
    return out, write_bank(out, arrays, meta)


def _recorded_texts_file(bank_dir: Path, texts_file: str | os.PathLike | None) -> str | None:
    """How ``bank.json`` names its texts file: relative to the bank when the file lies in the same artifact
    (so a moved or packed artifact still finds it, e.g. ``../../texts-cifar10.json``), else absolute."""
    if texts_file is None:
        return None
    target, art_root = resolved(texts_file), resolved(bank_dir).parent.parent
    return os.path.relpath(target, resolved(bank_dir)) if is_within(target, art_root) else str(target)


def check_replace(out: Path, texts: Texts, texts_file: str | os.PathLike, force: bool) -> None:
    """Refuse (ArtifactError) to overwrite a bank built from ANOTHER texts file unless ``force``.

    Rebuilding from the same file after editing it is the normal incremental workflow and
    goes on; a bank whose texts are identical is also fine, whatever file they came from.
    """
    try:
        old = read_json(Path(out) / "bank.json")
    except (OSError, ValueError):
        return
    old_file = old.get("texts_file")
    same_file = old_file is None or resolved(Path(out) / old_file) == resolved(texts_file)
    if force or same_file or old.get("texts_sha256") == texts_sha256(texts):
        return
    raise ArtifactError(f"bank {Path(out).name!r} at {out} was built from {old_file}; pass --force to replace it "
                        f"or --name NAME to build beside it")


def _refuse_old_text_encoding(root: Path, meta: dict[str, Any], art: Artifact) -> None:
    """A bank from text-encoding 1 is wrong where a text holds the token "!" (id 0) before its end.

    That encoding took id 0 for padding, so such a text lost its end-of-text token, and so did every
    text batched with it. Banks without such a text were encoded correctly and still load.
    """
    if int(meta["encoder"].get("text_encoding", 1)) >= 2 or art.manifest["text"]["tokenizer"].get("kind") != "clip_bpe":
        return
    suspects = [t for t in meta.get("raw_texts", []) if "!" in t]
    if not suspects:
        return
    from .tokenizer import ClipTokenizer

    tok = ClipTokenizer.from_artifact(art)
    ids = tok(suspects)
    inner_zero = (ids[:, 1:] == 0) & (np.arange(1, ids.shape[1]) < tok.lengths(ids)[:, None] - 1)
    if inner_zero.any():
        raise ArtifactError(f"{root} was encoded by an older coder that cut texts holding '!' one token short; "
                            f"rebuild it: coder bank build --artifacts {art.root} --texts TEXTS.json")


def load_bank(bank_dir: str | os.PathLike, artifact: Artifact | str | os.PathLike | None = None) -> Bank:
    """Read a bank; with ``artifact`` also check it was built by that artifact's text encoder."""
    root = Path(bank_dir)
    if not (root / "bank.json").is_file():
        raise ArtifactError(f"{root}: no bank.json; build one with `coder bank build`")
    try:
        meta = read_json(root / "bank.json")
    except ValueError as e:
        raise ArtifactError(f"{e}; rebuild with `coder bank build`") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{root}: bank format {meta.get('format')!r} v{meta.get('format_version')!r}, "
                            f"this coder reads {FORMAT} v{FORMAT_VERSION}; rebuild with `coder bank build`")
    npz = str(meta.get("npz_file", "bank.npz"))  # a versioned bank's bank.json names its version's npz
    try:
        verify_file(root, npz, str(meta.get("npz_sha256")))
    except ArtifactError:
        raise ArtifactError(f"{root}/{npz} does not match bank.json (corrupt or replaced); rebuild the bank") from None
    except FileNotFoundError:
        raise ArtifactError(f"{root}/{npz} is missing; rebuild the bank") from None
    if artifact is not None:
        art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        file_entry = art.manifest["files"].get(meta["encoder"]["file"])
        if file_entry is None or file_entry["sha256"] != meta["encoder"]["sha256"]:
            raise ArtifactError(f"{root} was built with another text encoder than {art.root}; "
                                f"rebuild it: coder bank build --artifacts {art.root} --texts TEXTS.json")
        _refuse_old_text_encoding(root, meta, art)
    with np.load(root / npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    art_root = art.root if artifact is not None else None
    return Bank(root, meta, arrays, art_root)
