"""Native TensorRT: skipped cleanly without a GPU; without TensorRT the error is typed and names the fix."""

import importlib.util
import shutil

import pytest

from coder.errors import BackendError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and shutil.which("nvidia-smi") is not None


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_is_a_typed_error(tiny_artifact):
    from coder.engines.trt import BuildOptions, build_engine_trt

    with pytest.raises(BackendError, match=r"coder\[trt\]|cuda-python"):
        build_engine_trt(tiny_artifact / "image_encoder.fp16.onnx", tiny_artifact / "x.engine", BuildOptions())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs a CUDA GPU with TensorRT and cuda-python")
def test_build_run_and_stale(tiny_artifact, tmp_path):
    import numpy as np

    from coder.engines.trt import BuildOptions, build_engine_trt, load_engine_trt
    from coder.engines.trt_key import sidecar
    from coder.errors import StaleEngineError
    from coder.runtime.encoder import ImageEncoder

    onnx = tiny_artifact / "image_encoder.fp16.onnx"
    engine = tmp_path / "image_encoder.fp16.engine"
    opts = BuildOptions(max_batch=8, opt_batch=4)
    build_engine_trt(onnx, engine, opts)
    enc = load_engine_trt(engine, onnx, opts)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    ref = ImageEncoder.load(tiny_artifact, "fp32").engine.run(x)
    got = enc.run(x)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999
    text = sidecar(engine).read_text().replace('"fp16"', '"fp32"')
    sidecar(engine).write_text(text)
    with pytest.raises(StaleEngineError):
        load_engine_trt(engine, onnx, opts)
