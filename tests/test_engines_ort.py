"""Backends never fall back silently; the GPU provider contract (provider list, TensorRT options,
session config, node placement) is asserted on what coder passes to ONNX Runtime, without a GPU."""

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from coder.doctor import nvidia_gpu_present
from coder.engines.ort import BACKENDS, load_ort, probe_providers
from coder.errors import BackendError
from coder.manifest import load_artifact
from tests.fakes import ort_options

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers() and nvidia_gpu_present()


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


def _tensorrt_provider_error(options: dict) -> str | None:
    """Why ONNX Runtime's TensorRT provider would fail to start with ``options`` (None: it starts).

    Options are checked against onnxruntime-gpu 1.18.0's parser (:mod:`tests.fakes.ort_options`); the
    engine/timing cache folders must exist, or be creatable as ONE new level (the provider creates no parents).
    """
    try:
        ort_options.check("TensorrtExecutionProvider", options)
    except ValueError as e:
        return str(e)
    for enable, key in (("trt_engine_cache_enable", "trt_engine_cache_path"),
                        ("trt_timing_cache_enable", "trt_timing_cache_path")):
        if str(options.get(enable, "False")) in ("1", "true", "True") and key in options:
            folder = Path(options[key])
            if not folder.is_dir():
                if not folder.parent.is_dir():
                    return f"{key} {folder}: parent folder missing (the provider creates one level only)"
                folder.mkdir()
    return None


@pytest.fixture
def captured(monkeypatch):
    """ONNX Runtime that claims every provider and runs on the CPU, recording what coder asked for.

    ``get_providers`` echoes the request (as a GPU build would), so only the profiled node
    placement can reveal that the nodes ran on the CPU. Provider options are validated as
    onnxruntime-gpu 1.18.0 does; a TensorRT provider that would fail to start is dropped, as
    ONNX Runtime's Python API does ("Falling back to ['CUDAExecutionProvider', ...]"), and the
    reason is recorded under ``"rejected"``.
    """
    calls = []
    real = ort.InferenceSession

    class Capturing(real):
        def __init__(self, path, sess_options=None, providers=None):
            call = {"providers": providers, "options": sess_options, "rejected": None}
            calls.append(call)
            for entry in providers:  # unknown providers / CUDA options raise, as in ONNX Runtime
                name, opts = entry if isinstance(entry, tuple) else (entry, {})
                if name != "TensorrtExecutionProvider":
                    ort_options.check(name, opts)
                else:
                    call["rejected"] = _tensorrt_provider_error(opts)
            super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
            asked = [p[0] if isinstance(p, tuple) else p for p in providers]
            self._asked = [p for p in asked if not (call["rejected"] and p == "TensorrtExecutionProvider")]

        def get_providers(self):
            return self._asked

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(BACKENDS.values()))
    monkeypatch.setattr(ort, "InferenceSession", Capturing)
    return calls


def test_tensorrt_provider_list_profile_and_cache_keyed_by_weights(tiny_artifact, tmp_path, captured):
    from coder.runtime.encoder import ImageEncoder

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    with pytest.warns(RuntimeWarning):
        enc = ImageEncoder.load(art, "fp32", "tensorrt", allow_fallback=True)
    assert captured[-1]["rejected"] is None
    providers = captured[-1]["providers"]
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == \
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = providers[0][1]
    assert opts["trt_profile_min_shapes"] == "pixel_values:1x3x64x64"
    assert opts["trt_profile_opt_shapes"] == "pixel_values:8x3x64x64"
    assert opts["trt_profile_max_shapes"] == "pixel_values:64x3x64x64"  # the artifact's max_batch
    sha = load_artifact(art).manifest["files"]["image_encoder.fp32.onnx"]["sha256"]
    cache = opts["trt_engine_cache_path"]
    assert opts["trt_engine_cache_enable"] == "True" and sha[:16] in cache and f"ort{ort.__version__}" in cache
    assert "-trt" in cache and opts["trt_timing_cache_path"] == cache
    assert enc.engine.placement["cpu"]["MatMul"] > 0 and enc.backend == "cpu"  # the truth: it ran on the CPU
    # other weights under the same file and tensor names: another cache directory
    from coder.engines.ort import trt_provider_options

    onnx = art / "image_encoder.fp32.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\n")  # trailing bytes: same graph names, other file content
    assert trt_provider_options(onnx)["trt_engine_cache_path"] != cache


