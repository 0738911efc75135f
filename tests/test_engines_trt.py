"""Native TensorRT end to end against the CPU stand-in (tests/fakes): build -> validate -> classify,
stale/unvalidated engines refused, every fused output checked, no leaked streams or buffers, Ctrl-C safe.

The stand-in proves coder's use of the TensorRT 10 / cuda-python APIs, not TensorRT's numerics; the
``gpu``-marked tests at the end run the same flow on a real GPU and skip cleanly without one.
"""

import ast
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coder.cli import EXIT_CODES, app
from coder.doctor import nvidia_gpu_present
from coder.errors import BackendError, StaleEngineError
from tests import fakes

HAS_TRT = importlib.util.find_spec("tensorrt") is not None and nvidia_gpu_present()  # a Jetson has no nvidia-smi
CODE = {cls: code for cls, code, _ in EXIT_CODES}


@pytest.fixture
def gpu(monkeypatch):
    g = fakes.install(monkeypatch)
    yield g
    assert g.cudart.violations == []


@pytest.fixture(scope="module")
def fused_art(tmp_path_factory, tiny_artifact) -> Path:
    """A copy of the tiny artifact with a cifar10 bank storing every ordered pair (the rerank has work)."""
    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = tmp_path_factory.mktemp("trt") / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    t = init_texts("cifar10")
    build_bank(art, dataclasses.replace(t, pairs={(a, b): ("x",) for a in range(10) for b in range(10) if a != b}))
    return art


def _bank(art):
    from coder.manifest import load_artifact
    from coder.runtime.classifier import find_bank
    from coder.text_bank.bank import load_bank

    return load_bank(find_bank(art, None), load_artifact(art))


def _build(art, engine_dir, *extra):
    return CliRunner().invoke(app, ["build-engine", str(art), "--engine-dir", str(engine_dir), "--max-batch", "8",
                                    "--opt-batch", "4", "--json", *extra])


def _loadable(engine_dir: Path) -> list[str]:
    return sorted(p.name for p in engine_dir.glob("*")) if engine_dir.is_dir() else []


# -- the stand-in itself is strict ------------------------------------------------------------------

def test_stand_in_rejects_misuse(gpu, tiny_artifact):
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    for bad in (lambda: builder.build_engine, lambda: setattr(config, "max_workspace_size", 1 << 30),
                lambda: trt.BuilderFlag.STRICT_TYPES_, lambda: config.nonexistent):
        with pytest.raises(AttributeError):
            bad()
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse((tiny_artifact / "image_encoder.fp32.onnx").read_bytes())
    profile = builder.create_optimization_profile()
    profile.set_shape("pixel_values", (1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))
    assert config.add_optimization_profile(profile) == 0
    config.set_flag(trt.BuilderFlag.FP16)  # precision flags and a strongly typed network exclude each other
    assert builder.build_serialized_network(network, config) is None
    config.clear_flag(trt.BuilderFlag.FP16)
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(builder.build_serialized_network(network, config)))
    ctx = engine.create_execution_context()
    with pytest.raises(AttributeError, match="execute_async_v3"):
        ctx.execute_async_v2
    assert ctx.set_input_shape("pixel_values", (2, 3, 64, 64))
    assert not ctx.set_input_shape("pixel_values", (5, 3, 64, 64))  # outside the profile
    assert trt.Runtime(logger).deserialize_cuda_engine(b"not a plan") is None
    _, ptr = cudart.cudaMalloc(16)
    host = np.zeros(8, np.float32)  # 32 bytes into a 16-byte buffer
    assert cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)[0] != 0
    assert cudart.cudaFree(ptr)[0] == 0
    assert cudart.cudaMemcpy(ptr, host.ctypes.data, 16, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)[0] != 0
    assert len(gpu.cudart.violations) == 2
    gpu.cudart.violations.clear()


# -- end to end ------------------------------------------------------------------------------------

