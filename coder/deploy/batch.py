"""Batch labeling shared by ``coder classify --out`` (one process) and ``--ray``: the job's
settings, and the three per-image steps either path runs — read bytes, decode + crop on
the CPU (uint8 crops, a quarter of the float input), classify a batch of crops.

>>> job = ClassifyJob(ClassifierOptions("coder-artifacts/ViT-B-32__openai"))   # doctest: +SKIP
>>> clf = job.load(threads=1)
>>> crop = decode_crop(read_bytes("cat.jpg"), "cat.jpg", clf.encoder.preprocess_config)   # (224, 224, 3) uint8
>>> [rec] = classify_crops(clf, job, ["cat.jpg"], np.stack([crop]))                     # prediction_record dicts
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Optional

import numpy as np

from ..errors import InputError, one_line
from ..manifest import PreprocessConfig, load_artifact
from ..runtime.classifier import ClassifierOptions
from ..runtime.images import decode_image
from ..runtime.inputs import batched
from ..runtime.preprocess import crop_rgb, normalize_uint8
from ..runtime.records import error_record, prediction_record
from .sources import Source, read_bytes


@dataclass(frozen=True)
class ClassifyJob:
    """One batch-labeling job: how to load the classifier (the one
    :class:`~coder.runtime.classifier.ClassifierOptions`, so ``--engine-dir``, ``--rebuild-stale``, ``--tau``...
    reach every process) and what each row shows. Plain data: it is shipped to Ray actors."""

    options: ClassifierOptions
    top_k: int = 5
    rerank: bool = True

    def load(self, threads: Optional[int] = None):
        """The classifier, with ``threads`` ONNX Runtime threads when given (a Ray actor's CPUs)."""
        opts = self.options if threads is None else replace(self.options, threads=threads)
        return opts.load()


def job_settings(job: ClassifyJob) -> dict:
    """What the rows depend on (compared when a run resumes an ``--out``): the encoder file's and adapter's
    sha256, the bank version (its content sha256: the value every row's ``bank_sha256`` carries), precision,
    tau, k, top-k and whether the rerank ran."""
    from ..store import sha256_file
    from ..runtime.classifier import find_bank
    from ..text_bank.bank import load_bank

    o = job.options
    art = load_artifact(o.artifacts)
    if o.classes is not None:
        from ..text_bank.class_lists import bank_for_classes

        bank = bank_for_classes(art.root, o.classes, o.preset)  # built and cached here once, loaded by every actor
    else:
        bank = load_bank(find_bank(art.root, o.bank), art)
    k = bank.k if o.k is None else int(o.k)
    if o.fused_head and o.backend != "tensorrt-native":  # once here, not raced by every actor
        from ..runtime.fused import ensure_fused_onnx, fused_consumer

        ensure_fused_onnx(art, bank, o.precision, k, fused_consumer(o.backend))
    encoder = f"image_encoder.{o.precision}.onnx"
    return {"artifact_sha256": art.manifest["files"].get(encoder, {}).get("sha256"),
            "bank_sha256": bank.content_sha256,  # the bank version, as every row's ``bank_sha256``
            "adapter_sha256": sha256_file(o.adapter) if o.adapter else None,
            "architecture": art.architecture, "precision": o.precision,
            "tau": bank.tau if o.tau is None else float(o.tau), "k": k,
            "top_k": job.top_k, "rerank": job.rerank}


def decode_crop(data: bytes, name: str, cfg: PreprocessConfig) -> np.ndarray:
    """File bytes -> ``(H, W, 3)`` uint8 crop (:func:`~coder.runtime.preprocess.crop_rgb`);
    PIL's decompression-bomb limit and the one-line :class:`InputError` as in ``classify``."""
    return crop_rgb(decode_image(data, name), cfg)


def classify_crops(clf, job: ClassifyJob, files: list[str], crops: np.ndarray) -> list[dict]:
    """``(B, H, W, 3)`` uint8 crops -> one :func:`prediction_record` per file."""
    t0 = time.perf_counter()
    pixels = normalize_uint8(crops, clf.encoder.preprocess_config)
    preds = clf.classify_pixels(pixels, job.top_k, job.rerank, (time.perf_counter() - t0) * 1e3)
    return [prediction_record(f, p) for f, p in zip(files, preds)]


def _reason(e: Exception, file: str, what: str) -> str:
    """One line for any failure; a non-InputError (a decoder bug on a malformed file, a storage
    client's own exception) still becomes an error row, naming its type, never a failed job."""
    return str(e) if isinstance(e, InputError) else f"{file}: {what} failed ({type(e).__name__}: {one_line(e)})"


def read_or_error(file: str) -> tuple[Optional[bytes], Optional[str]]:
    try:
        return read_bytes(file), None
    except Exception as e:  # noqa: BLE001 -- see _reason
        return None, _reason(e, file, "read")


def decode_or_error(data: bytes, file: str, cfg: PreprocessConfig) -> tuple[Optional[np.ndarray], Optional[str]]:
    try:
        return decode_crop(data, file, cfg), None
    except Exception as e:  # noqa: BLE001 -- see _reason
        return None, _reason(e, file, "decode")


def crop_or_error(src: Source, cfg: PreprocessConfig) -> tuple[Optional[np.ndarray], Optional[str]]:
    """Read + decode one input; a bad one gives ``(None, reason)``, never an exception."""
    data, why = read_or_error(src.file)
    return (None, why) if why is not None else decode_or_error(data, src.file, cfg)


def run_local(job: ClassifyJob, sources: Iterable[Source], emit: Callable[[list[tuple[dict, Source]]], None],
              batch_size: int = 16, threads: Optional[int] = None) -> str:
    """The single-process path: ``emit`` gets ``(record, source)`` pairs batch by batch, in
    input order; returns the backend that ran."""
    clf = job.load(threads)
    cfg = clf.encoder.preprocess_config
    for chunk in batched(sources, batch_size):
        decoded = [(src, *crop_or_error(src, cfg)) for src in chunk]
        ok = [(src, crop) for src, crop, _ in decoded if crop is not None]
        recs = iter(classify_crops(clf, job, [s.file for s, _ in ok], np.stack([c for _, c in ok])) if ok else [])
        emit([(next(recs) if why is None else error_record(src.file, why), src) for src, _, why in decoded])
    return clf.backend


