"""Build a native TensorRT image engine, validate EVERY output against ONNX Runtime on the CPU, install it.

The one workflow behind ``coder build-engine``, ``coder export --engine tensorrt`` and
``--rebuild-stale``. It sits above both the engine layer (:mod:`coder.engines.trt`: build, name,
run engine files) and the runtime's reference path (ONNX Runtime CPU encoder + numpy head):

1. build (:func:`coder.engines.trt.build_engine_trt`) into a staging file beside the final name,
   from the plain encoder graph or the encoder with a bank's CODER head fused
   (:func:`coder.runtime.fused.ensure_fused_onnx`);
2. validate the staged engine on real-looking scenes (:mod:`coder.samples`) against the fp32
   ONNX Runtime CPU encoder + the numpy head (:func:`validate_engine`): embedding cosine, and with
   a bank stage-1 scores, top-k ids, gap, rerank scores and the final labels;
3. only if it passed: move it to its final name and write its sidecar (key + validation bound to the
   engine's sha256), then record it in ``manifest["engines"]``.

A failure, an exception or Ctrl-C at any point removes the staging file: nothing unvalidated is ever
loadable (the loader refuses an engine without a passing validation of its exact bytes).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..engines.head_graph import OUTPUTS, clamp_k
from ..engines.trt import BuildOptions, build_engine_trt, engine_path, open_engine
from ..engines.trt_key import write_key
from ..errors import ArtifactError, BackendError
from ..store import sha256_file
from ..manifest import load_artifact, write_manifest
from .head import gate, rerank, softmax_gap, stage1_scores

MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.99  # an int8 engine is held to the int8 export gate (coder.export.validate.INT8_MIN_COS)
ATOL = 1e-3  # float32 head arithmetic on top of the embedding error (x100 score scale)
RERANK_TAUS = (None, 1.01)  # the bank's tau, and the rerank forced on for every image
# The most a stage-1 score (x100) moves under an embedding error validation accepts: |df| <= sqrt(2 (1 - cos)).
MAX_TOL = 100.0 * float(np.sqrt(2.0 * (1.0 - MIN_COSINE))) + ATOL


@dataclass(frozen=True)
class EngineValidation:
    """Engine vs fp32 ONNX Runtime CPU on ``images`` synthetic scenes.

    ``outputs`` maps each compared output to ``{"max_abs_diff", "max_over_tolerance", "passed"}``; a
    difference is judged against the bound the embedding error allows (a stage-1 score moves at most
    ``100 * |f_engine - f_ref|``). ``near_ties`` counts label differences on images whose reference
    decision is itself within tolerance (accepted); any other label difference fails.
    Example: ``min_cosine=0.99994, top1_agreement=1.0, label_agreement=1.0, failed=(), passed=True``.
    """

    images: int
    min_cosine: float
    mean_cosine: float
    top1_agreement: float | None  # None without a bank
    passed: bool
    label_agreement: float | None = None
    near_ties: int = 0
    outputs: dict = field(default_factory=dict)
    failed: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineBuild:
    path: Path
    key: dict
    validation: EngineValidation


def reference_pixels(art, n_images: int = 16) -> np.ndarray:
    """(n,3,H,W) float32: the artifact's preprocessing of ``n`` 640x480 synthetic scenes."""
    from ..samples import synthetic_scene
    from .preprocess import preprocess_batch

    return preprocess_batch([synthetic_scene(1000 + i, (640, 480)) for i in range(n_images)], art.preprocess)


def _engine_outputs(engine, pixels: np.ndarray, max_batch: int, bank, k: int) -> dict[str, np.ndarray]:
    """The five head outputs: from a fused engine directly, else the numpy head on its embeddings."""
    from ..vectors import l2_normalize

    chunks = [pixels[i:i + max_batch] for i in range(0, len(pixels), max_batch)]
    if getattr(engine, "output_names", None) == list(OUTPUTS):
        parts = [engine.run_all(c) for c in chunks]
        return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(OUTPUTS)}
    f = l2_normalize(np.concatenate([engine.run(c) for c in chunks]).astype(np.float32))
    return {"embedding": f} if bank is None else _numpy_head(f, bank, k)


