"""The image encoder with the bank's CODER head appended: one graph from pixels to scores.

The fused ONNX is derived data, kept beside the bank it was made from::

    banks/<name>/fused/image_head.fp16.k5.onnx        encoder + head (coder.engines.head_graph)
    banks/<name>/fused/image_head.fp16.k5.onnx.json   key: format, head graph version, encoder and
                                                      bank sha256, k, the file's own sha256

It is rebuilt whenever the key no longer matches (a new bank, a re-exported encoder, a
newer head graph), so a stale fused graph is never run. Needs the ``onnx`` package (a
base dependency, torch-free).

>>> path = ensure_fused_onnx(art, bank, "fp32", k=5)     # doctest: +SKIP
>>> out = FusedOutputs.from_list(session.run(None, {"pixel_values": x}))
>>> out.stage1.shape, out.topk_ids.shape                   # (B, C) float32, (B, 5) int64
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engines.head_graph import HEAD_FORMAT_VERSION, OUTPUTS, clamp_k, fuse_head, head_model
from ..errors import ChecksumError
from ..fsutil import atomic_path, atomic_write_json, read_json, sha256_file
from ..manifest import Artifact, verify_file

KEY_FORMAT = "coder.fused-head"


@dataclass(frozen=True)
class FusedOutputs:
    """The fused graph's outputs for a batch (see :mod:`coder.engines.head_graph`)."""

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


def fused_path(bank, precision: str, k: int) -> Path:
    return bank.root / "fused" / f"image_head.{precision}.k{k}.onnx"


def fused_key(art: Artifact, bank, precision: str, k: int) -> dict:
    encoder = f"image_encoder.{precision}.onnx"
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


def ensure_fused_onnx(art: Artifact, bank, precision: str, k: int) -> Path | bytes:
    """Path of the fused graph for (encoder precision, bank, k); written if missing or stale.

    ``k`` is clamped to the number of classes. Where the bank directory cannot be written
    (a read-only partition) the serialized graph is returned instead, to load from memory:
    the same graph, only a slower start.
    """
    import onnx

    k = clamp_k(k, len(bank.class_names))
    path = fused_path(bank, precision, k)
    key = fused_key(art, bank, precision, k)
    if _current(path, key):
        return path
    encoder_path = art.encoder("image", precision)
    # An encoder over 2 GB keeps its weights in external data; so must the fused graph (protobuf limit).
    external = bool(art.manifest["files"][encoder_path.name].get("external_data"))
    encoder = onnx.load(str(encoder_path))
    opset = next(o.version for o in encoder.opset_import if o.domain in ("", "ai.onnx"))
    fused = fuse_head(encoder, head_model(bank, k, opset=opset))
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