def test_build_validate_classify_matches_cpu(gpu, fused_art, tmp_path, sample_images):
    from coder.manifest import load_artifact
    from tests.fakes.tensorrt import read_blob

    res = _build(fused_art, tmp_path / "e")
    assert res.exit_code == 0, res.output
    built = json.loads(res.stdout)
    v = built["validation"]
    assert v["passed"] and v["label_agreement"] == 1.0 and v["failed"] == []
    assert set(v["outputs"]) >= {"embedding", "stage1", "topk_ids", "gap", "rerank", "labels@tau=1.01"}
    path = Path(built["engine"])
    header, _ = read_blob(path.read_bytes())
    assert header["strongly_typed"] and header["builder_flags"] == []
    assert header["profile"]["pixel_values"] == [[1, 3, 64, 64], [4, 3, 64, 64], [8, 3, 64, 64]]
    side = json.loads((path.parent / (path.name + ".json")).read_text())
    assert side["validation"]["passed"] and len(side["validation"]["engine_sha256"]) == 64
    assert load_artifact(fused_art).manifest["engines"][path.name]["validation"]["passed"]
    out = {}
    for name, args in {"native": ["--backend", "tensorrt-native", "--precision", "fp16"],
                       "cpu": ["--backend", "cpu", "--precision", "fp32", "--no-fused-head"]}.items():
        res = CliRunner().invoke(app, ["classify", *map(str, sample_images), "-a", str(fused_art), "--engine-dir",
                                       str(tmp_path / "e"), "--tau", "1.01", "--json", *args])
        assert res.exit_code == 0, res.output
        out[name] = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["backend"] for r in out["native"]] == ["tensorrt-native"] * 3
    for p, q in zip(out["native"], out["cpu"]):
        assert p["label"] == q["label"] and p["top_k"][0] == q["top_k"][0]
        np.testing.assert_allclose(p["stage1_scores"][0], q["stage1_scores"][0], atol=0.05)


def test_thousand_calls_one_stream_no_buffers_left(gpu, fused_art, tmp_path):
    from coder.runtime.classifier import Classifier, EngineOptions

    assert _build(fused_art, tmp_path / "e").exit_code == 0
    gpu.cudart.streams_created = 0
    clf = Classifier.load(fused_art, backend="tensorrt-native", precision="fp16",
                          engines=EngineOptions(str(tmp_path / "e")))
    img = Image.new("RGB", (64, 64), (120, 30, 200))
    with clf:
        for i in range(1000):
            clf.classify([img] * (1 + i % 3))  # growing batches reallocate: the old buffers must be freed
        assert gpu.cudart.streams_created == 1 and len(gpu.cudart.streams) == 1
    assert gpu.cudart.allocs == {} and gpu.cudart.streams == set()
    with pytest.raises(BackendError, match="closed"):
        clf.classify([img])


def test_engine_names_identify_artifact_bank_k_and_target(gpu, fused_art):
    from coder.engines.trt import EngineTarget, engine_path

    def art(sha):
        files = {"image_encoder.fp16.onnx": {"sha256": sha * 64}}
        return SimpleNamespace(root=Path("/a"), manifest={"files": files})

    t = EngineTarget("10.3.0", "8.7")
    b32, l14 = engine_path(art("a"), "fp16", "/e", target=t), engine_path(art("b"), "fp16", "/e", target=t)
    assert b32 != l14 and b32.name == "image_encoder.fp16.e" + "a" * 12 + ".trt10.3.0.sm87.engine"
    assert engine_path(art("a"), "fp16", "/e", target=EngineTarget("10.4.0", "8.7")) != b32
    assert engine_path(art("a"), "fp16", "/e", target=EngineTarget("10.3.0", "9.0")) != b32
    bank = _bank(fused_art)
    other = SimpleNamespace(root=bank.root, class_names=bank.class_names, meta={"npz_sha256": "c" * 64})
    names = {engine_path(art("a"), "fp16", "/e", b, k, t).name for b in (bank, other) for k in (3, 5)}
    assert len(names) == 4 and all(n.startswith("image_head.cifar10.b") for n in names)


def test_stale_engine_raises_in_auto_naming_the_fix(gpu, fused_art, tmp_path, monkeypatch):
    from coder.runtime.classifier import Classifier, EngineOptions

    engines = EngineOptions(str(tmp_path / "e"))
    assert _build(fused_art, tmp_path / "e").exit_code == 0
    assert Classifier.load(fused_art, backend="auto", precision="fp16", engines=engines).backend == "tensorrt-native"
    fakes.install(monkeypatch, version="10.4.0")  # TensorRT upgraded under the engine
    with pytest.raises(StaleEngineError, match="another TensorRT version or GPU.*coder build-engine"):
        Classifier.load(fused_art, backend="auto", precision="fp16", engines=engines)
    res = CliRunner().invoke(app, ["classify", str(fused_art / "manifest.json"), "-a", str(fused_art),
                                   "--precision", "fp16", "--engine-dir", str(tmp_path / "e")])
    assert res.exit_code == CODE[StaleEngineError] and "build-engine" in res.output
    fakes.install(monkeypatch)
    engine = next((tmp_path / "e").glob("*.engine"))
    side = engine.with_name(engine.name + ".json")
    side.write_text(side.read_text().replace('"gpu": "', '"gpu": "other '))
    with pytest.raises(StaleEngineError, match="gpu"):
        Classifier.load(fused_art, backend="auto", precision="fp16", engines=engines)