def _numpy_head(f: np.ndarray, bank, k: int) -> dict[str, np.ndarray]:
    s1 = stage1_scores(f, bank)
    top, gap = softmax_gap(s1, k)
    r = rerank(f, s1, bank, np.inf, k).scores  # r(c) for every image, as the fused graph computes it
    return {"embedding": f, "stage1": s1, "topk_ids": top, "gap": gap, "rerank": r}


def _judge(diff: np.ndarray, tol: np.ndarray) -> dict:
    over = float(np.max(diff - tol)) if diff.size else 0.0
    return {"max_abs_diff": float(np.max(diff)) if diff.size else 0.0, "max_over_tolerance": over,
            "passed": bool(over <= 0.0)}


def _compare_head(got: dict, want: dict, bank, k: int, tau: float, tol: np.ndarray) -> tuple[dict, np.ndarray, int]:
    """Per-output verdicts, per-image label agreement and the count of accepted near-ties."""
    s1_ref, n = want["stage1"], len(tol)
    rows = np.arange(n)[:, None]
    out = {"stage1": _judge(np.abs(got["stage1"] - s1_ref).max(1), tol)}
    ids = np.asarray(got["topk_ids"])
    ok_ids = ids.shape == want["topk_ids"].shape and ids.dtype.kind in "iu" and bool(
        ((ids >= 0) & (ids < s1_ref.shape[1])).all())
    swap = np.abs(s1_ref[rows, np.clip(ids, 0, s1_ref.shape[1] - 1)] - s1_ref[rows, want["topk_ids"]]).max(1) \
        if ok_ids else np.full(n, np.inf)
    out["topk_ids"] = _judge(swap, 2 * tol)  # only near-tied candidates may trade places
    out["gap"] = _judge(np.abs(got["gap"] - want["gap"]), tol)
    pair_norm = float(np.linalg.norm(bank.pair_vec, axis=1).max()) if len(bank.pair_vec) else 0.0
    rtol = pair_norm * tol / 50.0 + 1e-4  # |dr| <= 2 |pair| |df| and tol = 100 |df| + ATOL
    same = np.array([ok_ids and set(ids[i]) == set(want["topk_ids"][i]) for i in range(n)])
    r_diff = np.zeros(n)
    for i in np.flatnonzero(same):
        order = {c: j for j, c in enumerate(want["topk_ids"][i])}
        aligned = want["rerank"][i][[order[c] for c in ids[i]]]
        r_diff[i] = np.abs(got["rerank"][i] - aligned).max()
    out["rerank"] = _judge(r_diff, rtol)
    agree, ties = np.ones(n, bool), 0
    for t in (tau, 1.01):
        mine = gate(ids, got["gap"], got["rerank"], t).labels if ok_ids else np.full(n, -1)
        ref = rerank(want["embedding"], s1_ref, bank, t, k)
        differ = mine != ref.labels
        near = near_tie(ref.gap, t, s1_ref, ref.fired, ref.scores, tol, rtol)
        ties += int((differ & near).sum())
        agree &= ~differ
        out[f"labels@tau={t:g}"] = {"max_abs_diff": float(differ.mean()), "max_over_tolerance": float(
            (differ & ~near).sum()), "passed": bool(not (differ & ~near).any())}
    return out, agree, ties


def _top2(scores) -> np.ndarray:
    """(B, 2): the two best scores of each row (the best twice for a single column)."""
    s = -np.sort(-np.atleast_2d(np.asarray(scores, np.float64)), axis=1)
    return s[:, [0, min(1, s.shape[1] - 1)]]


