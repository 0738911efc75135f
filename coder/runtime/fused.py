"""The CODER head as an ONNX graph run right after the image encoder: pixels to scores in two calls.

The ONNX Runtime backends run two sessions on the same provider: the artifact's own image
encoder and the bank's small head graph (:mod:`coder.engines.head_graph`), which is built
in memory from the bank arrays when the classifier loads (tens of milliseconds; nothing is
written, so a bank directory holds only ``bank.json`` + ``bank.npz``). The encoder's
``(B, D)`` output is the head's input.

Why two sessions and not one fused file: a fused graph copies every encoder weight (336 MB
per bank x precision x k for ViT-B/32 fp32), and writing it made the first classify 3.4x
slower than the next. The head session is pinned to one intra-op thread, so it runs on the
calling thread and never contends with the encoder pool's spinning workers — the contention
that made the numpy head slow on small CPUs. ``benchmarks/bench_fused.py`` measures the
two-session path against the single fused graph at ImageNet scale.

TensorRT engines still fuse at build time (one engine, no host round trip):
:func:`fused_model` gives the encoder+head ``ModelProto`` in memory and
:func:`ensure_fused_onnx` writes it, keyed, to the ENGINE directory (never the bank), for
the engine builder and the engine key check.

>>> head = load_head(bank, k=5, backend="cpu")                    # doctest: +SKIP
>>> out = FusedOutputs.from_list(head.run_all(encoder.run(x)))    # x: (B,3,H,W) float32
>>> out.stage1.shape, out.topk_ids.shape                           # (B, C) float32, (B, 5) int64
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engines.head_graph import HEAD_FORMAT_VERSION, OUTPUTS, clamp_k, fuse_head, head_model
from ..errors import ChecksumError
from ..store import atomic_path, atomic_write_json, read_json, sha256_file
from ..manifest import Artifact, verify_file

KEY_FORMAT = "coder.fused-head"
HEAD_THREADS = 1  # the head is ~1% of the work; one thread keeps it off the encoder pool's cores


@dataclass(frozen=True)
class FusedOutputs:
    """The head graph's outputs for a batch (see :mod:`coder.engines.head_graph`)."""

    embedding: np.ndarray  # (B,D) float32 unit rows
    stage1: np.ndarray  # (B,C) float32
    topk_ids: np.ndarray  # (B,K) int64
    gap: np.ndarray  # (B,) float32
    rerank: np.ndarray  # (B,K) float32, ungated

    @classmethod
    def from_list(cls, arrays) -> "FusedOutputs":
        return cls(*(np.asarray(a) for a in arrays))

    @classmethod
    def concat(cls, parts: list["FusedOutputs"]) -> "FusedOutputs":
        return cls(*(np.concatenate([getattr(p, n) for p in parts]) for n in OUTPUTS))


def head_backend(backend: str) -> str:
    """The provider the head session uses: the encoder's, except TensorRT -> CUDA.

    ORT's TensorRT provider would build (and cache) an engine for a graph this small on every
    new bank; CUDA runs it at once, on the same GPU. ``backend`` may be what an encoder reported
    after an allowed partial placement (``"tensorrt+cuda+cpu"``): its first provider decides.
    ``head_backend("tensorrt") == head_backend("tensorrt+cuda") == "cuda"``.
    After an OpenVINO encoder (``openvino``, ``openvino-bf16``, ``openvino:GPU``) the head runs on
    ONNX Runtime's CPU provider, or on OpenVINO at ``f32`` where ONNX Runtime is not installed.
    """
    first = backend.split("+", 1)[0]
    if first.startswith("openvino"):  # after an OpenVINO encoder: ORT on the CPU (README "OpenVINO")
        return "cpu"
    return "cuda" if first == "tensorrt" else first


def load_head(bank, k: int, backend: str = "cpu", allow_fallback: bool = False):
    """The bank's head graph (top-``k``, clamped) in its own ONNX Runtime session, from memory.

    ``run_all(emb)`` maps raw encoder outputs (B,D) float32 to the five outputs of
    :class:`FusedOutputs`.
    """
    from ..engines.ort import load_ort

    model = head_model(bank, clamp_k(k, len(bank.class_names)))
    if backend.startswith("openvino") and importlib.util.find_spec("onnxruntime") is None:
        from ..engines.openvino import load_openvino

        return load_openvino(model.SerializeToString(), "openvino", "f32", HEAD_THREADS)
    return load_ort(model.SerializeToString(), head_backend(backend), "fp32", allow_fallback, HEAD_THREADS)


