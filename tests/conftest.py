"""Shared fixtures. Exports are cached for the whole test session.

* ``tiny_artifact``: a 2-layer random CLIP ("coder-tiny", tests/data) — fast,
  for tests where the architecture does not matter.
* ``tiny_fp32_artifact``: the tiny model exported as the README's main command does
  (fp32 only, no int8) with a CIFAR-10 bank: commands must work on it or name the fix.
* ``b32_artifact``: a real ViT-B-32 with random weights (seed 0), fp32 + fp16 —
  the end-to-end parity tests run on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = Path(__file__).parent / "data"
TINY_CONFIG = DATA / "coder-tiny.json"


def _export(arch: str, out: Path, precisions=("fp32", "fp16"), int8: bool = True):
    from coder.export.pipeline import ExportOptions, export_artifacts
    from coder.export.registry import PretrainedSpec

    return export_artifacts(ExportOptions(arch, PretrainedSpec("random", "none", 0), out, precisions, int8=int8))


@pytest.fixture(scope="session")
def tiny_arch() -> str:
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
    out = tmp_path_factory.mktemp("art") / "b32"
    _export("ViT-B-32", out)
    return out


@pytest.fixture(scope="session")
def b32_torch():
    """The same random ViT-B-32 as ``b32_artifact`` in torch, with open_clip's own transform."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    transform = open_clip.image_transform(model.visual.preprocess_cfg["size"], is_train=False,
                                          mean=model.visual.preprocess_cfg["mean"],
                                          std=model.visual.preprocess_cfg["std"])
    return model, transform


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