def near_tie(gap, tau: float, stage1, fired, rerank_scores, tol, rtol) -> np.ndarray:
    """(B,) bool: the REFERENCE decision is itself a near-tie, so a backend within tolerance may label differently.

    Near-tie: the gap is within ``tol`` of ``tau`` (the gate could go either way), the two best stage-1 scores
    are within ``2 tol``, or the rerank fired and its two best scores are within ``2 rtol``. ``stage1`` and
    ``rerank_scores`` are (B, n) in any order (all classes, or the top-k / candidates only). The one rule of
    engine validation (:func:`validate_engine`) and ``benchmarks/gpu_check.sh`` (:func:`compare_labels`).

    >>> near_tie([0.30], 0.3, [[20.0, 10.0]], [False], [[0.0, 0.0]], 1e-3, 1e-4)
    array([ True])
    """
    gap, fired = np.asarray(gap, np.float64), np.asarray(fired, bool)
    tol, rtol = np.asarray(tol, np.float64), np.asarray(rtol, np.float64)
    s, r = _top2(stage1), _top2(rerank_scores)
    return (np.abs(gap - tau) <= tol) | (s[:, 0] - s[:, 1] <= 2 * tol) | (fired & (r[:, 0] - r[:, 1] <= 2 * rtol))


@dataclass(frozen=True)
class LabelComparison:
    """A backend's ``coder classify --json`` labels against the reference run's (cpu fp32), image by image.

    ``equal`` identical labels; ``near_ties`` differing labels accepted by :func:`near_tie`; ``differ``
    (file, reference label, label) of the others; ``passed`` if there are none and both runs have every image.
    """

    total: int
    equal: int
    near_ties: int
    differ: tuple = ()
    passed: bool = True


def _shared_diff(a: dict, b: dict, ids: str, scores: str) -> float:
    """Largest |score difference| over the classes both records list under ``ids`` (0 if none)."""
    theirs = dict(zip(b.get(ids) or (), b.get(scores) or ()))
    diffs = [abs(float(v) - float(theirs[c])) for c, v in zip(a.get(ids) or (), a.get(scores) or ()) if c in theirs]
    return max(diffs, default=0.0)


def compare_labels(ref_rows: list[dict], rows: list[dict], tau: float) -> LabelComparison:
    """Compare classify records (same images, same order) with :func:`near_tie`, the validation's rule.

    Without embeddings in the records, an image's tolerance is the score difference the two runs show on it:
    ``tol`` = the largest stage-1 difference over the top-k classes both list + ``ATOL``, ``rtol`` = the largest
    rerank-score difference over shared candidates + 1e-4. An image whose scores moved more than an embedding
    that passes validation (cosine >= ``MIN_COSINE``) can move them (:data:`MAX_TOL`) is never a near-tie:
    a backend far off cannot excuse itself with its own error.

    >>> compare_labels([{"file": "a", "label": 1}], [{"file": "a", "label": 1}], 0.3).passed
    True
    """
    differ, ties, equal = [], 0, 0
    for a, b in zip(ref_rows, rows):
        if a.get("label") == b.get("label"):
            equal += 1
            continue
        tol = _shared_diff(a, b, "top_k", "stage1_scores") + ATOL
        rtol = _shared_diff(a, b, "rerank_candidates", "rerank_scores") + 1e-4
        s1 = [a.get("stage1_scores") or [0.0]]
        r = [a.get("rerank_scores") or [0.0]]
        if a.get("error") is None and max(tol, rtol) <= MAX_TOL and bool(
                near_tie([a.get("gap", 0.0)], tau, s1, [bool(a.get("reranked"))], r, tol, rtol)[0]):
            ties += 1
        else:
            differ.append((a.get("file"), a.get("label"), b.get("label")))
    return LabelComparison(len(ref_rows), equal, ties, tuple(differ), not differ and len(rows) == len(ref_rows))


