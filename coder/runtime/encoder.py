"""Image encoder stage: images -> L2-normalised embeddings, via an ONNX backend.

>>> enc = ImageEncoder.load("coder-artifacts/ViT-B-32__none")      # doctest: +SKIP
>>> enc.encode([Image.open("cat.jpg")]).shape                      # (1, 512) float32, unit rows
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..engines.head_graph import clamp_k
from ..engines.openvino import is_openvino
from ..engines.ort import TrtProfile, load_ort
from ..errors import ArtifactError, InputError
from ..vectors import l2_normalize  # noqa: F401  (re-exported: the runtime's normaliser)
from ..manifest import Artifact, PreprocessConfig, load_artifact
from .images import to_pil
from .preprocess import preprocess_batch


def trt_profile(art: Artifact) -> TrtProfile:
    """The artifact's batch range (1 .. exported max_batch, tuned for 8) for ONNX Runtime's TensorRT provider."""
    hi = art.max_batch
    name = art.manifest.get("io", {}).get("image", ["pixel_values"])[0]
    return TrtProfile(name, (3, *art.preprocess.size), 1, min(8, hi), hi)


def int8_consumer(backend: str) -> str:
    """Which int8 file a backend runs: the GPU backends (``cuda``, ``tensorrt``, ``tensorrt-native``) the TensorRT
    (symmetric) one, OpenVINO its NNCF IR (else that TensorRT QDQ file), ONNX Runtime ``cpu`` the uint8-activation one."""
    if is_openvino(backend):
        return "openvino"
    return "tensorrt" if backend.split("+", 1)[0] in ("cuda", "tensorrt", "tensorrt-native") else "cpu"


@dataclass(frozen=True)
class ImageEncoder:
    """An artifact's image tower on one backend. ``backend`` names what actually runs."""

    artifact: Artifact
    engine: object
    precision: str
    max_batch: int
    head_k: int = 0  # > 0: the CODER head (top-``head_k``) runs after the encoder, see ``run_head``
    head: object = None  # the head graph's own session (ONNX Runtime); None: ``engine`` has the head fused

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.artifact.preprocess

    @property
    def fused(self) -> bool:
        return self.head_k > 0

    @classmethod
    def load(cls, artifact_dir: str | os.PathLike, precision: str = "fp32", backend: str = "cpu",
             allow_fallback: bool = False, threads: int | None = None) -> "ImageEncoder":
        art = load_artifact(artifact_dir)
        name = art.encoder("image", precision, int8_consumer(backend))
        if is_openvino(backend):  # OpenVINO's own runtime; precision hint gated (openvino_precision)
            from .openvino_precision import load_openvino_encoder

            engine = load_openvino_encoder(art, precision, backend, threads)
            return cls(art, engine, precision, art.max_batch)
        engine = load_ort(name, backend, precision, allow_fallback, threads, trt_profile(art),
                          art.manifest["files"][name.name]["sha256"])
        return cls(art, engine, precision, art.max_batch)

    @classmethod
    def load_fused(cls, artifact_dir: str | os.PathLike, bank, k: int, precision: str = "fp32",
                   backend: str = "cpu", allow_fallback: bool = False, threads: int | None = None) -> "ImageEncoder":
        """The encoder plus ``bank``'s head graph in a second session (:mod:`coder.runtime.fused`).

        Same API plus ``run_head``; nothing is written (no copy of the encoder per bank).
        """
        from .fused import drop_legacy_fused, load_head

        enc = cls.load(artifact_dir, precision, backend, allow_fallback, threads)
        head = load_head(bank, k, enc.backend if allow_fallback else backend, allow_fallback)
        drop_legacy_fused(bank)
        return cls(enc.artifact, enc.engine, precision, enc.max_batch, head_k=clamp_k(k, len(bank.class_names)),
                   head=head)

    @classmethod
    def load_trt(cls, artifact_dir: str | os.PathLike, precision: str = "fp16", engine_dir: str | os.PathLike | None = None,
                 rebuild_stale: bool = False, fused_bank=None, k: int = 5) -> "ImageEncoder":
        """A native TensorRT engine built by ``coder build-engine`` (optionally with ``fused_bank``'s head).

        The engine's key and validation record are checked before it is deserialised
        (StaleEngineError names the fix); ``rebuild_stale`` rebuilds AND validates it instead
        (:func:`coder.runtime.engine_build.build_image_engine`). Call ``close()`` (or use ``with``)
        to free its CUDA stream and device buffers.
        """
        from ..engines.trt import engine_path, load_engine_trt, options_from_key
        from ..errors import StaleEngineError
        from .fused import ensure_fused_onnx

        art = load_artifact(artifact_dir)
        head_k = 0 if fused_bank is None else clamp_k(k, len(fused_bank.class_names))
        art.encoder("image", precision, "tensorrt")  # ArtifactError naming the re-export if that precision is missing
        path = engine_path(art, precision, engine_dir, fused_bank, head_k)  # BackendError without TensorRT/GPU
        if not path.is_file() and not rebuild_stale:  # before a fused graph is written for nothing
            raise StaleEngineError(f"no engine at {path}; build it: coder build-engine {art.root} --precision "
                                   f"{precision}" + (f" --bank {fused_bank.root.name}" if fused_bank else ""))
        onnx = art.encoder("image", precision, "tensorrt") if fused_bank is None else \
            ensure_fused_onnx(art, fused_bank, precision, head_k, "tensorrt")
        if isinstance(onnx, bytes):
            raise ArtifactError(f"{fused_bank.root} is read-only: fuse and build the engine where it is writable")
        try:
            engine = load_engine_trt(path, onnx, precision)
        except StaleEngineError:
            if not rebuild_stale:
                raise
            from .engine_build import build_image_engine

            build_image_engine(art.root, options_from_key(path, precision), engine_dir, fused_bank, head_k)
            engine = load_engine_trt(path, onnx, precision)
        max_batch = min(art.max_batch, engine.max_batch)
        return cls(art, engine, precision, max_batch, head_k=head_k)

    def with_head(self, bank, k: int) -> "ImageEncoder":
        """The same encoder (shared, not reloaded) with ``bank``'s head: a new head session built in memory
        when this one runs a head (a TensorRT engine with a head fused in gets its new head on CUDA); an
        encoder without a head is returned as is (the numpy head reads the bank)."""
        from .fused import load_head

        if not self.fused:
            return self
        backend = "cuda" if self.head is None else self.engine.backend
        return replace(self, head_k=clamp_k(k, len(bank.class_names)), head=load_head(bank, k, backend))

    def close(self) -> None:
        """Release the engine's device resources (native TensorRT: stream and buffers); idempotent."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "ImageEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_pixels(self, pixels: np.ndarray) -> None:
        expected = (3, *self.preprocess_config.size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected or pixels.dtype != np.float32:
            raise InputError(f"pixels must be (B,{expected[0]},{expected[1]},{expected[2]}) float32, "
                             f"got {pixels.shape} {pixels.dtype}")

    def run_head(self, pixels: np.ndarray):
        """Encoders with a head only: (B,3,H,W) float32 -> :class:`~coder.runtime.fused.FusedOutputs`."""
        from .fused import FusedOutputs

        if not self.fused:
            raise InputError("run_head needs an encoder loaded with ImageEncoder.load_fused")
        self._check_pixels(pixels)
        parts = [self._head_chunk(pixels[i:i + self.max_batch]) for i in range(0, len(pixels), self.max_batch)]
        return FusedOutputs.concat(parts)

    def _head_chunk(self, x: np.ndarray):
        from .fused import FusedOutputs

        if self.head is None:  # a TensorRT engine with the head fused in
            return FusedOutputs.from_list(self.engine.run_all(x))
        return FusedOutputs.from_list(self.head.run_all(self.engine.run(x)))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(B,3,H,W) float32 -> (B,D) float32 unit rows, in chunks of at most ``max_batch``."""
        self._check_pixels(pixels)
        chunks = [self.engine.run(pixels[i:i + self.max_batch]) for i in range(0, len(pixels), self.max_batch)]
        return l2_normalize(np.concatenate(chunks) if chunks else np.zeros((0, self.artifact.embed_dim), np.float32))

    def encode(self, images: Sequence[Image.Image | np.ndarray | str | os.PathLike], bgr: bool = False) -> np.ndarray:
        """Images (PIL, uint8 arrays or paths) -> (B, D) float32 unit rows."""
        pils = [to_pil(im, bgr) for im in images]
        return self.encode_pixels(preprocess_batch(pils, self.preprocess_config))


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings of the files that could be read, in input order, and one error line per failure."""

    embeddings: np.ndarray  # (N_ok, D) float32
    paths: tuple[str, ...]  # the N_ok files embedded
    failures: tuple[tuple[str, str], ...]  # (file, one-line reason)
    backend: str
    precision: str


def embed_items(encoder: ImageEncoder, items: Sequence, batch_size: int = 16,
                on_batch=lambda n: None) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Embed any image inputs in batches; an unreadable one is skipped and reported, never fatal.

    Returns ``(embeddings (N_ok, D), indices of the items embedded, [(index, one-line reason)])``.
    """
    rows: list[np.ndarray] = []
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    for start in range(0, len(items), batch_size):
        pils = []
        for i in range(start, min(start + batch_size, len(items))):
            try:
                pils.append(to_pil(items[i]))
                kept.append(i)
            except InputError as e:
                failures.append((i, str(e)))
        if pils:
            rows.append(encoder.encode(pils))
        on_batch(min(batch_size, len(items) - start))
    emb = np.concatenate(rows) if rows else np.zeros((0, encoder.artifact.embed_dim), np.float32)
    return emb, kept, failures


def embed_files(encoder: ImageEncoder, paths: Sequence[str | Path], batch_size: int = 16,
                on_batch=lambda n: None) -> EmbedResult:
    """Embed files in batches; a bad file is recorded and skipped, never fatal."""
    emb, kept, failures = embed_items(encoder, paths, batch_size, on_batch)
    return EmbedResult(emb, tuple(str(paths[i]) for i in kept), tuple((str(paths[i]), why) for i, why in failures),
                       encoder.backend, encoder.precision)
