"""The CPU stand-ins (tests/fakes) are faithful both ways: what the real TensorRT 10 / cuda-python bindings
accept is accepted (valid code passes), and what the real libraries report is reported (async work lands
only at synchronization, external data needs the model path, a mismatched timing cache and a failed
execution context are signalled by return values)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests import fakes
from tests.fakes import ort_options


@pytest.fixture
def gpu(monkeypatch):
    g = fakes.install(monkeypatch)
    yield g
    assert g.cudart.violations == []


def _engine(tiny_artifact, onnx_path=None):
    """(trt module, engine, context) of the tiny fp32 encoder, batch 1..4 at 64x64."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(str(onnx_path or tiny_artifact / "image_encoder.fp32.onnx"))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("pixel_values", (1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(plan))
    return trt, engine, engine.create_execution_context()


def _reference(tiny_artifact, x):
    sess = ort.InferenceSession(str(tiny_artifact / "image_encoder.fp32.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"pixel_values": x})[0]


def _enqueue(trt, engine, ctx, cudart, x, out, stream, stream_arg):
    """H2D, inference and D2H on ``stream``, host buffers passed as arrays; returns the device pointers."""
    kind = cudart.cudaMemcpyKind
    _, d_in = cudart.cudaMalloc(x.nbytes)
    _, d_out = cudart.cudaMalloc(out.nbytes)
    assert cudart.cudaMemcpyAsync(d_in, x, x.nbytes, kind.cudaMemcpyHostToDevice, int(stream))[0] == 0
    assert ctx.set_input_shape("pixel_values", x.shape)
    assert ctx.set_tensor_address("pixel_values", d_in) and ctx.set_tensor_address(engine.get_tensor_name(1), d_out)
    assert ctx.execute_async_v3(stream_arg)
    assert cudart.cudaMemcpyAsync(out, d_out, out.nbytes, kind.cudaMemcpyDeviceToHost, stream)[0] == 0
    return d_in, d_out


@pytest.mark.parametrize("as_object", [True, False], ids=["stream object", "int handle"])
def test_async_work_lands_only_at_synchronize(gpu, tiny_artifact, as_object):
    from cuda.bindings import runtime as cudart

    trt, engine, ctx = _engine(tiny_artifact)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    out = np.full((3, 64), -7.0, np.float32)
    _, stream = cudart.cudaStreamCreate()
    ptrs = _enqueue(trt, engine, ctx, cudart, x, out, stream, stream if as_object else int(stream))
    assert (out == -7.0).all()  # nothing has run yet: reading now would lose the result
    assert cudart.cudaStreamSynchronize(stream)[0] == 0
    np.testing.assert_allclose(out, _reference(tiny_artifact, x), rtol=1e-4, atol=1e-4)
    for p in ptrs:
        assert cudart.cudaFree(p)[0] == 0
    assert cudart.cudaStreamDestroy(stream)[0] == 0


def test_real_api_forms_are_accepted_and_wrong_types_refused(gpu, tiny_artifact):
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    assert trt.volume((2, 3, 4)) == 24 and trt.volume(()) == 1
    host = np.arange(4, dtype=np.float32)
    _, d = cudart.cudaMalloc(host.nbytes)
    kind = cudart.cudaMemcpyKind
    assert cudart.cudaMemcpyAsync(d, host, host.nbytes, kind.cudaMemcpyHostToDevice, 0)[0] == 0  # default stream
    back = np.zeros(4, np.float32)
    assert cudart.cudaMemcpyAsync(back, d, back.nbytes, kind.cudaMemcpyDeviceToHost, 0)[0] == 0
    assert cudart.cudaStreamSynchronize(0)[0] == 0 and (back == host).all()
    with pytest.raises(TypeError, match="Buffer Protocol"):  # cuda-python's own message
        cudart.cudaMemcpyAsync(d, "host", 16, kind.cudaMemcpyHostToDevice, 0)
    with pytest.raises(TypeError, match="integer is required"):
        cudart.cudaMemcpyAsync(d, host, 16, kind.cudaMemcpyHostToDevice, "stream")
    assert cudart.cudaMemcpyAsync(d, np.zeros(8, np.float32), 32, kind.cudaMemcpyHostToDevice, 0)[0] != 0
    assert gpu.cudart.violations and "16" in gpu.cudart.violations[-1]  # 32 bytes into a 16-byte buffer
    gpu.cudart.violations.clear()
    assert cudart.cudaFree(d)[0] == 0
    _, engine, ctx = _engine(tiny_artifact)
    _, stream = cudart.cudaStreamCreate()
    with pytest.raises(TypeError):
        ctx.execute_async_v3("stream")
    assert stream.getPtr() != int(stream)  # as in cuda-python: the address of the handle, not the handle
    ctx.set_input_shape("pixel_values", (1, 3, 64, 64))
    for n in ("pixel_values", engine.get_tensor_name(1)):
        ctx.set_tensor_address(n, cudart.cudaMalloc(64 * 64 * 3 * 4)[1])
    assert not ctx.execute_async_v3(stream.getPtr())  # not a stream: refused and recorded
    assert gpu.cudart.violations == [f"execute_async_v3 on unknown stream {stream.getPtr()!r}"]
    gpu.cudart.violations.clear()


def test_external_data_needs_the_model_path(gpu, tiny_artifact, tmp_path):
    import tensorrt as trt

    model = onnx.load(str(tiny_artifact / "image_encoder.fp32.onnx"))
    path = tmp_path / "ext" / "encoder.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, location="encoder.onnx.data", size_threshold=0)
    logger = trt.Logger(trt.Logger.WARNING)

    def parser():
        net = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        return trt.OnnxParser(net, logger)

    p = parser()
    assert not p.parse(path.read_bytes()) and "external data" in str(p.get_error(0))
    assert parser().parse(path.read_bytes(), str(path))
    assert parser().parse_from_file(str(path))
    _, engine, ctx = _engine(tiny_artifact, path)  # the weights travel into the engine
    assert engine.num_io_tensors == 2 and ctx is not None


def test_timing_cache_of_another_tensorrt_or_gpu_is_not_attached(gpu, monkeypatch):
    import tensorrt as trt

    config = trt.Builder(trt.Logger()).create_builder_config()
    blob = bytes(config.create_timing_cache(b"").serialize())
    assert config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    for other in (dict(version="10.4.0"), dict(compute_capability=(9, 0))):
        fakes.install(monkeypatch, **other)
        import tensorrt as trt2

        config = trt2.Builder(trt2.Logger()).create_builder_config()
        assert config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False) is False
        assert config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=True)