def validate_engine(engine, art, bank=None, k: int = 5, max_batch: int = 8, n_images: int = 16,
                    tau: float | None = None, min_cosine: float = MIN_COSINE) -> EngineValidation:
    """Compare ``engine`` (``run``, and ``run_all`` for fused graphs) with the ONNX Runtime CPU path.

    The reference is the fp32 encoder on ONNX Runtime's CPU provider + the numpy head (the
    ``--backend cpu`` classifier); with ``bank`` every head output and the final labels at the
    bank's tau and with the rerank forced on are compared as well.
    """
    from .encoder import ImageEncoder

    k = clamp_k(k, len(bank.class_names)) if bank is not None else k
    pixels = reference_pixels(art, n_images)
    ref_encoder = ImageEncoder.load(art.root, "fp32", "cpu")
    f_ref = ref_encoder.encode_pixels(pixels)
    want = {"embedding": f_ref} if bank is None else _numpy_head(f_ref, bank, k)
    got = _engine_outputs(engine, pixels, max_batch, bank, k)
    f = got["embedding"] / np.maximum(np.linalg.norm(got["embedding"], axis=1, keepdims=True), 1e-12)
    cos = (f * f_ref).sum(axis=1)
    outputs = {"embedding": {"max_abs_diff": float(1 - cos.min()), "max_over_tolerance": float(
        (1 - cos.min()) - (1 - min_cosine)), "passed": bool(cos.min() >= min_cosine)}}
    top1 = labels = None
    ties = 0
    if bank is not None:
        tol = 100.0 * np.linalg.norm(f - f_ref, axis=1) + ATOL
        head, agree, ties = _compare_head(got, want, bank, k, bank.tau if tau is None else tau, tol)
        outputs.update(head)
        top1 = float(np.mean(np.asarray(got["topk_ids"])[:, 0] == want["topk_ids"][:, 0]))
        labels = float(agree.mean())
    failed = tuple(name for name, v in outputs.items() if not v["passed"])
    return EngineValidation(len(pixels), float(cos.min()), float(cos.mean()), top1, not failed, labels, ties,
                            outputs, failed)


def record_engine(artifact_root: Path, engine_path: Path, key: dict, validation: EngineValidation) -> None:
    """``manifest["engines"][name] = {key, validation, path}`` (atomic rewrite of manifest.json)."""
    art = load_artifact(artifact_root)
    manifest = dict(art.manifest)
    engines = dict(manifest.get("engines", {}))
    engines[engine_path.name] = {"path": str(engine_path), "key": key, "validation": asdict(validation)}
    manifest["engines"] = engines
    write_manifest(art.root, manifest)


def build_image_engine(artifact_dir, opts: BuildOptions, engine_dir: Path | None = None, bank=None, k: int = 5,
                       report: Callable[[str], bool] = lambda msg: True) -> EngineBuild:
    """Build, validate, install and record one engine; BackendError (nothing installed) if validation fails.

    >>> built = build_image_engine(art_dir, BuildOptions("fp16"), bank=bank)  # doctest: +SKIP
    >>> built.path.name, built.validation.passed
    ('image_head.imagenet1k.b….fp16.k5.e….trt10.3.0.sm87.engine', True)
    """
    from .fused import ensure_fused_onnx

    art = load_artifact(artifact_dir)
    onnx = art.encoder("image", opts.precision, "tensorrt") if bank is None else \
        ensure_fused_onnx(art, bank, opts.precision, k, "tensorrt")
    if isinstance(onnx, bytes):
        raise ArtifactError(f"{bank.root} is read-only: fuse and build the engine where it is writable")
    path = engine_path(art, opts.precision, engine_dir, bank, k)
    staging = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        key = build_engine_trt(onnx, staging, opts, report)
        report("validating against ONNX Runtime on the CPU")
        with open_engine(staging, opts.max_batch) as engine:
            validation = validate_engine(engine, art, bank, k, engine.max_batch, min_cosine=INT8_MIN_COSINE
                                         if opts.precision == "int8" else MIN_COSINE)
        if not validation.passed:
            raise BackendError(f"engine {path.name} failed validation on {', '.join(validation.failed)} "
                               f"(min cosine {validation.min_cosine:.5f}); it was not installed")
        record = {**asdict(validation), "engine_sha256": sha256_file(staging)}
        os.replace(staging, path)
        write_key(path, key, record)  # last: until now the old sidecar (if any) does not match these bytes
    finally:
        staging.unlink(missing_ok=True)
    record_engine(art.root, path, key, validation)
    return EngineBuild(path, key, validation)
