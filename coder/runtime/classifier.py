"""The Python API a robotics pipeline embeds: images in, frozen predictions out.

>>> clf = Classifier.load("coder-artifacts/ViT-B-32__openai", backend="auto")   # doctest: +SKIP
>>> [p] = clf.classify([frame_bgr], bgr=True)
>>> p.name, p.reranked, p.backend, p.timings_ms.encoder
('tabby cat', False, 'cpu', 41.2)

Stages, each its own function: :func:`preprocess` (PIL/numpy) -> encoder
(ONNX Runtime, OpenVINO or a native TensorRT engine) -> :func:`~coder.runtime.head.stage1_scores`
-> gated :func:`~coder.runtime.head.rerank`. By default the head runs as its own small
ONNX graph right after the encoder (:mod:`coder.runtime.fused`; fused into the engine for
``tensorrt-native``) and only the gate (:func:`~coder.runtime.head.gate`) runs here. One ONNX Runtime ``Classifier`` is safe to share between threads: it holds no
mutable state and sessions allow concurrent ``run``; a ``tensorrt-native`` one is not
(one execution context): give each thread its own.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..engines.openvino import BACKENDS as OV_BACKENDS
from ..engines.ort import BACKENDS
from ..errors import ArtifactError, BackendError, ConfigError, StaleEngineError
from ..manifest import PRECISIONS, load_artifact
from ..text_bank.bank import Bank, load_bank
from ..text_bank.live import ClassChange, LiveTexts
from ..text_bank.rows import KIND_IDS
from .adapter import Adapter, load_adapter
from .cpu_choice import choose_cpu_engine
from .encoder import ImageEncoder
from .head import gate, rerank, stage1_scores
from .images import to_pil
from .preprocess import preprocess_batch

NATIVE = "tensorrt-native"  # a TensorRT engine from `coder build-engine`, no ONNX Runtime
AUTO_ORDER = (NATIVE, "tensorrt", "cuda", "cpu")


@dataclass(frozen=True)
class Timings:
    """Milliseconds per image for this call's batch (batch time / batch size)."""

    preprocess: float
    encoder: float
    head: float


@dataclass(frozen=True)
class Prediction:
    """One image's result. Indices refer to the bank's class list."""

    label: int
    name: str
    top_k: tuple[int, ...]
    top_k_names: tuple[str, ...]
    stage1_scores: tuple[float, ...]  # of top_k, x100 scale
    gap: float  # softmax p1 - p2 of stage 1
    reranked: bool  # the gate fired (gap < tau)
    rerank_candidates: tuple[int, ...]  # K: the stage-1 top-k the rerank chooses among
    rerank_scores: tuple[float, ...]  # r(c) for each candidate (zeros when the gate did not fire)
    backend: str
    timings_ms: Timings
    few_shot: bool = False  # the label comes from a fitted adapter (``coder fit``)
    bank_sha256: str = ""  # the bank version (content sha256) that made this prediction


def find_bank(artifact_root: Path, name: str | None) -> Path:
    """``<artifact>/banks/<name>``; with no name, the only bank there."""
    banks_dir = artifact_root / "banks"
    found = sorted(p.parent.name for p in banks_dir.glob("*/bank.json")) if banks_dir.is_dir() else []
    if name is not None:
        path = Path(name) if Path(name, "bank.json").is_file() else banks_dir / name
        if not (path / "bank.json").is_file():
            raise ArtifactError(f"no bank {name!r} in {banks_dir} (have: {', '.join(found) or 'none'})")
        return path
    if len(found) != 1:
        what = f"several banks ({', '.join(found)}): pass --bank NAME" if found else \
            "no bank: run `coder bank build --artifacts DIR --texts TEXTS.json`"
        raise ArtifactError(f"{artifact_root}: {what}")
    return banks_dir / found[0]


@dataclass(frozen=True)
class EngineOptions:
    """Where native TensorRT engines live and what to do with a stale one."""

    engine_dir: str | None = None
    rebuild_stale: bool = False


