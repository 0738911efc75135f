"""A Triton Inference Server model repository for an artifact + bank (``coder triton-repo``).

Layout (``REPO/coder-repo.json`` versions it: ``format: coder.triton-repo``)::

    REPO/coder-repo.json            what was written, from which artifact/bank, and how
    REPO/coder/config.pbtxt         model "coder": image (BYTES [1]) -> label, name, top_k, ...
    REPO/coder/1/model.py           a thin Python-backend file: imports coder.deploy.triton_model
    REPO/coder/1/coder_model.json   the model's settings (artifact, bank, backend, tau, sys.path)

With ``ensemble=onnxruntime|tensorrt|python`` the model ``coder`` is an ensemble instead:
``coder_preprocess`` (Python: decode + open_clip transform) -> ``coder_head`` (the fused
encoder + CODER head graph on Triton's ONNX Runtime backend, as a TensorRT plan, or in a
Python model through ONNX Runtime) -> ``coder_gate`` (Python: the rerank gate). Clients
see the same inputs and outputs either way.

>>> info = write_repo("coder-artifacts/ViT-B-32__openai", "cifar10", "repo", RepoOptions(max_batch=32))  # doctest: +SKIP
>>> info.models, info.top_k                     # (('coder',), 5)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..engines.head_graph import clamp_k
from ..engines.openvino import BACKENDS as OV_BACKENDS
from ..errors import ArtifactError, ConfigError
from ..store import atomic_write_bytes, atomic_write_json
from ..manifest import PRECISIONS, load_artifact
from ..runtime.classifier import find_bank
from ..text_bank.bank import load_bank

REPO_FORMAT = "coder.triton-repo"
REPO_FORMAT_VERSION = 2  # 2: models load their Classifier from one ClassifierOptions ("options")
MODEL_FORMAT = "coder.triton-model"
MODEL = "coder"
ORT_BACKENDS = ("cpu", "cuda", "tensorrt")  # ONNX Runtime providers: what every layout's heads can run on
# The default layout's Python model builds a Classifier (ClassifierOptions): OpenVINO and `auto` as well.
BACKENDS = (*ORT_BACKENDS, *OV_BACKENDS, "auto")
ENSEMBLE_HEADS = ("onnxruntime", "tensorrt", "python")

# The thin file Triton's Python backend loads. It only puts coder (and the interpreter's
# site-packages) on sys.path, then hands over to coder.deploy.triton_model.
MODEL_PY = '''"""Triton Python-backend model written by `coder triton-repo`; the logic is coder.deploy.triton_model."""
import json
import os
import sys

_SETTINGS = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "coder_model.json")))
for _p in reversed(_SETTINGS["sys_path"]):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from coder.deploy.triton_model import make_model  # noqa: E402

TritonPythonModel = make_model(_SETTINGS)
'''


@dataclass(frozen=True)
class RepoOptions:
    """How the repository serves: batching, instances, execution backend, ensemble head."""

    max_batch: int = 32
    instances: int = 1
    backend: str = "cpu"  # ONNX Runtime provider; the default layout also takes openvino[:GPU|:NPU] and auto
    precision: str = "fp32"
    top_k: int = 5
    tau: float | None = None
    threads: int | None = None  # ONNX Runtime intra-op threads per instance (default: cores / instances)
    max_queue_delay_us: int = 0  # 0: batch what queued while the instance was busy (no added latency)
    ensemble: str | None = None  # None: one Python model; else the head's backend
    engine_dir: str | None = None  # ensemble=tensorrt: where `coder build-engine` wrote the plan
    bank_cache_mb: float = 256.0  # banks of per-request `classes` lists kept in memory (least recently used out)


@dataclass(frozen=True)
class RepoInfo:
    root: Path
    models: tuple[str, ...]
    top_k: int
    k: int
    n_classes: int
    settings: dict = field(default_factory=dict)


def check_options(opts: RepoOptions) -> None:
    if opts.backend not in BACKENDS:
        raise ConfigError(f"--backend {opts.backend!r}: choose {', '.join(BACKENDS)}")
    if opts.ensemble is not None and opts.backend not in ORT_BACKENDS:
        raise ConfigError(f"--backend {opts.backend} runs only in the default layout's Python model; the --ensemble "
                          f"head runs on Triton's own backends: drop --ensemble, or choose {', '.join(ORT_BACKENDS)}")
    if opts.precision not in PRECISIONS:
        raise ConfigError(f"--precision {opts.precision!r}: choose {', '.join(PRECISIONS)}")
    if opts.ensemble is not None and opts.ensemble not in ENSEMBLE_HEADS:
        raise ConfigError(f"--ensemble {opts.ensemble!r}: choose {', '.join(ENSEMBLE_HEADS)}")
    if opts.max_batch < 1 or opts.instances < 1 or opts.top_k < 1 or opts.max_queue_delay_us < 0:
        raise ConfigError("--max-batch, --instances and --top-k must be >= 1 (and the queue delay >= 0)")


def coder_sys_path() -> list[str]:
    """Directories the Python-backend stub needs: coder's own root first, then this
    interpreter's site-packages (the stub runs its own interpreter, PITFALLS.md "Triton")."""
    import site

    root = str(Path(__file__).resolve().parents[2])
    paths = [root, *site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def _tensor(name: str, dtype: str, dims, reshape=None) -> str:
    extra = f" reshape: {{ shape: [ {', '.join(map(str, reshape))} ] }}" if reshape is not None else ""
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]{extra} }}'


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def client_outputs(top_k: int) -> list[str]:
    """The outputs a client sees, in order (names as in ``coder classify --json``)."""
    return [_tensor("label", "TYPE_INT32", [1]), _tensor("name", "TYPE_STRING", [1]),
            _tensor("top_k", "TYPE_INT32", [top_k]), _tensor("stage1_scores", "TYPE_FP32", [top_k]),
            _tensor("gap", "TYPE_FP32", [1]), _tensor("reranked", "TYPE_BOOL", [1])]