@pytest.mark.parametrize("tamper", ["no validation", "failed validation", "bytes changed"])
def test_unvalidated_engine_is_refused(gpu, fused_art, tmp_path, tamper):
    from coder.runtime.classifier import Classifier, EngineOptions

    assert _build(fused_art, tmp_path / "e").exit_code == 0
    engine = next((tmp_path / "e").glob("*.engine"))
    side = engine.with_name(engine.name + ".json")
    key = json.loads(side.read_text())
    if tamper == "no validation":
        del key["validation"]
    elif tamper == "failed validation":
        key["validation"]["passed"] = False
    else:
        engine.write_bytes(engine.read_bytes() + b"\0")
    side.write_text(json.dumps(key))
    with pytest.raises(StaleEngineError, match="validat"):
        Classifier.load(fused_art, backend="auto", precision="fp16", engines=EngineOptions(str(tmp_path / "e")))


def test_rebuild_stale_validates(gpu, fused_art, tmp_path):
    from coder.runtime.classifier import Classifier, EngineOptions

    assert _build(fused_art, tmp_path / "e").exit_code == 0
    engine = next((tmp_path / "e").glob("*.engine"))
    side = engine.with_name(engine.name + ".json")
    side.write_text(side.read_text().replace('"gpu": "', '"gpu": "other '))
    rebuild = EngineOptions(str(tmp_path / "e"), rebuild_stale=True)
    gpu.trt.corrupt_outputs = {"rerank": 1.0}  # the rebuilt engine is miscompiled
    with pytest.raises(BackendError, match="failed validation on rerank"):
        Classifier.load(fused_art, backend="tensorrt-native", precision="fp16", engines=rebuild)
    with pytest.raises(StaleEngineError):  # the stale engine stays refused; nothing new was installed
        Classifier.load(fused_art, backend="tensorrt-native", precision="fp16",
                        engines=EngineOptions(str(tmp_path / "e")))
    gpu.trt.corrupt_outputs = {}
    with Classifier.load(fused_art, backend="tensorrt-native", precision="fp16", engines=rebuild) as clf:
        assert clf.backend == "tensorrt-native"
    assert json.loads(side.read_text())["validation"]["passed"]


@pytest.mark.parametrize("output,delta", [("embedding", 5.0), ("stage1", 5.0), ("topk_ids", 0), ("gap", 0.5),
                                          ("rerank", 1.0)])
def test_fused_validation_checks_every_output(gpu, fused_art, tmp_path, output, delta):
    from coder.engines.trt import BuildOptions
    from coder.runtime.engine_build import build_image_engine

    gpu.trt.corrupt_outputs = {output: delta}
    with pytest.raises(BackendError, match=f"failed validation on .*{output}"):
        build_image_engine(fused_art, BuildOptions(max_batch=8, opt_batch=4), tmp_path / "e", _bank(fused_art), 5)
    assert _loadable(tmp_path / "e") == []


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_build_or_validation_leaves_nothing_loadable(gpu, fused_art, tmp_path, signum, code):
    from coder.runtime.classifier import Classifier, EngineOptions

    steps = []
    gpu.trt.build_step_hook = lambda step: steps.append(step) or (step == 1 and os.kill(os.getpid(), signum))
    res = _build(fused_art, tmp_path / "e")
    assert res.exit_code == code and _loadable(tmp_path / "e") == []
    assert max(steps) < 3  # the held signal made the progress monitor cancel the build at the next step
    gpu.trt.build_step_hook, gpu.trt.interrupt_execution_at = None, 2  # Ctrl-C while validating
    res = _build(fused_art, tmp_path / "e")
    assert res.exit_code == 130 and _loadable(tmp_path / "e") == []
    assert Classifier.load(fused_art, backend="auto", precision="fp16",
                           engines=EngineOptions(str(tmp_path / "e"))).backend == "cpu"