def _native_engine_exists(artifact_dir, precision: str, opts: EngineOptions, fused_bank, k: int) -> bool:
    """True if an engine was built for this artifact here; StaleEngineError if only for another TensorRT/GPU."""
    from ..engines.trt import find_engine

    return find_engine(load_artifact(artifact_dir), precision, opts.engine_dir, fused_bank, k) is not None


def open_image_encoder(artifact_dir, backend: str, precision: str, threads: int | None,
                       allow_fallback: bool = False, fused_bank: Bank | None = None, k: int = 5,
                       engines: EngineOptions = EngineOptions()) -> ImageEncoder:
    """``backend="auto"``: a native TensorRT engine if one was built (a stale one raises, naming
    the fix), else ONNX Runtime tensorrt, cuda, then the CPU engine measured fastest here (ONNX
    Runtime or OpenVINO, :mod:`coder.runtime.cpu_choice`): the first that really loads.

    With ``fused_bank`` the encoder graph carries that bank's CODER head (top-``k``).
    """
    def load(name: str) -> ImageEncoder:
        if name == NATIVE:
            return ImageEncoder.load_trt(artifact_dir, precision, engines.engine_dir, engines.rebuild_stale,
                                         fused_bank, k)
        if fused_bank is not None:
            return ImageEncoder.load_fused(artifact_dir, fused_bank, k, precision, name, allow_fallback, threads)
        return ImageEncoder.load(artifact_dir, precision, name, allow_fallback, threads)

    if backend != "auto":
        return load(backend)
    reasons = []
    for name in AUTO_ORDER:
        try:
            if name == NATIVE and not _native_engine_exists(artifact_dir, precision, engines, fused_bank, k):
                reasons.append(f"{NATIVE}: no engine built for {precision} (coder build-engine)")
                continue
            if name == "cpu":  # the faster installed CPU engine, measured once per machine (cpu_choice)
                name = choose_cpu_engine(load_artifact(artifact_dir), precision, threads, lambda e: ImageEncoder.load(
                    artifact_dir, precision, e, allow_fallback, threads)).backend
            return load(name)
        except StaleEngineError:
            raise  # an engine was built for this artifact but cannot be used as is: say so, name the fix
        except BackendError as e:
            reasons.append(str(e))
    raise BackendError("no backend could load: " + " | ".join(reasons))


def finish(s1: np.ndarray, rr, top_k: int, adapter: Adapter | None = None, f: np.ndarray | None = None,
           clip_w: np.ndarray | None = None):
    """The one place a gated result (:func:`~coder.runtime.head.gate` / :func:`~coder.runtime.head.rerank`)
    becomes final labels and the shown top-k, for the Classifier and the Triton gate model alike.

    With a few-shot ``adapter`` its logits on ``f`` decide the label. Returns ``(rr, shown)``; ``shown`` is the
    stage-1 top-``top_k`` class ids per row (stable order), e.g. ``finish(s1, gate(...), 5)``.
    """
    if adapter is not None:
        rr = replace(rr, labels=np.argmax(adapter.logits(f, clip_w), axis=1))
    return rr, np.argsort(-s1, axis=1, kind="stable")[:, :top_k]