def test_cuda_provider_list_and_cpu_placement_is_an_error(tiny_artifact, captured):
    path = load_artifact(tiny_artifact).encoder("image", "int8")
    with pytest.raises(BackendError, match=r"compute nodes on the CPU \(.*(Add|MatMul).*--allow-fallback"):
        load_ort(path, "cuda", "int8")
    assert captured[-1]["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    so = captured[-1]["options"]
    assert so.enable_profiling  # placement measured; disable_cpu_ep_fallback is incompatible with CPU listed
    with pytest.warns(RuntimeWarning, match="compute nodes on the CPU"):
        enc = load_ort(path, "cuda", "int8", allow_fallback=True)
    assert enc.backend == "cpu" and "MatMulIntegerToFloat" in enc.placement["cpu"]  # the static int8 kernel
    np.testing.assert_equal(enc.run(np.zeros((2, 3, 64, 64), np.float32)).shape, (2, 64))


def test_cpu_backend_is_not_profiled(tiny_artifact, captured):
    load_ort(load_artifact(tiny_artifact).encoder("image", "fp32"), "cpu")
    assert captured[-1]["providers"] == ["CPUExecutionProvider"] and not captured[-1]["options"].enable_profiling


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and onnxruntime-gpu")
def test_cuda_runs(tiny_artifact):
    enc = load_ort(load_artifact(tiny_artifact).encoder("image", "fp16"), "cuda", "fp16")
    assert enc.providers[0] == "CUDAExecutionProvider" and enc.backend.startswith("cuda")
    assert "cuda" in enc.placement


def test_reported_backend_names_every_provider_that_ran_compute():
    """Mixed placement as a GPU build reports it: TensorRT kernels, CUDA leftovers, CPU shape ops or compute."""
    from coder.engines.ort import _reported_backend

    trt = "TensorrtExecutionProvider"
    used = [trt, "CUDAExecutionProvider", "CPUExecutionProvider"]
    placed = {"tensorrt": {"TRTKernel_graph_main_0": 1}, "cuda": {"MatMulInteger": 9}, "cpu": {"Shape": 2}}
    assert _reported_backend("tensorrt", trt, used, placed, [], "m.onnx", False) == "tensorrt+cuda"
    assert _reported_backend("tensorrt", trt, used, {"tensorrt": {"TRTKernel": 1}}, [], "m.onnx", False) == "tensorrt"
    placed["cpu"]["DynamicQuantizeLinear"] = 1
    with pytest.raises(BackendError, match="DynamicQuantizeLinear.*--allow-fallback"):
        _reported_backend("tensorrt", trt, used, placed, ["DynamicQuantizeLinear"], "m.onnx", False)
    with pytest.warns(RuntimeWarning):
        got = _reported_backend("tensorrt", trt, used, placed, ["DynamicQuantizeLinear"], "m.onnx", True)
    assert got == "tensorrt+cuda+cpu"


# -- the TensorRT provider's cache folder and options, as onnxruntime-gpu 1.18 takes them ------------------

def test_tensorrt_cache_folder_exists_before_the_session(tiny_artifact, tmp_path, captured):
    """The provider creates one missing level only: ``<artifact>/engines/ort-trt/<key>/`` is made beforehand."""
    from coder.engines.ort import trt_cache_key

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    path = art / "image_encoder.fp32.onnx"
    with pytest.warns(RuntimeWarning):
        enc = load_ort(path, "tensorrt", allow_fallback=True)
    assert captured[-1]["rejected"] is None and enc.providers[0] == "TensorrtExecutionProvider"
    cache = art / "engines" / "ort-trt" / trt_cache_key(path)
    assert cache.is_dir() and captured[-1]["providers"][0][1]["trt_engine_cache_path"] == str(cache)


def test_read_only_artifact_caches_under_the_user_cache(tiny_artifact, tmp_path, captured, monkeypatch):
    from coder.engines.ort import trt_cache_key, trt_provider_options

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    (art / "engines").write_text("not a folder")  # <artifact>/engines cannot be created (read-only media alike)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = art / "image_encoder.fp32.onnx"
    with pytest.warns(RuntimeWarning):
        load_ort(path, "tensorrt", allow_fallback=True)
    assert captured[-1]["rejected"] is None
    opts = captured[-1]["providers"][0][1]
    user = tmp_path / "xdg" / "coder" / "ort-trt" / trt_cache_key(path)  # keyed as in the artifact
    assert user.is_dir() and opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(user)
    monkeypatch.setenv("XDG_CACHE_HOME", str(art / "engines"))  # nothing writable at all: no cache, said so
    with pytest.warns(RuntimeWarning, match="no writable TensorRT engine cache folder"):
        opts = trt_provider_options(path)
    assert "trt_engine_cache_enable" not in opts
    ort_options.check("TensorrtExecutionProvider", opts)


def test_every_option_coder_passes_is_valid_for_onnxruntime_1_18(tiny_artifact, tmp_path, captured):
    from coder.engines.ort import TrtProfile

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    for backend in ("cpu", "cuda", "tensorrt"):
        with pytest.warns(RuntimeWarning) if backend != "cpu" else _no_warning():
            load_ort(art / "image_encoder.fp16.onnx", backend, "fp16", allow_fallback=True,
                     profile=TrtProfile("pixel_values", (3, 64, 64), 1, 8, 64))
        ort_options.check_providers(captured[-1]["providers"])  # unknown key, bad value, fp16 flag: ValueError
        assert captured[-1]["rejected"] is None


def _no_warning():
    import contextlib

    return contextlib.nullcontext()