def test_plain_engine_and_validation_without_bank(gpu, tiny_artifact, tmp_path):
    from coder.engines.trt import BuildOptions
    from coder.manifest import load_artifact
    from coder.runtime.encoder import ImageEncoder
    from coder.runtime.engine_build import build_image_engine, validate_engine

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    built = build_image_engine(art, BuildOptions(max_batch=8, opt_batch=4))
    assert built.validation.passed and built.validation.top1_agreement is None
    assert built.path.parent == art / "engines" and "trt10.3.0.sm87" in built.path.name
    with ImageEncoder.load_trt(art, "fp16") as enc:
        assert enc.backend == "tensorrt-native"
        assert enc.encode_pixels(np.zeros((9, 3, 64, 64), np.float32)).shape == (9, 64)  # 2 calls of <= 8
    fp16 = ImageEncoder.load(art, "fp16", "cpu").engine
    noise = np.random.default_rng(0)
    bad = SimpleNamespace(run=lambda x: fp16.run(x) + noise.standard_normal((len(x), 64)))
    v = validate_engine(bad, load_artifact(art))
    assert not v.passed and v.failed == ("embedding",)


def test_bench_gpu_rows_are_not_a_share_of_the_cpu_peak(gpu, tiny_artifact, tmp_path):
    from coder.bench import run_bench
    from coder.engines.trt import BuildOptions
    from coder.runtime.engine_build import build_image_engine

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    build_image_engine(art, BuildOptions(max_batch=8, opt_batch=4))
    rows = run_bench(art, batches=(2,), repeats=2, backends=("cpu",), with_torch=False)["rows"]
    native = [r for r in rows if r["backend"].startswith("tensorrt-native") and r["stage"] == "encoder"]
    cpu = [r for r in rows if r["backend"].startswith("ort-cpu") and r["stage"] == "encoder"]
    assert native and all(r["pct_of_matmul_peak"] is None for r in native)
    assert cpu and all(r["pct_of_matmul_peak"] is not None for r in cpu)
    assert gpu.cudart.allocs == {} and gpu.cudart.streams == set()  # bench closed the engine


