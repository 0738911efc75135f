"""The key of a TensorRT engine: everything that invalidates it, checked BEFORE deserialising.

An engine is valid for one ONNX file, one precision and batch profile, one exact TensorRT
version and one GPU model (PITFALLS.md). The key lives in a JSON sidecar next to the engine
(``image_encoder.fp16.engine`` + ``image_encoder.fp16.engine.json``); any difference raises
:class:`~coder.errors.StaleEngineError` naming what changed and the fix. Torch-free and
TensorRT-free, so it is tested everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import StaleEngineError
from ..fsutil import atomic_write_json, read_json

KEY_FORMAT = "coder.trt-engine-key"
KEY_VERSION = 1


def engine_key(onnx_sha256: str, precision: str, profile: tuple[int, int, int], trt_version: str,
               gpu_name: str, compute_capability: str, builder_options: dict[str, Any]) -> dict[str, Any]:
    """``profile`` is (min, opt, max) batch; ``builder_options`` e.g. {"workspace_mb": 4096, "strongly_typed": True}."""
    return {"format": KEY_FORMAT, "format_version": KEY_VERSION, "onnx_sha256": onnx_sha256,
            "precision": precision, "profile": list(profile), "tensorrt": trt_version, "gpu": gpu_name,
            "compute_capability": compute_capability, "builder": dict(sorted(builder_options.items()))}


def sidecar(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def write_key(engine_path: Path, key: dict[str, Any]) -> None:
    atomic_write_json(sidecar(engine_path), key)


def check_key(engine_path: Path, expected: dict[str, Any]) -> None:
    """Raise StaleEngineError unless the engine's sidecar key equals ``expected``."""
    fix = f"rebuild it: coder build-engine <artifact dir> (or pass --rebuild-stale); engine {engine_path}"
    if not engine_path.is_file() or not sidecar(engine_path).is_file():
        raise StaleEngineError(f"no engine or key at {engine_path}; {fix}")
    try:
        found = read_json(sidecar(engine_path))
    except (ValueError, OSError) as e:
        raise StaleEngineError(f"unreadable engine key ({e}); {fix}") from None
    if not isinstance(found, dict) or found.get("format") != KEY_FORMAT or found.get("format_version") != KEY_VERSION:
        raise StaleEngineError(f"engine key of another format; {fix}")
    changed = [k for k in expected if found.get(k) != expected[k]]
    if changed:
        what = ", ".join(f"{k}: {found.get(k)!r} -> {expected[k]!r}" for k in changed)
        raise StaleEngineError(f"stale TensorRT engine ({what}); {fix}")
