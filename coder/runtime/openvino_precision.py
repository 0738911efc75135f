"""Which precision an OpenVINO image encoder runs at: the reduced one only after it passes the gate.

A fp32 artifact on a CPU with BF16 (a GPU: FP16) could run with OpenVINO's reduced-precision hint,
about 2x faster. It does so only after the same gate as an fp16 export: on the validation scenes
(:func:`coder.runtime.engine_build.reference_pixels`, 16 synthetic 640x480 scenes) every image's
embedding has cosine >= 0.999 to the fp32 one, and every image keeps its top-1 class among
:data:`CLASS_PROMPTS` encoded by the artifact's own text tower. Otherwise ``f32``. The int8 file
(the NNCF IR) is held to the same gate against itself at ``f32``: its int8 layers stay int8, the
layers NNCF left in float (softmax, normalisation, the float islands) run at the reduced hint only if
that changes no embedding by more than the fp16 gate allows. fp16 files run at ``f32``: their reduced
weights are already the exported, gated ones.

The verdict is measured once per machine and cached as versioned JSON beside the compiled-model
cache (``<artifact>/engines/openvino/<key>/gate-bf16-<machine>.json``, or the user cache for a
read-only artifact; if neither can be written, kept in memory with a warning) through
:func:`coder.store.cached`. Its key: the model's sha256, OpenVINO version, device, CPU and hint.

>>> enc = load_openvino_encoder(load_artifact("art"), "fp32", "openvino")   # doctest: +SKIP
>>> enc.backend                                                             # 'openvino-bf16' (gate passed)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..engines import openvino as ov
from ..errors import BackendError
from ..manifest import Artifact
from ..store import cached, read_json

GATE_FORMAT = "coder.openvino-precision-gate"
GATE_VERSION = 2  # 2: an int8 IR measured at static batch sizes, as the runtime now runs it
MIN_COSINE = 0.999  # the fp16 export gate (coder/export/validate.py)
GATE_SCENES = 16
GATED = ("fp32", "int8")  # precisions whose file may run at the reduced hint (fp16 weights are already reduced)
CLASS_PROMPTS = tuple(f"a photo of a {c}." for c in (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    "apple", "bicycle", "castle", "forest", "mountain", "road", "sea", "sunflower", "tiger", "tulip"))


@dataclass(frozen=True)
class PrecisionGate:
    """The verdict on one reduced hint: ``PrecisionGate("bf16", "CPU", 16, 0.99995, 1.0, True)``."""

    hint: str
    device: str
    images: int
    min_cosine: float
    top1_agreement: float
    passed: bool


def cpu_identity() -> dict:
    """What makes a timing or numerics verdict belong to this machine: CPU model, ISA flags, cores."""
    model, flags = platform.processor() or "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = hashlib.sha256(value.strip().encode()).hexdigest()[:12]
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"machine": platform.machine(), "model": model, "flags": flags, "cores": cores}


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def gate_path(path: Path, sha: str, device: str, key: dict) -> Path | None:
    """Where the verdict is cached (artifact, else user cache); None if neither can be written."""
    d = ov.compile_cache_dir(path, sha, device)
    return None if d is None else d / f"gate-{key['hint']}-{key_hash(key)}.json"


def choose_hint(art: Artifact, precision: str, backend: str, threads: int | None = None,
                gate=None) -> tuple[str, PrecisionGate | None]:
    """``("bf16", verdict)`` if the device's reduced hint passed the gate here, else ``("f32", verdict or None)``.

    ``gate(art, path, hint, device, threads) -> PrecisionGate`` is :func:`run_gate` (tests inject one).
    """
    device = ov.device_of(backend)
    reduced = ov.reduced_hint(device)
    if precision not in GATED or reduced is None:
        return "f32", None
    path = art.encoder("image", precision, "openvino")
    sha = model_sha256(art, path.name)
    key = {"format": GATE_FORMAT, "format_version": GATE_VERSION, "model_sha256": sha, "openvino": ov.version(),
           "device": device, "hint": reduced, "cpu": cpu_identity(), "min_cosine": MIN_COSINE,
           "scenes": GATE_SCENES, "prompts": len(CLASS_PROMPTS)}
    build = lambda: (gate or run_gate)(art, path, reduced, device, threads)  # noqa: E731
    where = gate_path(path, sha, device, key)
    verdict = build() if where is None else cached(where, lambda p: _load(p, key), build,
                                                   lambda p, v: _save(p, key, v), what="OpenVINO precision gate")
    return (reduced if verdict.passed else "f32"), verdict


def _load(p: Path, key: dict) -> PrecisionGate:
    d = read_json(p)
    if d.get("key") != key:
        raise ValueError(f"written for another key ({d.get('format')} v{d.get('format_version')})")
    return PrecisionGate(**d["gate"])


def _save(p: Path, key: dict, verdict: PrecisionGate) -> None:
    Path(p).write_text(json.dumps({"format": GATE_FORMAT, "format_version": GATE_VERSION, "key": key,
                                   "gate": asdict(verdict)}, indent=1))


def run_gate(art: Artifact, path: Path, hint: str, device: str, threads: int | None = None) -> PrecisionGate:
    """Compile the encoder at ``f32`` and at ``hint``; compare embeddings and top-1 classes on the scenes."""
    from .engine_build import reference_pixels

    sha = model_sha256(art, path.name)
    backend = ov.PREFIX if device == "CPU" else f"{ov.PREFIX}:{device}"
    max_batch = art.max_batch
    pixels = reference_pixels(art, GATE_SCENES)
    int8 = "int8" in art.variants("image") and path.name == art.encoder_name("image", "int8", "openvino")
    ref, got = (_embed(ov.load_openvino(path, backend, h, threads, sha, int8=int8, max_batch=max_batch), pixels,
                       max_batch)
                for h in ("f32", hint))  # as the runtime compiles it (int8: at static batch sizes)
    text = _class_embeddings(art, threads)
    cos = np.sum(ref * got, axis=1)
    agree = np.argmax(ref @ text.T, axis=1) == np.argmax(got @ text.T, axis=1)
    return PrecisionGate(hint, device, len(pixels), float(cos.min()), float(agree.mean()),
                         bool(cos.min() >= MIN_COSINE and agree.all()))


def _embed(enc, pixels: np.ndarray, max_batch: int) -> np.ndarray:
    from ..vectors import l2_normalize

    out = np.concatenate([enc.run(pixels[i:i + max_batch]) for i in range(0, len(pixels), max_batch)])
    return l2_normalize(out.astype(np.float64))


def _class_embeddings(art: Artifact, threads: int | None) -> np.ndarray:
    """:data:`CLASS_PROMPTS` through the artifact's fp32 text tower, compiled by OpenVINO at ``f32``."""
    from ..text_bank.text_encoder import TextEncoder
    from ..text_bank.tokenizer import load_tokenizer

    path = art.encoder("text", "fp32")
    sha = art.manifest["files"][path.name]["sha256"]
    engine = ov.load_openvino(path, ov.PREFIX, "f32", threads, sha)
    enc = TextEncoder(art, engine, load_tokenizer(art), "fp32", bool(art.manifest["text"]["dynamic_seq"]), sha)
    return enc.encode(list(CLASS_PROMPTS)).astype(np.float64)


def load_openvino_encoder(art: Artifact, precision: str, backend: str, threads: int | None = None, gate=None):
    """The artifact's image encoder on OpenVINO at the precision :func:`choose_hint` allows.

    ``backend`` is ``openvino`` or ``openvino:<DEVICE>``; the returned engine's ``backend`` says what
    ran (``openvino-bf16``). Raises BackendError without OpenVINO or the device.
    """
    if not ov.installed():
        raise BackendError(ov.NO_OV)
    path = art.encoder("image", precision, "openvino")
    hint, _ = choose_hint(art, precision, backend, threads, gate)
    return ov.load_openvino(path, backend, hint, threads, model_sha256(art, path.name), int8=precision == "int8",
                            max_batch=art.max_batch)


def model_sha256(art: Artifact, name: str) -> str:
    """The file's manifest sha256; for an IR (``.xml``) or external-data model, of all its files together."""
    files = art.manifest["files"]
    parts = [files[name]["sha256"], *(files[x]["sha256"] for x in files[name].get("external_data", []))]
    return parts[0] if len(parts) == 1 else hashlib.sha256("".join(parts).encode()).hexdigest()
