"""The key of a TensorRT engine and its validation record, checked BEFORE deserialising.

An engine is valid for one ONNX file, one precision and batch profile, one exact TensorRT
version and one GPU model (PITFALLS.md). The key lives in a JSON sidecar next to the engine
(``<engine>.engine`` + ``<engine>.engine.json``); any difference raises
:class:`~coder.errors.StaleEngineError` naming what changed and the fix.

The sidecar also carries the engine's validation (``coder.runtime.engine_build``) bound to the
engine file's sha256: an engine is loaded only if a validation of THOSE bytes passed. The sidecar
is written after validation, so an engine whose validation was interrupted, failed, or never ran
(an old ``--rebuild-stale``) is refused. Torch-free and TensorRT-free, so it is tested everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ChecksumError, StaleEngineError
from ..store import atomic_write_json, read_json
from ..manifest import verify_file

KEY_FORMAT = "coder.trt-engine-key"
KEY_VERSION = 2  # 2: the validation record (with the engine's sha256) is part of the sidecar


def engine_key(onnx_sha256: str, precision: str, profile: tuple[int, int, int], trt_version: str,
               gpu_name: str, compute_capability: str, builder_options: dict[str, Any]) -> dict[str, Any]:
    """``profile`` is (min, opt, max) batch; ``builder_options`` e.g. {"workspace_mb": 4096, "strongly_typed": True}."""
    return {"format": KEY_FORMAT, "format_version": KEY_VERSION, "onnx_sha256": onnx_sha256,
            "precision": precision, "profile": list(profile), "tensorrt": trt_version, "gpu": gpu_name,
            "compute_capability": compute_capability, "builder": dict(sorted(builder_options.items()))}


def sidecar(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def write_key(engine_path: Path, key: dict[str, Any], validation: dict[str, Any]) -> None:
    """``validation`` must hold ``engine_sha256`` and ``passed`` (the record the loader checks)."""
    if "engine_sha256" not in validation or "passed" not in validation:
        raise ValueError("validation record needs engine_sha256 and passed")
    atomic_write_json(sidecar(engine_path), {**key, "validation": validation})


def _fix(engine_path: Path) -> str:
    return f"rebuild it: coder build-engine <artifact dir> (or pass --rebuild-stale); engine {engine_path}"


def check_key(engine_path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Raise StaleEngineError unless the engine's sidecar key equals ``expected``; returns the sidecar."""
    fix = _fix(engine_path)
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
    return found


def check_validated(engine_path: Path, found: dict[str, Any]) -> None:
    """Raise StaleEngineError unless ``found["validation"]`` passed for exactly these engine bytes."""
    fix = _fix(engine_path)
    v = found.get("validation")
    if not isinstance(v, dict) or "engine_sha256" not in v:
        raise StaleEngineError(f"engine {engine_path.name} was never validated; {fix}")
    if v.get("passed") is not True:
        raise StaleEngineError(f"engine {engine_path.name} failed validation ({v.get('failed') or 'see the record'}); "
                               f"{fix}")
    try:
        verify_file(engine_path.parent, engine_path.name, str(v["engine_sha256"]))
    except ChecksumError:
        raise StaleEngineError(f"engine {engine_path.name} is not the file that was validated; {fix}") from None
