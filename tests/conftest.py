"""Shared fixtures. Exports are cached for the whole test session.

* ``tiny_artifact``: a 2-layer random CLIP ("coder-tiny", tests/data) — fast,
  for tests where the architecture does not matter.
* ``tiny_fp32_artifact``: the tiny model exported as the README's main command does
  (fp32 only, no int8) with a CIFAR-10 bank: commands must work on it or name the fix.
* ``b32_artifact``: a real ViT-B-32 with random weights (seed 0), fp32 + fp16 —
  the end-to-end parity tests run on it.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).parent / "data"
TINY_CONFIG = DATA / "coder-tiny.json"
ROOT = Path(__file__).resolve().parents[1]

# The runtime's own tests also run without torch (CI: Python 3.10, lowest supported versions).
# There, modules that import torch/open_clip/coder.export at the top are not collected, tests
# marked ``torch`` are skipped, and artifacts are exported by another interpreter that has the
# [export] extra ($CODER_EXPORT_PYTHON).
HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "open_clip"))
_HEAVY = ("torch", "open_clip", "torchvision", "coder.export")


def _imports_heavy(path: Path) -> bool:
    """Imports torch/open_clip/the exporter, or a package of an extra not installed here, at the top."""
    for node in ast.parse(path.read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(n == h or n.startswith(h + ".") for n in names for h in _HEAVY):
            return True
        if any(n and n.split(".")[0] not in ("coder", "tests") and importlib.util.find_spec(n.split(".")[0]) is None
               for n in names):
            return True
    return False


collect_ignore = [] if HAS_TORCH else [p.name for p in Path(__file__).parent.glob("test_*.py") if _imports_heavy(p)]


_NEEDS_TORCH = re.compile(r"import torch|open_clip|coder\.export|[\[(]\s*\"export\"")


def _needs_torch(item) -> bool:
    """Marked ``torch``, or the test (or a fixture of its own module) imports torch/open_clip/the
    exporter or runs ``coder export``."""
    if "torch" in item.keywords:
        return True
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else []):
        funcs += [d.func for d in defs if getattr(d.func, "__module__", "") == item.module.__name__]
    for fn in funcs:
        try:
            if fn is not None and _NEEDS_TORCH.search(inspect.getsource(fn)):
                return True
        except (OSError, TypeError):
            pass
    return False


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="needs torch/open_clip (the [export] extra)")
    for item in items:
        if _needs_torch(item):
            item.add_marker(skip)


def _export_elsewhere(arch: str, out: Path, precisions, int8: bool) -> None:
    """Export with ``$CODER_EXPORT_PYTHON`` (an interpreter with [export]) through the CLI."""
    python = os.environ.get("CODER_EXPORT_PYTHON")
    if not python:
        pytest.skip("needs torch to export a test artifact (or $CODER_EXPORT_PYTHON)")
    cmd = [python, "-m", "coder", "export", "--backbone", arch, "--pretrained", "none", "--classes", "none",
           "--precision", "both" if len(precisions) == 2 else precisions[0], "--out", str(out)]
    cmd += ["--model-config", str(TINY_CONFIG)] if arch == "coder-tiny" else []
    cmd += ["--int8"] if int8 else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


def _export(arch: str, out: Path, precisions=("fp32", "fp16"), int8: bool = True):
    if not HAS_TORCH:
        return _export_elsewhere(arch, out, precisions, int8)
    from coder.export.pipeline import ExportOptions, export_artifacts
    from coder.export.registry import PretrainedSpec

    return export_artifacts(ExportOptions(arch, PretrainedSpec("random", "none", 0), out, precisions, int8=int8))


@pytest.fixture(scope="session")
def tiny_arch() -> str:
    if not HAS_TORCH:
        return "coder-tiny"  # registered by the exporting interpreter
    from coder.export.registry import register_model_config

    return register_model_config(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_arch) -> Path:
    out = tmp_path_factory.mktemp("art") / "tiny"
    _export(tiny_arch, out)
    return out


@pytest.fixture(scope="session")
def tiny_fp32_artifact(tmp_path_factory, tiny_arch) -> Path:
    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    out = tmp_path_factory.mktemp("art") / "tiny-fp32"
    _export(tiny_arch, out, ("fp32",), int8=False)
    build_bank(out, init_texts("cifar10"))
    return out


@pytest.fixture(scope="session")
def b32_artifact(tmp_path_factory) -> Path:
    if not HAS_TORCH:
        pytest.skip("the ViT-B/32 parity tests compare with torch")
    out = tmp_path_factory.mktemp("art") / "b32"
    _export("ViT-B-32", out)
    return out


@pytest.fixture(scope="session")
def b32_torch():
    """The same random ViT-B-32 as ``b32_artifact`` in torch, with open_clip's own transform."""
    pytest.importorskip("torch")
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    transform = open_clip.image_transform(model.visual.preprocess_cfg["size"], is_train=False,
                                          mean=model.visual.preprocess_cfg["mean"],
                                          std=model.visual.preprocess_cfg["std"])
    return model, transform


@pytest.fixture
def private_copy(tmp_path, monkeypatch):
    """``private_copy(src, *ignore)``: a copy of artifact ``src`` in ``tmp_path / "art"`` (the test writes caches
    into it) without the ``ignore`` patterns, and a private user cache (``$XDG_CACHE_HOME``)."""
    import shutil

    def copy(src: Path, *ignore: str) -> Path:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        dst = tmp_path / "art"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*ignore))
        return dst
    return copy


@pytest.fixture
def sample_images(tmp_path) -> list[Path]:
    from coder.samples import synthetic_scene

    paths = []
    for i, (size, ext) in enumerate([((320, 240), "jpg"), ((200, 300), "png"), ((224, 224), "jpg")]):
        p = tmp_path / f"img{i}.{ext}"
        synthetic_scene(100 + i, size).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def quiet_cpu_fallback(monkeypatch):
    """ONNX Runtime claims every provider but quietly runs each session on the CPU (the trap we guard)."""
    import onnxruntime as ort

    from coder.engines.ort import BACKENDS

    real = ort.InferenceSession

    class Quiet(real):
        def __init__(self, path, sess_options=None, providers=None):
            super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(BACKENDS.values()))
    monkeypatch.setattr(ort, "InferenceSession", Quiet)


@pytest.fixture(autouse=True)
def _onnx_runtime_is_the_auto_cpu_engine(monkeypatch):
    """``--backend auto`` measures the installed CPU engines (coder.runtime.cpu_choice); a test must not depend on
    which one is faster on the machine running it. Tests of that choice inject timings (tests/test_cpu_choice.py)."""
    monkeypatch.setenv("CODER_CPU_ENGINES", "cpu")
