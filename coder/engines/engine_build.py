"""Build a native TensorRT image engine, validate it against fp32 ONNX Runtime, record it in the manifest.

The one workflow behind ``coder build-engine`` and ``coder export --engine tensorrt``:

1. build (:func:`coder.engines.trt.build_engine_trt`), from the plain encoder graph or the
   encoder with a bank's CODER head fused (:mod:`coder.runtime.fused`);
2. validate on real-looking scenes (:mod:`coder.samples`): per-image cosine of the engine's
   embedding to the fp32 ONNX Runtime CPU embedding >= 0.999 and, with a bank, the same
   stage-1 top-1 for every image;
3. record the key and the validation under ``manifest["engines"][<file name>]``; an engine
   that fails validation is deleted (it is never left to be picked up by ``--backend auto``).

Validation is TensorRT-free (:func:`validate_engine` takes any ``run`` callable), so it is
tested on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ArtifactError, BackendError
from ..manifest import load_artifact, write_manifest

MIN_COSINE = 0.999


@dataclass(frozen=True)
class EngineValidation:
    """Engine vs fp32 ONNX Runtime on ``images`` synthetic scenes, e.g. min_cosine=0.99994, top1_agreement=1.0."""

    images: int
    min_cosine: float
    mean_cosine: float
    top1_agreement: float | None  # None without a bank
    passed: bool


@dataclass(frozen=True)
class EngineBuild:
    path: Path
    key: dict
    validation: EngineValidation


def reference_pixels(art, n_images: int = 16) -> np.ndarray:
    """(n,3,H,W) float32: the artifact's preprocessing of ``n`` 640x480 synthetic scenes."""
    from ..runtime.preprocess import preprocess_batch
    from ..samples import synthetic_scene

    return preprocess_batch([synthetic_scene(1000 + i, (640, 480)) for i in range(n_images)], art.preprocess)


def validate_engine(run: Callable[[np.ndarray], np.ndarray], art, bank=None, max_batch: int = 8,
                    n_images: int = 16) -> EngineValidation:
    """Compare ``run(pixels) -> (B,D)`` embeddings (raw or unit) with the fp32 ONNX Runtime CPU encoder."""
    from ..runtime.encoder import ImageEncoder, l2_normalize
    from ..runtime.head import stage1_scores

    pixels = reference_pixels(art, n_images)
    want = ImageEncoder.load(art.root, "fp32", "cpu").encode_pixels(pixels)
    got = l2_normalize(np.concatenate([run(pixels[i:i + max_batch]) for i in range(0, len(pixels), max_batch)]))
    cos = (got * want).sum(axis=1)
    top1 = None
    if bank is not None:
        top1 = float(np.mean(stage1_scores(got, bank).argmax(1) == stage1_scores(want, bank).argmax(1)))
    passed = bool(cos.min() >= MIN_COSINE and (top1 is None or top1 == 1.0))
    return EngineValidation(len(pixels), float(cos.min()), float(cos.mean()), top1, passed)


def record_engine(artifact_root: Path, engine_path: Path, key: dict, validation: EngineValidation) -> None:
    """``manifest["engines"][name] = {key, validation, path}`` (atomic rewrite of manifest.json)."""
    art = load_artifact(artifact_root)
    manifest = dict(art.manifest)
    engines = dict(manifest.get("engines", {}))
    engines[engine_path.name] = {"path": str(engine_path), "key": key, "validation": asdict(validation)}
    manifest["engines"] = engines
    write_manifest(art.root, manifest)


def build_image_engine(artifact_dir, opts, engine_dir: Path | None = None, bank=None, k: int = 5,
                       report: Callable[[str], bool] = lambda msg: True) -> EngineBuild:
    """Build, validate and record one engine; raise BackendError (engine deleted) if validation fails."""
    from ..runtime.fused import ensure_fused_onnx
    from .trt import build_engine_trt, engine_path, load_engine_trt
    from .trt_key import sidecar

    art = load_artifact(artifact_dir)
    onnx = art.encoder("image", opts.precision) if bank is None else ensure_fused_onnx(art, bank, opts.precision, k)
    if isinstance(onnx, bytes):
        raise ArtifactError(f"{bank.root} is read-only: fuse and build the engine where it is writable")
    path = engine_path(art.root, opts.precision, engine_dir, bank, k)
    key = build_engine_trt(onnx, path, opts, report)
    report("validating against fp32 ONNX Runtime")
    engine = load_engine_trt(path, onnx, opts.precision)
    validation = validate_engine(engine.run, art, bank, engine.max_batch)
    if not validation.passed:
        path.unlink(missing_ok=True)
        sidecar(path).unlink(missing_ok=True)
        raise BackendError(f"engine {path.name} failed validation (min cosine {validation.min_cosine:.5f} < "
                           f"{MIN_COSINE} or top-1 agreement {validation.top1_agreement}); it was deleted")
    record_engine(art.root, path, key, validation)
    return EngineBuild(path, key, validation)