@dataclass(frozen=True)
class ClassifierOptions:
    """Everything that decides how a :class:`Classifier` is loaded: the one options object that
    ``classify``, ``--out``, ``--ray`` actors, ``coder bag``, the ROS 2 node and Triton models all build, so
    no entry point can drop an option. Plain data: it is shipped to Ray actors and written into Triton model
    settings (:meth:`to_dict` / :meth:`from_dict`). Paths are made absolute (resolved) here, so a worker in
    another directory opens the same files.

    >>> ClassifierOptions("art", backend="cpu").load()   # doctest: +SKIP
    """

    artifacts: str
    bank: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    tau: float | None = None
    k: int | None = None
    threads: int | None = None
    adapter: str | None = None
    allow_fallback: bool = False
    fused_head: bool = True
    engines: EngineOptions = EngineOptions()
    classes: tuple[str, ...] | None = None  # use the names+synonyms bank of these classes instead of ``bank``
    preset: str = "default"  # template preset of that bank

    def __post_init__(self) -> None:
        from ..store import resolved
        from ..text_bank.live import check_change

        if self.backend != "auto" and self.backend not in (*BACKENDS, NATIVE, *OV_BACKENDS):
            raise ConfigError(f"backend {self.backend!r}: choose auto, {', '.join(BACKENDS)}, {NATIVE}, "
                              f"{', '.join(OV_BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: choose {', '.join(PRECISIONS)}")
        if (self.tau is not None and not float(self.tau) >= 0) or (self.k is not None and int(self.k) < 1):
            raise ConfigError(f"tau must be >= 0 and k >= 1 (got tau={self.tau}, k={self.k})")
        if self.threads is not None and int(self.threads) < 1:
            raise ConfigError(f"threads must be >= 1 (got {self.threads})")
        fix = object.__setattr__  # frozen: normalise once, at construction
        if self.classes is not None:
            if self.bank is not None:
                raise ConfigError("--bank and --classes: choose one")
            check_change([], list(self.classes), [])  # ConfigError for empty or repeated names
            fix(self, "classes", tuple(self.classes))
        fix(self, "artifacts", str(resolved(self.artifacts)))
        if self.adapter is not None:
            fix(self, "adapter", str(resolved(self.adapter)))
        if isinstance(self.engines, dict):
            fix(self, "engines", EngineOptions(**self.engines))
        if self.engines.engine_dir is not None:
            fix(self, "engines", replace(self.engines, engine_dir=str(resolved(self.engines.engine_dir))))

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierOptions":
        return cls(**d)

    def load(self) -> "Classifier":
        return Classifier.from_options(self)


