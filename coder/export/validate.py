"""Validation gates: every exported ONNX file against the open_clip torch model.

Inputs are natural-looking scenes (:mod:`coder.samples`) preprocessed by the
runtime's own torch-free transform, and class prompts tokenized by open_clip.
Each tower is checked at batch 1 and 3 (the export used batch 2).

Gates (from the export issue): fp32 max |diff| on raw embeddings <= 1e-4;
fp16 per-item cosine >= 0.999 and the same top-1 class for every image.
Measured numbers are returned for the manifest; a failed gate raises
:class:`~coder.errors.ExportError` quoting them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engines.ort import load_ort
from ..errors import ExportError
from ..manifest import PreprocessConfig
from ..runtime.preprocess import preprocess_batch
from ..samples import synthetic_batch
from ..text_bank.tokenizer import eos_lengths

FP32_MAX_ABS = 1e-4
FP16_MIN_COS = 0.999
INT8_MIN_COS = 0.99
DYNAMIC_SEQ_MAX_ABS = 1e-5
PROMPT_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    "apple", "bicycle", "castle", "forest", "mountain", "road", "sea", "sunflower", "tiger", "tulip",
]


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(_normalize(a.astype(np.float64)) * _normalize(b.astype(np.float64)), axis=-1)


def reference_inputs(model, tokenizer, cfg: PreprocessConfig, n_images: int = 3) -> dict[str, np.ndarray]:
    """Pixels, token ids and the torch model's raw embeddings for both."""
    import torch

    pixels = preprocess_batch(synthetic_batch(n_images, seed=7), cfg)
    ids = tokenizer([f"a photo of a {c}." for c in PROMPT_CLASSES]).numpy().astype(np.int32)
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(pixels)).float().numpy()
        txt = model.encode_text(torch.from_numpy(ids).long()).float().numpy()
    return {"pixels": pixels, "ids": ids, "image": img, "text": txt, "eos_id": eos_id_of(tokenizer)}


def _top1(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    return np.argmax(_normalize(images) @ _normalize(texts).T, axis=1)


def _run_batches(enc, x: np.ndarray) -> dict[int, np.ndarray]:
    return {1: enc.run(x[:1]), len(x): enc.run(x)}


def eos_id_of(tokenizer) -> int | None:
    """The end-of-text id of an open_clip tokenizer (SimpleTokenizer or a Hugging Face one); None if it has none."""
    for owner in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        for attr in ("eos_id", "eot_token_id", "eos_token_id"):
            value = getattr(owner, attr, None)
            if isinstance(value, int):
                return value
    return None


def _longest(ids: np.ndarray, eos_id: int | None) -> int:
    return int(eos_lengths(ids, eos_id).max())


def check_image(path, precision: str, ref: dict[str, np.ndarray]) -> dict[str, Any]:
    enc = load_ort(path, "cpu", precision)
    out = _run_batches(enc, ref["pixels"])
    want = ref["image"]
    if precision == "fp32":
        diffs = {b: float(np.abs(o - want[:b]).max()) for b, o in out.items()}
        return {"max_abs_diff": max(diffs.values()), "by_batch": diffs, "gate": FP32_MAX_ABS,
                "passed": max(diffs.values()) <= FP32_MAX_ABS}
    full = out[len(want)]
    cos = float(_cosines(full, want).min())
    same = bool(np.array_equal(_top1(full, ref["text"]), _top1(want, ref["text"])))
    batch_consistent = float(np.abs(out[1] - full[:1]).max())
    gate = INT8_MIN_COS if precision == "int8" else FP16_MIN_COS
    return {"min_cosine": cos, "same_top1": same, "batch1_vs_batch3_max_abs": batch_consistent,
            "gate": gate, "passed": cos >= gate and same}


def check_text(path, precision: str, ref: dict[str, np.ndarray], dynamic_seq: bool) -> dict[str, Any]:
    enc = load_ort(path, "cpu", precision)
    ids = ref["ids"]
    want = ref["text"]
    full = enc.run(ids)
    result: dict[str, Any] = {}
    if dynamic_seq:
        short = enc.run(ids[:, :_longest(ids, ref["eos_id"])])
        one = enc.run(ids[:1, :_longest(ids[:1], ref["eos_id"])])
        result["sliced_vs_full_max_abs"] = float(max(np.abs(short - full).max(), np.abs(one - full[:1]).max()))
        out = short
    else:
        out = full
    if precision == "fp32":
        diff = float(max(np.abs(out - want).max(), np.abs(full - want).max()))
        result.update(max_abs_diff=diff, gate=FP32_MAX_ABS, passed=diff <= FP32_MAX_ABS)
    else:
        cos = float(_cosines(out, want).min())
        same = bool(np.array_equal(_top1(ref["image"], out), _top1(ref["image"], want)))
        result.update(min_cosine=cos, same_top1=same, gate=FP16_MIN_COS, passed=cos >= FP16_MIN_COS and same)
    if dynamic_seq and result["sliced_vs_full_max_abs"] > DYNAMIC_SEQ_MAX_ABS * (1 if precision == "fp32" else 100):
        result["passed"] = False
    return result


def require(name: str, result: dict[str, Any]) -> None:
    """Raise ExportError with the measured numbers when a gate failed."""
    if not result.get("passed"):
        numbers = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in result.items() if k not in ("passed", "by_batch"))
        raise ExportError(f"validation failed for {name}: {numbers}")
