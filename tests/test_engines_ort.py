"""Backends never fall back silently."""

import shutil

import onnxruntime as ort
import pytest

from coder.engines.ort import load_ort, probe_providers
from coder.errors import BackendError
from coder.manifest import load_artifact

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers() and shutil.which("nvidia-smi")


def test_cpu_reports_what_runs(tiny_artifact):
    enc = load_ort(load_artifact(tiny_artifact).encoder("image", "fp32"), "cpu")
    assert enc.backend == "cpu" and enc.providers[0] == "CPUExecutionProvider"


def test_unknown_backend(tiny_artifact):
    with pytest.raises(BackendError, match="choose one of"):
        load_ort(load_artifact(tiny_artifact).encoder("image", "fp32"), "metal")


@pytest.mark.skipif(bool(HAS_CUDA), reason="this machine has CUDA")
@pytest.mark.parametrize("backend", ["cuda", "tensorrt"])
def test_gpu_backend_without_gpu_is_an_error(tiny_artifact, backend):
    with pytest.raises(BackendError, match=backend):
        load_ort(load_artifact(tiny_artifact).encoder("image", "fp32"), backend)


def test_fallback_detected(tiny_artifact, quiet_cpu_fallback):
    """Simulate ORT quietly putting a CUDA session on the CPU."""
    path = load_artifact(tiny_artifact).encoder("image", "fp32")
    with pytest.raises(BackendError, match="runs .* on CPUExecutionProvider"):
        load_ort(path, "cuda")
    with pytest.warns(RuntimeWarning):
        enc = load_ort(path, "cuda", allow_fallback=True)
    assert enc.backend == "cpu"


def test_probe():
    assert probe_providers()["cpu"] == "ok"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and onnxruntime-gpu")
def test_cuda_runs(tiny_artifact):
    enc = load_ort(load_artifact(tiny_artifact).encoder("image", "fp16"), "cuda", "fp16")
    assert enc.providers[0] == "CUDAExecutionProvider"