IMAGE_INPUT = _tensor("image", "TYPE_STRING", [1])


def _config(name: str, runtime: str, max_batch: int, inputs: list[str], outputs: list[str],
            instances: int | None, kind: str, queue_delay_us: int | None, tail: str = "") -> str:
    """config.pbtxt text; ``runtime`` is ``backend: "python"`` or ``platform: "..."``."""
    text = f'name: "{name}"\n{runtime}\nmax_batch_size: {max_batch}\n' + _io("input", inputs) + _io("output", outputs)
    if queue_delay_us is not None:
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}\n"
    if instances is not None:
        text += f"instance_group [ {{ kind: {kind} count: {instances} }} ]\n"
    return text + tail


def _settings(art_root: Path, bank_root: Path, opts: RepoOptions, role: str, k: int) -> dict:
    from ..runtime.classifier import ClassifierOptions, EngineOptions

    options = ClassifierOptions(str(art_root), str(bank_root), opts.backend, opts.precision, opts.tau, k,
                                opts.threads, engines=EngineOptions(opts.engine_dir))
    return {"format": MODEL_FORMAT, "format_version": REPO_FORMAT_VERSION, "role": role,
            "options": options.to_dict(),
            "artifacts": str(art_root), "bank": str(bank_root), "backend": opts.backend,
            "precision": opts.precision, "tau": opts.tau, "k": k, "top_k": opts.top_k, "threads": opts.threads,
            "instances": opts.instances, "bank_cache_mb": opts.bank_cache_mb,
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "sys_path": coder_sys_path()}


def _write_python_model(root: Path, name: str, config: str, settings: dict) -> None:
    atomic_write_bytes(root / name / "config.pbtxt", config.encode())
    atomic_write_bytes(root / name / "1" / "model.py", MODEL_PY.encode())
    atomic_write_json(root / name / "1" / "coder_model.json", settings)


def write_repo(artifacts: str | os.PathLike, bank: str | None, out: str | os.PathLike,
               opts: RepoOptions = RepoOptions()) -> RepoInfo:
    """Check the artifact and bank (ArtifactError before anything is written), then write ``out``.

    An existing ``out`` must be empty or a repository this function wrote (it is replaced).
    """
    check_options(opts)
    art = load_artifact(artifacts)
    b = load_bank(find_bank(art.root, bank), art)
    n_classes = len(b.class_names)
    top_k, k = min(opts.top_k, n_classes), clamp_k(b.k, n_classes)
    final = _check_out(Path(out))
    if opts.ensemble != "tensorrt":  # fuse (or reuse) the encoder+head graph now: a missing precision fails here
        from ..runtime.fused import ensure_fused_onnx, fused_consumer

        ensure_fused_onnx(art, b, opts.precision, k, fused_consumer(opts.backend))
    root = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    os.chmod(root, 0o755)  # mkdtemp makes it 0700; a repository is meant to be read by the server's user
    try:
        models, settings = _write_models(root, art, b, opts, top_k, k)
        manifest = {"format": REPO_FORMAT, "format_version": REPO_FORMAT_VERSION, "models": list(models),
                    "entry_model": MODEL, "artifacts": str(art.root.resolve()), "bank": str(b.root.resolve()),
                    "n_classes": n_classes, "top_k": top_k, "k": k, "options": asdict(opts)}
        atomic_write_json(root / "coder-repo.json", manifest)
        _swap_in(root, final)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return RepoInfo(final, models, top_k, k, n_classes, settings)


def _write_models(root: Path, art, b, opts: RepoOptions, top_k: int, k: int):
    kind = "KIND_CPU"  # Python models place themselves (ONNX Runtime's device 0 for cuda/tensorrt)
    if opts.ensemble is None:
        settings = _settings(art.root.resolve(), b.root.resolve(), opts, "classify", k)
        cfg = _config(MODEL, 'backend: "python"', opts.max_batch, [IMAGE_INPUT], client_outputs(top_k),
                      opts.instances, kind, opts.max_queue_delay_us)
        _write_python_model(root, MODEL, cfg, settings)
        return (MODEL,), settings
    from .triton_ensemble import write_ensemble

    settings = _settings(art.root.resolve(), b.root.resolve(), opts, "ensemble", k)
    return write_ensemble(root, art, b, opts, settings, top_k, k), settings


def _check_out(out: Path) -> Path:
    """``out`` may be missing, empty, or a repository written before (then it is replaced whole)."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / "coder-repo.json").is_file():
            raise ConfigError(f"--out {out}: not empty and not a coder Triton repository; choose another")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.resolve()


def _swap_in(new: Path, final: Path) -> None:
    """Put the finished repository in place; an interrupted or failed write leaves the old one intact."""
    old = None
    if final.exists():
        old = final.with_name(f".tmp-{final.name}-old-{os.getpid()}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_repo_manifest(root: str | os.PathLike) -> dict:
    """``coder-repo.json`` of a repository, checked for format and version."""
    path = Path(root) / "coder-repo.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: not a coder Triton repository ({e})") from None
    if m.get("format") != REPO_FORMAT or m.get("format_version") != REPO_FORMAT_VERSION:
        raise ArtifactError(f"{path}: format {m.get('format')} v{m.get('format_version')}, "
                            f"expected {REPO_FORMAT} v{REPO_FORMAT_VERSION}: re-run `coder triton-repo`")
    return m