def test_gpu_check_script_runs_end_to_end_on_the_stand_in(fused_art, tmp_path):
    """benchmarks/gpu_check.sh with `coder` = the CLI with the stand-ins: the ONNX Runtime GPU backends fail
    here (no GPU build), the native engine is built, validated, classifies like the CPU, and bench runs."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    wrapper = tmp_path / "coder"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m tests.fakes.run_coder \"$@\"\n")
    wrapper.chmod(0o755)
    art = tmp_path / "art"
    shutil.copytree(fused_art, art, ignore=shutil.ignore_patterns("engines"))
    env = {**os.environ, "CODER": str(wrapper), "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path / "out"),
           "GPU_CHECK_BENCH_ARGS": "--batches 1 --repeats 2 --no-torch", "GPU_CHECK_PYTEST": "0",
           "PYTHONPATH": str(root)}
    res = subprocess.run(["bash", str(root / "benchmarks/gpu_check.sh"), str(art)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    lines = {line.split("  ")[0]: line for line in res.stdout.splitlines()}
    assert res.returncode == 1 and "failed: classify cuda (fp16) classify tensorrt (fp16)" in res.stdout, res.stdout
    for ok in ("doctor", "build-engine (fp16)", "classify cpu (fp32)", "classify tensorrt-native (fp16)", "bench"):
        assert lines[ok].endswith("ok"), res.stdout
    assert "tensorrt-native  backend reported ['tensorrt-native']: 16/16 labels equal" in res.stdout
    assert "labels equal" not in res.stdout.split("failed:")[-1]
    assert f"to report: this summary, {tmp_path / 'out'}/doctor.json" in res.stdout


# -- what the real libraries report, handled --------------------------------------------------------

def test_external_data_encoder_builds_and_runs(gpu, tiny_artifact, tmp_path):
    """An encoder over 2 GB (or a fused graph) keeps its weights in external data: the parser needs the path."""
    import onnx

    from coder.engines.trt import BuildOptions, build_engine_trt, open_engine

    onnx_path = tmp_path / "art" / "image_encoder.fp32.onnx"
    onnx_path.parent.mkdir()
    onnx.save(onnx.load(str(tiny_artifact / "image_encoder.fp32.onnx")), str(onnx_path), save_as_external_data=True,
              location="image_encoder.fp32.onnx.data", size_threshold=0)
    build_engine_trt(onnx_path, tmp_path / "e.engine", BuildOptions("fp32", 1, 2, 4))
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    import onnxruntime as ort

    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
    with open_engine(tmp_path / "e.engine") as enc:
        np.testing.assert_allclose(enc.run(x), want, rtol=1e-4, atol=1e-4)


def test_timing_cache_of_another_tensorrt_is_refused_and_kept(gpu, tiny_artifact, tmp_path, monkeypatch):
    from coder.engines.trt import BuildOptions, build_engine_trt

    onnx_path = tiny_artifact / "image_encoder.fp32.onnx"
    cache = tmp_path / "timing.cache"
    build_engine_trt(onnx_path, tmp_path / "a.engine", BuildOptions("fp32", 1, 2, 4, timing_cache=cache))
    before = cache.read_bytes()
    fakes.install(monkeypatch, version="10.4.0")  # TensorRT upgraded: TensorRT refuses the old cache
    with pytest.raises(BackendError, match="timing cache .* another TensorRT/GPU"):
        build_engine_trt(onnx_path, tmp_path / "b.engine", BuildOptions("fp32", 1, 2, 4, timing_cache=cache))
    assert not (tmp_path / "b.engine").exists() and cache.read_bytes() == before


def test_no_execution_context_is_a_typed_error(gpu, tiny_artifact, tmp_path):
    from coder.engines.trt import BuildOptions, build_engine_trt, open_engine

    build_engine_trt(tiny_artifact / "image_encoder.fp32.onnx", tmp_path / "e.engine", BuildOptions("fp32", 1, 2, 4))
    gpu.trt.context_fails = True  # TensorRT returns None, e.g. when the context's device memory is not there
    with pytest.raises(BackendError, match="execution context"):
        open_engine(tmp_path / "e.engine")
    assert gpu.cudart.allocs == {} and gpu.cudart.streams == set()


def test_input_dtype_comes_from_the_engine_not_fp32(gpu, tmp_path):
    """Precision is the graph's: an engine whose input is fp16 gets fp16 bytes (nothing assumes float32/fp16)."""
    import onnx
    from onnx import TensorProto, helper

    from coder.engines.trt import BuildOptions, build_engine_trt, open_engine

    graph = helper.make_graph(
        [helper.make_node("Cast", ["pixel_values"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["embedding"], axes=[2, 3], keepdims=0)], "g",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT16, ["B", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", 3])])
    path = tmp_path / "half_input.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    build_engine_trt(path, tmp_path / "e.engine", BuildOptions("fp16", 1, 2, 4))
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with open_engine(tmp_path / "e.engine") as enc:
        got = enc.run(x)
    np.testing.assert_allclose(got, x.astype(np.float16).astype(np.float32).mean(axis=(2, 3)), rtol=1e-3, atol=1e-3)


def test_int8_is_a_precision_like_the_others(gpu, tiny_artifact):
    """Engine names, keys and recorded build options carry any precision: int8 engines need no special case."""
    from coder.engines.trt import BuildOptions, engine_path, expected_key, options_from_key
    from coder.manifest import load_artifact

    art = load_artifact(tiny_artifact)
    path = engine_path(art, "int8", "/e")
    assert ".int8.e" in path.name and path != engine_path(art, "fp16", "/e")
    key = expected_key(art.encoder("image", "int8"), BuildOptions("int8"))
    assert key["precision"] == "int8" and options_from_key(path, "int8").precision == "int8"


# -- one near-tie rule: engine validation and benchmarks/gpu_check.sh ----------------------------------

def _record(label, top_k, s1, gap, reranked=False, cands=(), r=()):
    return {"file": "x.jpg", "label": label, "top_k": list(top_k), "stage1_scores": list(s1), "gap": gap,
            "reranked": reranked, "rerank_candidates": list(cands), "rerank_scores": list(r), "error": None}


def test_label_comparison_accepts_near_ties_only():
    from coder.runtime.engine_build import compare_labels

    ref = [_record(3, (3, 5), (21.0000, 20.9995), 0.0001),  # stage-1 near-tie: the other backend may pick 5
           _record(1, (1, 2), (30.0, 10.0), 0.9),  # clear decision
           _record(4, (4, 6), (25.0, 24.0), 0.2995, True, (4, 6), (0.5, 0.1))]  # gap at tau = 0.3: gate may flip
    other = [_record(5, (5, 3), (21.0002, 21.0001), 0.00002),
             _record(2, (2, 1), (30.1, 29.9), 0.01),
             _record(6, (4, 6), (25.0005, 24.0), 0.3004)]
    c = compare_labels(ref, other, tau=0.3)
    assert (c.total, c.equal, c.near_ties) == (3, 0, 2) and not c.passed
    assert c.differ == (("x.jpg", 1, 2),)
    assert compare_labels(ref, ref, 0.3).passed and compare_labels(ref, other[:2] + ref[2:3], 0.3).near_ties == 1
    assert not compare_labels(ref, ref[:2], 0.3).passed  # an image missing is a failure


def test_validation_and_gpu_check_share_the_rule(gpu, fused_art, tmp_path, monkeypatch):
    from coder.engines.trt import BuildOptions
    from coder.runtime import engine_build

    calls = []
    real = engine_build.near_tie
    monkeypatch.setattr(engine_build, "near_tie", lambda *a: calls.append(a) or real(*a))
    engine_build.build_image_engine(fused_art, BuildOptions(max_batch=8, opt_batch=4), tmp_path / "e",
                                    _bank(fused_art), 5)
    assert len(calls) == 2  # the bank's tau and the rerank forced on
    script = (Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh").read_text()
    assert "from coder.runtime.engine_build import compare_labels" in script and "!= b.get(\"label\")" not in script


def test_engines_layer_imports_no_runtime():
    """engines/ is the bottom layer: sessions and engine files, never the runtime above it."""
    for path in (Path(__file__).parents[1] / "coder" / "engines").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(("runtime", "coder.runtime")), f"{path}: {node.module}"
                assert not (node.level == 2 and (node.module or "").split(".")[0] in ("runtime", "cli", "deploy"))


# -- no TensorRT here (without the stand-in) -------------------------------------------------------

@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_is_a_typed_error(tiny_artifact, tmp_path):
    from coder.engines.trt import BuildOptions, build_engine_trt

    with pytest.raises(BackendError, match=r"coder\[trt\]|cuda-python"):
        build_engine_trt(tiny_artifact / "image_encoder.fp16.onnx", tmp_path / "x.engine", BuildOptions())
    for args in (["build-engine", str(tiny_artifact)], ["export", "--engine", "tensorrt", "--out", str(tmp_path)]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == CODE[BackendError] and "coder[trt]" in res.output
    assert not (tmp_path / "manifest.json").exists()  # refused before exporting anything


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_auto_skips_native_without_an_engine_or_without_tensorrt(tiny_artifact, tmp_path):
    from coder.engines.trt import engine_stem
    from coder.errors import ConfigError
    from coder.manifest import load_artifact
    from coder.runtime.classifier import Classifier, EngineOptions, open_image_encoder

    assert open_image_encoder(tiny_artifact, "auto", "fp32", None).backend == "cpu"
    stem = engine_stem(load_artifact(tiny_artifact), "fp32")
    (tmp_path / f"{stem}.trt10.3.0.sm87.engine").write_bytes(b"plan")  # built here, TensorRT since removed
    enc = open_image_encoder(tiny_artifact, "auto", "fp32", None, engines=EngineOptions(str(tmp_path)))
    assert enc.backend == "cpu"  # reported truthfully; TensorRT cannot load, so it is not a stale engine
    with pytest.raises(ConfigError, match="tensorrt-native"):
        Classifier.load(tiny_artifact, backend="tensorrt-nativ")


# -- a real GPU ------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs a CUDA GPU with TensorRT and cuda-python")
def test_real_gpu_build_validate_classify(fused_art, tmp_path, sample_images):
    from coder.runtime.classifier import Classifier, EngineOptions

    res = _build(fused_art, tmp_path / "e")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["validation"]["passed"]
    engines = EngineOptions(str(tmp_path / "e"))
    with Classifier.load(fused_art, backend="tensorrt-native", precision="fp16", tau=1.01, engines=engines) as native:
        cpu = Classifier.load(fused_art, backend="cpu", precision="fp32", tau=1.01, fused_head=False)
        for p, q in zip(native.classify(sample_images), cpu.classify(sample_images)):
            assert p.label == q.label
            np.testing.assert_allclose(p.stage1_scores[0], q.stage1_scores[0], atol=5e-2)