def test_execution_context_failure_is_none(gpu, tiny_artifact):
    _, engine, _ = _engine(tiny_artifact)
    gpu.trt.context_fails = True
    assert engine.create_execution_context() is None


def test_ort_option_double_rejects_what_onnxruntime_1_18_rejects():
    check = ort_options.check
    check("TensorrtExecutionProvider", {"trt_engine_cache_enable": "True", "trt_timing_cache_path": "/x",
                                        "trt_profile_min_shapes": "pixel_values:1x3x224x224",
                                        "trt_fp16_enable": "False", "device_id": 0})
    check("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": "1073741824"})
    bad = [("TensorrtExecutionProvider", {"trt_engine_cache_enabled": "True"}, "Unknown provider option"),
           ("TensorrtExecutionProvider", {"trt_engine_cache_enable": "yes"}, "Failed to parse"),
           ("TensorrtExecutionProvider", {"trt_profile_min_shapes": "pixel_values:1,3,224,224"}, "Failed to parse"),
           ("TensorrtExecutionProvider", {"trt_fp16_enable": True}, "trt_fp16_enable is on"),
           ("TensorrtExecutionProvider", {"trt_weight_stripped_engine_enable": "1"}, "Unknown"),  # 1.18.1
           ("CUDAExecutionProvider", {"sdpa_kernel": "1"}, "Unknown"),  # 1.19
           ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "FAST"}, "Failed to parse"),
           ("TensorRTExecutionProvider", {}, "Unknown execution provider")]
    for provider, opts, why in bad:
        with pytest.raises(ValueError, match=why):
            check(provider, opts)
