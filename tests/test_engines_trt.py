"""Native TensorRT: skipped cleanly without a GPU; without TensorRT the error is typed and names the fix.

The engine validation and manifest record are TensorRT-free and run everywhere (an fp16 ONNX
Runtime session stands in for the engine).
"""

import importlib.util
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from coder.cli import EXIT_CODES, app
from coder.errors import BackendError, StaleEngineError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and shutil.which("nvidia-smi") is not None
CODE = {cls: code for cls, code, _ in EXIT_CODES}


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_is_a_typed_error(tiny_artifact, tmp_path):
    from coder.engines.trt import BuildOptions, build_engine_trt

    with pytest.raises(BackendError, match=r"coder\[trt\]|cuda-python"):
        build_engine_trt(tiny_artifact / "image_encoder.fp16.onnx", tiny_artifact / "x.engine", BuildOptions())
    for args in (["build-engine", str(tiny_artifact)], ["export", "--engine", "tensorrt", "--out", str(tmp_path)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == CODE[BackendError] and "coder[trt]" in res.output
    assert not (tmp_path / "manifest.json").exists()  # refused before exporting anything


def test_validation_passes_fp16_and_catches_a_broken_engine(tiny_artifact, tmp_path):
    from coder.engines.engine_build import record_engine, validate_engine
    from coder.manifest import load_artifact
    from coder.runtime.encoder import ImageEncoder

    art = load_artifact(tiny_artifact)
    fp16 = ImageEncoder.load(tiny_artifact, "fp16", "cpu")
    good = validate_engine(fp16.engine.run, art)
    assert good.passed and good.min_cosine >= 0.999 and good.images == 16 and good.top1_agreement is None
    noise = np.random.default_rng(0)
    bad = validate_engine(lambda x: fp16.engine.run(x) + noise.standard_normal((len(x), art.embed_dim)), art)
    assert not bad.passed and bad.min_cosine < 0.999
    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact, copy, ignore=shutil.ignore_patterns("banks"))
    record_engine(copy, copy / "engines" / "image_encoder.fp16.engine", {"tensorrt": "x"}, good)
    entry = load_artifact(copy).manifest["engines"]["image_encoder.fp16.engine"]
    assert entry["validation"]["passed"] and entry["key"] == {"tensorrt": "x"}


def test_auto_skips_native_without_an_engine_and_rejects_unknown_backends(tiny_artifact):
    from coder.errors import ConfigError
    from coder.runtime.classifier import open_image_encoder

    assert open_image_encoder(tiny_artifact, "auto", "fp32", None).backend == "cpu"
    from coder.runtime.classifier import Classifier

    with pytest.raises(ConfigError, match="tensorrt-native"):
        Classifier.load(tiny_artifact, backend="tensorrt-nativ")



@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs a CUDA GPU with TensorRT and cuda-python")
def test_build_run_and_stale(tiny_artifact, tmp_path):
    from coder.engines.trt import BuildOptions, build_engine_trt, load_engine_trt
    from coder.engines.trt_key import sidecar
    from coder.runtime.encoder import ImageEncoder

    onnx = tiny_artifact / "image_encoder.fp16.onnx"
    engine = tmp_path / "image_encoder.fp16.engine"
    opts = BuildOptions(max_batch=8, opt_batch=4, timing_cache=tmp_path / "timing.cache")
    build_engine_trt(onnx, engine, opts)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    enc = load_engine_trt(engine, onnx, "fp16")
    assert enc.max_batch == 8
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    ref = ImageEncoder.load(tiny_artifact, "fp32").engine.run(x)
    got = enc.run(x)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999
    with pytest.raises(BackendError, match="outside the engine profile"):
        enc.run(np.zeros((9, 3, 64, 64), np.float32))
    text = sidecar(engine).read_text().replace('"tensorrt": "', '"tensorrt": "0.')
    sidecar(engine).write_text(text)
    with pytest.raises(StaleEngineError, match="tensorrt"):
        load_engine_trt(engine, onnx, "fp16")
    assert load_engine_trt(engine, onnx, "fp16", rebuild_stale=True).max_batch == 8
    engine.write_bytes(b"garbage")
    sidecar(engine).write_text(sidecar(engine).read_text())
    with pytest.raises(StaleEngineError, match="deserialise"):
        load_engine_trt(engine, onnx, "fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs a CUDA GPU with TensorRT and cuda-python")
def test_fused_engine_classifier_matches_cpu(tiny_artifact, tmp_path, sample_images):
    """build-engine with the bank's head fused, recorded in the manifest; same labels as ONNX Runtime CPU."""
    import dataclasses

    from coder.manifest import load_artifact
    from coder.runtime.classifier import Classifier, EngineOptions
    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    t = init_texts("cifar10")
    build_bank(art, dataclasses.replace(t, pairs={(a, b): ("x",) for a in range(10) for b in range(10) if a != b}))
    res = CliRunner().invoke(app, ["build-engine", str(art), "--max-batch", "8", "--opt-batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    entry = load_artifact(art).manifest["engines"]["image_head.cifar10.fp16.k5.engine"]
    assert entry["validation"]["passed"] and entry["validation"]["top1_agreement"] == 1.0
    native = Classifier.load(art, backend="tensorrt-native", precision="fp16", tau=1.01)
    auto = Classifier.load(art, backend="auto", precision="fp16", tau=1.01, engines=EngineOptions())
    cpu = Classifier.load(art, backend="cpu", precision="fp32", tau=1.01)
    assert native.backend == auto.backend == "tensorrt-native"
    for p, q in zip(native.classify(sample_images), cpu.classify(sample_images)):
        assert p.top_k[:1] == q.top_k[:1]
        np.testing.assert_allclose(p.stage1_scores, q.stage1_scores, atol=5e-2)