def drop_legacy_fused(bank) -> None:
    """Remove ``banks/<name>/fused/`` left by versions that wrote encoder copies there (derived data)."""
    shutil.rmtree(Path(bank.root) / "fused", ignore_errors=True)


def fused_model(art: Artifact, bank, precision: str, k: int, consumer: str = "cpu"):
    """The image encoder of ``precision`` with ``bank``'s head appended, as an in-memory ``onnx.ModelProto``.

    Inputs ``pixel_values`` (B,3,H,W) float32; outputs as :class:`FusedOutputs`. For the
    TensorRT engine builder; raises ArtifactError (naming the re-export) if the artifact has
    no such encoder. ``consumer`` picks the int8 file (``cpu`` | ``tensorrt``, :meth:`Artifact.encoder`).
    """
    import onnx

    encoder = onnx.load(str(art.encoder("image", precision, consumer)))
    opset = next(o.version for o in encoder.opset_import if o.domain in ("", "ai.onnx"))
    return fuse_head(encoder, head_model(bank, clamp_k(k, len(bank.class_names)), opset=opset))


def fused_path(art: Artifact, bank, precision: str, k: int, consumer: str = "cpu") -> Path:
    """``<engine dir>/fused/<bank>/image_head.fp16.k5.onnx``: beside the engines, outside the bank
    (int8 for TensorRT: ``image_head.int8.trt.k5.onnx``)."""
    from ..engines.trt import default_engine_dir

    kind = f"{precision}.trt" if precision == "int8" and consumer == "tensorrt" else precision
    return default_engine_dir(art.root) / "fused" / Path(bank.root).name / f"image_head.{kind}.k{k}.onnx"


def fused_key(art: Artifact, bank, precision: str, k: int, consumer: str = "cpu") -> dict:
    encoder = art.encoder_name("image", precision, consumer)  # ArtifactError naming the fix when not exported
    return {"format": KEY_FORMAT, "head_format_version": HEAD_FORMAT_VERSION, "precision": precision, "k": k,
            "encoder_sha256": art.manifest["files"][encoder]["sha256"], "bank_npz_sha256": bank.meta["npz_sha256"]}


def _current(path: Path, key: dict) -> bool:
    side = path.with_name(path.name + ".json")
    try:
        found = read_json(side)
        if {k: found.get(k) for k in key} != key or not path.is_file():
            return False
        verify_file(path.parent, path.name, found["sha256"])
        return True
    except (ValueError, OSError, KeyError, ChecksumError):
        return False


def fused_consumer(backend: str) -> str:
    """The int8 file a fused graph for ``backend`` is built from: the TensorRT (plain QDQ) one for the GPU
    backends, else the CPU one, whose ``MatMulIntegerToFloat`` kernels only ONNX Runtime's CPU provider runs.

    Example: ``fused_consumer("cuda") == "tensorrt"``, ``fused_consumer("cpu") == "cpu"``.
    """
    from .encoder import int8_consumer

    return "tensorrt" if int8_consumer(backend) == "tensorrt" else "cpu"


def ensure_fused_onnx(art: Artifact, bank, precision: str, k: int, consumer: str = "cpu") -> Path | bytes:
    """Path of the fused encoder+head ONNX for a TensorRT engine; written if missing or stale.

    Lives under the engine directory (:func:`fused_path`), keyed by the encoder and bank
    sha256, the head graph version and ``k`` (clamped to the number of classes), so a stale
    one is never built from. Where that directory cannot be written the serialized graph is
    returned instead.
    """
    k = clamp_k(k, len(bank.class_names))
    path = fused_path(art, bank, precision, k, consumer)
    key = fused_key(art, bank, precision, k, consumer)
    if _current(path, key):
        return path
    import onnx

    # An encoder over 2 GB keeps its weights in external data; so must the fused graph (protobuf limit).
    external = bool(art.manifest["files"][art.encoder("image", precision, consumer).name].get("external_data"))
    fused = fused_model(art, bank, precision, k, consumer)
    try:
        with atomic_path(path) as tmp:
            if external:
                onnx.save(fused, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                          location=path.name + ".data", size_threshold=1024)
            else:
                onnx.save(fused, str(tmp))
        atomic_write_json(path.with_name(path.name + ".json"), {**key, "sha256": sha256_file(path)})
    except OSError:
        return fused.SerializeToString()
    return path