@dataclass(frozen=True)
class Classifier:
    encoder: ImageEncoder
    bank: Bank
    tau: float
    k: int
    adapter: Adapter | None = None
    options: ClassifierOptions | None = None
    change: ClassChange | None = None  # set on a classifier made by :meth:`with_classes`
    texts: LiveTexts | None = field(default=None, compare=False, repr=False)  # shared text side (lazy)

    @classmethod
    def load(cls, artifact_dir: str | os.PathLike, bank: str | None = None, backend: str = "auto",
             precision: str = "fp32", tau: float | None = None, k: int | None = None,
             threads: int | None = None, adapter: str | os.PathLike | None = None,
             allow_fallback: bool = False, fused_head: bool = True,
             engines: EngineOptions = EngineOptions(), classes: Sequence[str] | None = None,
             preset: str = "default") -> "Classifier":
        """Open an artifact + bank: the keyword form of :class:`ClassifierOptions` (same fields, same checks).
        ``tau``/``k`` default to the bank's preset (published values).

        ``fused_head`` runs the CODER head as an ONNX graph after the encoder (a one-thread
        session; on a 2-core CPU it halved batch-1 latency, as the numpy head's BLAS threads no
        longer contend with ONNX Runtime's: benchmarks/bench_fused.py);
        ``allow_fallback`` turns a provider mismatch into a warning (``backend`` then names
        what really runs). ``classes`` (instead of ``bank``): the bank ``coder texts init`` + ``coder texts
        synonyms -a`` + ``coder bank build`` give for these names, built once and cached by content.
        """
        return cls.from_options(ClassifierOptions(
            os.fspath(artifact_dir), bank, backend, precision, tau, k, threads,
            None if adapter is None else os.fspath(adapter), allow_fallback, fused_head, engines,
            None if classes is None else tuple(classes), preset))

    @classmethod
    def from_options(cls, o: ClassifierOptions) -> "Classifier":
        art = load_artifact(o.artifacts)
        art.encoder("image", o.precision)  # not exported: ArtifactError naming the re-export, before any backend
        if o.classes is not None:
            from ..text_bank.class_lists import bank_for_classes

            b = bank_for_classes(art.root, o.classes, o.preset)
        else:
            b = load_bank(find_bank(art.root, o.bank), art)
        tau = b.tau if o.tau is None else float(o.tau)
        k = b.k if o.k is None else int(o.k)
        enc = open_image_encoder(o.artifacts, o.backend, o.precision, o.threads, o.allow_fallback,
                                 b if o.fused_head else None, k, o.engines)
        from ..store import is_within

        banks = art.root / "banks"  # the embedding cache the artifact's banks share (also for class-list banks)
        cache_dir = banks if is_within(b.root, banks) else Path(b.root).parent
        texts = LiveTexts(art.root, b.meta["encoder"].get("precision", "fp32"), cache_dir)
        return cls(enc, b, tau, k, load_adapter(o.adapter, b) if o.adapter is not None else None, o, None, texts)

    @property
    def backend(self) -> str:
        return self.encoder.backend

    def close(self) -> None:
        """Free the encoder's device resources (native TensorRT); the classifier is unusable after."""
        self.encoder.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names in label order (``Prediction.label`` indexes this)."""
        return tuple(self.bank.class_names)

    @property
    def bank_sha256(self) -> str:
        """The bank version this classifier predicts with (:func:`~coder.text_bank.bank.content_sha256`)."""
        return self.bank.content_sha256

    @property
    def head(self) -> str:
        """Where the CODER head runs: ``onnx`` (its own graph), ``fused`` (inside a TensorRT engine), ``numpy``."""
        return "numpy" if not self.encoder.fused else "onnx" if self.encoder.head is not None else "fused"

    def with_classes(self, add: Sequence[str] = (), remove: Sequence[str] = (), texts=None) -> "Classifier":
        """A NEW classifier with classes added (after the ones that stay, in order) and/or removed; this one
        keeps working unchanged. The image encoder is shared; only texts not in the embedding cache are
        encoded (the text encoder loads on the first change and is shared too); the head is rebuilt in memory.
        ``.change`` reports what changed (:class:`~coder.text_bank.live.ClassChange`, e.g. classes whose
        analogous-object texts METHOD.md's rule dropped). Swapping is one reference assignment::

            clf = clf.with_classes(add=["zebra"], remove=["truck"])

        ``texts``: a ``Texts`` (``load_texts(...)`` after ``coder texts generate``) or
        ``{"zebra": {"syn": [...], "att": [...], "ana": [...], "pairs": {"horse": [...]}}}``; other new
        classes get names + WordNet synonyms. Bad names raise ConfigError; a few-shot adapter cannot follow.
        ``options`` still describe how the base classifier was loaded; ``bank_sha256`` names the bank in use
        (to reload a changed bank elsewhere, write it with ``coder bank add/remove``).
        """
        from ..text_bank.live import change_bank

        if self.adapter is not None:
            raise ConfigError("this classifier has a few-shot adapter, fitted to its classes: load one without "
                              "--adapter to change classes, then fit a new adapter (coder fit)")
        if self.texts is None:
            raise ConfigError("this classifier was not loaded from an artifact (Classifier.load): no text encoder")
        bank, change = change_bank(self.bank, self.texts.encoder(), add, remove, texts)
        return replace(self, encoder=self.encoder.with_head(bank, self.k), bank=bank, change=change)

    def _pixels(self, images: Sequence, bgr: bool) -> np.ndarray:
        return preprocess_batch([to_pil(im, bgr) for im in images], self.encoder.preprocess_config)

    def embed(self, images: Sequence, bgr: bool = False) -> tuple[np.ndarray, float, float]:
        """Images -> (B,D) unit rows, preprocess ms, encoder ms."""
        t0 = time.perf_counter()
        pixels = self._pixels(images, bgr)
        t1 = time.perf_counter()
        f = self.encoder.encode_pixels(pixels)
        return f, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3

    def classify(self, images, top_k: int = 5, rerank_enabled: bool = True, bgr: bool = False) -> list[Prediction]:
        """One :class:`Prediction` per image; a single image (not in a list) also works."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            return []
        t0 = time.perf_counter()
        pixels = self._pixels(images, bgr)
        return self.classify_pixels(pixels, top_k, rerank_enabled, (time.perf_counter() - t0) * 1e3)

    def classify_pixels(self, pixels: np.ndarray, top_k: int = 5, rerank_enabled: bool = True,
                        t_pre: float = 0.0) -> list[Prediction]:
        """Already-preprocessed input (B,3,H,W) float32 (e.g. from a separate decode stage) ->
        one :class:`Prediction` per row, exactly as :meth:`classify` on the same images."""
        if len(pixels) == 0:
            return []
        t1 = time.perf_counter()
        if not self.encoder.fused:
            f = self.encoder.encode_pixels(pixels)
            return self.classify_embeddings(f, top_k, rerank_enabled, t_pre, (time.perf_counter() - t1) * 1e3)
        out = self.encoder.run_head(pixels)  # encoder + stage 1 + r(c), one engine call
        t2 = time.perf_counter()
        rr = gate(out.topk_ids, out.gap, out.rerank, self.tau if rerank_enabled else -1.0)
        return self._finish(out.embedding, out.stage1, rr, top_k, t_pre, (t2 - t1) * 1e3, t2)

    def classify_embeddings(self, f: np.ndarray, top_k: int = 5, rerank_enabled: bool = True,
                            t_pre: float = 0.0, t_enc: float = 0.0) -> list[Prediction]:
        """The CODER head (numpy) on precomputed unit embeddings (B,D)."""
        t0 = time.perf_counter()
        s1 = stage1_scores(f, self.bank)
        rr = rerank(f, s1, self.bank, self.tau if rerank_enabled else -1.0, self.k)
        return self._finish(f, s1, rr, top_k, t_pre, t_enc, t0)

    def _finish(self, f: np.ndarray, s1: np.ndarray, rr, top_k: int, t_pre: float, t_enc: float,
                t0: float) -> list[Prediction]:
        """Adapter (if any), displayed top-k and timings; ``t0`` is when the head started."""
        rr, shown = finish(s1, rr, top_k, self.adapter, f, self.bank.clip_w if self.adapter is not None else None)
        t_head = (time.perf_counter() - t0) * 1e3
        n = len(f)
        timings = Timings(t_pre / n, t_enc / n, t_head / n)
        return [self._prediction(i, s1, rr, shown[i], timings) for i in range(n)]

    def _prediction(self, i: int, s1: np.ndarray, rr, shown: np.ndarray, timings: Timings) -> Prediction:
        names = self.class_names
        top = [int(c) for c in shown]
        return Prediction(
            label=int(rr.labels[i]), name=names[int(rr.labels[i])], top_k=tuple(top),
            top_k_names=tuple(names[c] for c in top), stage1_scores=tuple(float(s1[i, c]) for c in top),
            gap=float(rr.gap[i]), reranked=bool(rr.fired[i]),
            rerank_candidates=tuple(int(c) for c in rr.top[i]),
            rerank_scores=tuple(float(x) for x in rr.scores[i]), backend=self.backend, timings_ms=timings,
            few_shot=self.adapter is not None, bank_sha256=self.bank_sha256)

    def explain(self, image, n: int = 3, bgr: bool = False) -> dict[str, list[tuple[str, float]]]:
        """For the final label and the runner-up: the raw texts most similar to the image."""
        f, _, _ = self.embed([image], bgr)
        pred = self.classify_embeddings(f)[0]
        runner = next(c for c in pred.top_k if c != pred.label) if len(pred.top_k) > 1 else pred.label
        texts = self.bank.meta["raw_texts"]
        sims = self.bank.raw_emb @ f[0]
        out = {}
        for c in dict.fromkeys([pred.label, runner]):
            rows = np.flatnonzero((self.bank.raw_class == c) & (self.bank.raw_kind != KIND_IDS["clip"]))
            best = rows[np.argsort(-sims[rows], kind="stable")[:n]]
            out[self.class_names[c]] = [(texts[r], float(sims[r])) for r in best]
        return out
