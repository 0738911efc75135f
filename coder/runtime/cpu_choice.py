"""``--backend auto`` on the CPU: the faster installed CPU engine, chosen by measurement.

Neither CPU engine wins everywhere: OpenVINO with the bf16 hint ran a ViT-B/32 about 2x faster
than ONNX Runtime on a CPU with BF16, while OpenVINO at f32 ran slower than ONNX Runtime on one
without. So ``auto`` measures, once per machine, artifact and precision, every installed CPU engine
(:data:`CPU_ENGINES`: ONNX Runtime's CPU provider, OpenVINO on the CPU at the precision its gate
allows) on the same input, in blocks: each engine idles ``coder.timing.SETTLE_S``, runs :data:`WARMUP`
untimed then :data:`ROUNDS` timed batch-1 calls before the next engine starts, in :data:`BLOCKS` rounds
(the second in reverse order), and keeps its best block median (:func:`coder.timing.blocks_ms`).
Round-robin timing measured ONNX Runtime's threads, still spinning after its run, slowing OpenVINO's
run right after it: on a 2-core CPU ``auto`` measured the OpenVINO bf16 encoder 1.2x faster than
ONNX Runtime when it ran 2x faster alone. An engine must beat
ONNX Runtime by :data:`MARGIN` to displace it (noise on a loaded machine must not flip the choice run to run).
``$CODER_CPU_ENGINES`` (e.g. ``cpu`` or ``openvino``) limits the candidates: one left is used unmeasured.

The choice is cached as versioned JSON beside the artifact's verified-hash cache
(``<artifact>/.coder-cpu-choice/<precision>-<key16>.json``; key: model sha256, precision, CPU, cores,
threads and the engines' versions), committed atomically through :func:`coder.store.cached`; on a
read-only artifact it is kept in memory for the process. ``coder doctor --artifacts DIR`` and
``coder bench`` show it.

>>> choice = choose_cpu_engine(art, "fp32", None, lambda name: ImageEncoder.load(dir, "fp32", name))  # doctest: +SKIP
>>> choice.backend, choice.ran, choice.ms    # ('openvino', 'openvino-bf16', {'cpu': 65.0, 'openvino': 28.1})
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BackendError, ConfigError
from ..manifest import Artifact
from ..store import cached, read_json
from ..timing import blocks_ms, time_call
from .openvino_precision import cpu_identity, key_hash

CHOICE_FORMAT = "coder.cpu-engine-choice"
CHOICE_VERSION = 3  # 3: OpenVINO int8 at static batch sizes; 2: in blocks; 1: round-robin (biased)
CHOICE_DIR = ".coder-cpu-choice"
CPU_ENGINES = ("cpu", "openvino")  # ONNX Runtime CPU provider first: it keeps ties
MODULES = {"cpu": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")), "openvino": ("openvino", ("openvino",))}
WARMUP, ROUNDS, BLOCKS = 2, 5, 2
MARGIN = 0.03
PIN_ENV = "CODER_CPU_ENGINES"

_MEMORY: dict[str, "CpuChoice"] = {}  # read-only artifacts: one measurement per process


@dataclass(frozen=True)
class CpuChoice:
    """The CPU engine ``auto`` runs: ``backend`` is what to load, ``ran`` what it reported.

    ``ms``: median batch-1 encoder milliseconds per engine measured; ``failed``: engine -> why it did not
    load; ``measured``: True when this process measured it (False: read from the cache).
    """

    backend: str
    ran: str
    ms: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    measured: bool = True

    def describe(self) -> str:
        """``"openvino-bf16 (b1 28.1 ms; cpu 65.0 ms)"``."""
        others = "; ".join(f"{k} {v:.1f} ms" for k, v in self.ms.items() if k != self.backend)
        mine = self.ms.get(self.backend)
        timing = f"b1 {mine:.1f} ms" if mine is not None else "the only CPU engine installed"
        return f"{self.ran} ({timing}{'; ' + others if others else ''})"


def installed_engines() -> list[str]:
    """The CPU engines whose module can be imported here, in :data:`CPU_ENGINES` order; ``$CODER_CPU_ENGINES``
    (a comma list, e.g. ``cpu``) limits them: a deployment can pin its engine and skip the measurement."""
    pinned = [e.strip() for e in os.environ.get(PIN_ENV, "").split(",") if e.strip()]
    if any(e not in CPU_ENGINES for e in pinned):
        raise ConfigError(f"${PIN_ENV}={os.environ[PIN_ENV]!r}: a comma list of {', '.join(CPU_ENGINES)}")
    return [e for e in CPU_ENGINES if (not pinned or e in pinned) and importlib.util.find_spec(MODULES[e][0])]


def _versions(engines: list[str]) -> dict:
    out = {}
    for e in engines:
        for dist in MODULES[e][1]:
            try:
                out[e] = md.version(dist)
                break
            except md.PackageNotFoundError:
                continue
    return out


def choice_key(art: Artifact, precision: str, threads: int | None, engines: list[str]) -> dict:
    """What the measurement depends on; the models are the files each engine runs (int8: QDQ file and IR)."""
    files = dict.fromkeys(art.encoder_name("image", precision, c) for c in ("cpu", "openvino"))
    return {"format": CHOICE_FORMAT, "format_version": CHOICE_VERSION,
            "model_sha256": "+".join(art.manifest["files"][n]["sha256"] for n in files), "precision": precision,
            "threads": threads, "cpu": cpu_identity(), "engines": _versions(engines), "rounds": ROUNDS,
            "blocks": BLOCKS}


def choice_path(art: Artifact, key: dict) -> Path:
    return art.root / CHOICE_DIR / f"{key['precision']}-{key_hash(key)}.json"


def time_batch1(name: str, enc, x: np.ndarray) -> float:
    """Milliseconds of one encoder call on ``x`` (the default timer)."""
    return time_call(name, lambda: enc.engine.run(x))


def measure(loaders: dict[str, Callable[[], object]], x: np.ndarray,
            timer: Callable[[str, object, np.ndarray], float]) -> tuple[dict, dict, dict]:
    """Load every engine, then time each in blocks: ``(best block median ms, reported backend, why not loaded)``."""
    encs, failed = {}, {}
    for name, load in loaders.items():
        try:
            encs[name] = load()
        except BackendError as e:
            failed[name] = str(e)
    try:
        ms = blocks_ms({n: (lambda e=e: e.engine.run(x)) for n, e in encs.items()}, ROUNDS, BLOCKS, WARMUP,
                       clock=lambda name, fn: float(timer(name, encs[name], x)))
        return ms, {n: e.backend for n, e in encs.items()}, failed
    finally:
        for enc in encs.values():
            enc.close()


def pick(ms: dict[str, float]) -> str:
    """The fastest engine; one beats ONNX Runtime (``cpu``) only by more than :data:`MARGIN`.

    ``pick({"cpu": 65.0, "openvino": 28.1}) == "openvino"``; ``pick({"cpu": 65.0, "openvino": 64.0}) == "cpu"``.
    """
    best = min(ms, key=lambda n: (ms[n], CPU_ENGINES.index(n) if n in CPU_ENGINES else len(CPU_ENGINES)))
    if "cpu" in ms and best != "cpu" and ms[best] > ms["cpu"] * (1 - MARGIN):
        return "cpu"
    return best


def choose_cpu_engine(art: Artifact, precision: str, threads: int | None, load: Callable[[str], object],
                      timer: Callable[[str, object, np.ndarray], float] = time_batch1,
                      engines: list[str] | None = None) -> CpuChoice:
    """The cached choice for this machine, artifact and precision, else measure it (and cache it).

    ``load(name)`` opens the plain image encoder on CPU engine ``name`` (``cpu`` or ``openvino``).
    With one engine installed nothing is measured. BackendError if no CPU engine loads.
    """
    engines = installed_engines() if engines is None else list(engines)
    if not engines:
        pin = f" (${PIN_ENV}={os.environ[PIN_ENV]})" if os.environ.get(PIN_ENV) else ""
        raise BackendError(f"no CPU engine installed{pin}: pip install 'coder[cpu]' (ONNX Runtime) or "
                           "'coder[openvino]'")
    if len(engines) == 1:
        return CpuChoice(engines[0], engines[0], measured=False)
    key = choice_key(art, precision, threads, engines)
    path = choice_path(art, key)
    if str(path) in _MEMORY:
        return _MEMORY[str(path)]

    def build() -> CpuChoice:
        x = np.random.default_rng(0).standard_normal((1, 3, *art.preprocess.size)).astype(np.float32)
        ms, ran, failed = measure({e: (lambda e=e: load(e)) for e in engines}, x, timer)
        if not ms:
            raise BackendError("no CPU engine could load: " + " | ".join(f"{k}: {v}" for k, v in failed.items()))
        best = pick(ms)
        return CpuChoice(best, ran[best], ms, failed)

    choice = cached(path, lambda p: _load(p, key), build, lambda p, c: _save(p, key, c), what="CPU engine choice")
    if not path.is_file():  # could not be written: measure once per process
        _MEMORY[str(path)] = choice
    return choice


def _load(p: Path, key: dict) -> CpuChoice:
    d = read_json(p)
    if d.get("key") != key:
        raise ValueError("written for another key")
    return CpuChoice(**{**d["choice"], "measured": False})


def _save(p: Path, key: dict, c: CpuChoice) -> None:
    Path(p).write_text(json.dumps({"format": CHOICE_FORMAT, "format_version": CHOICE_VERSION, "key": key,
                                   "choice": asdict(c), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                     time.gmtime())}, indent=1))


def cached_choices(art: Artifact) -> list[dict]:
    """Every choice cached in ``art`` (for ``coder doctor``): ``[{"precision", "cpu", "choice", "measured_at"}]``.
    Files of another format version are left out: ``auto`` never reads them (older versions timed
    OpenVINO int8 at a dynamic batch, or round-robin)."""
    out = []
    for p in sorted((art.root / CHOICE_DIR).glob("*.json")):
        try:
            d = read_json(p)
            if (d.get("format"), d.get("format_version")) != (CHOICE_FORMAT, CHOICE_VERSION):
                continue
            out.append({"precision": d["key"]["precision"], "cpu": d["key"]["cpu"], "this_machine":
                        d["key"]["cpu"] == cpu_identity(), "choice": d["choice"], "measured_at": d.get("measured_at")})
        except (ValueError, KeyError, OSError):
            continue
    return out
