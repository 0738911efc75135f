"""OpenVINO backend: parity with ONNX Runtime fp32, the backend string says what ran, the compiled-model
cache folder (and its fallback for a read-only artifact), the gated bf16 hint and its cached verdict."""

import warnings

import numpy as np
import pytest

ov_module = pytest.importorskip("openvino")

from coder.engines import openvino as ov  # noqa: E402
from coder.errors import BackendError, ConfigError  # noqa: E402
from coder.manifest import load_artifact  # noqa: E402
from coder.runtime import openvino_precision as gate_mod  # noqa: E402
from coder.runtime.openvino_precision import PrecisionGate, choose_hint  # noqa: E402


@pytest.fixture
def art(tiny_fp32_artifact, private_copy):
    """A private copy (caches are written into it) and a private user cache."""
    return private_copy(tiny_fp32_artifact, "engines", ".coder-cpu-choice")


def _x(art_dir, n=3):
    a = load_artifact(art_dir)
    return np.random.default_rng(0).standard_normal((n, 3, *a.preprocess.size)).astype(np.float32)


def test_f32_matches_onnx_runtime_fp32(art):
    from coder.engines.ort import load_ort

    path = load_artifact(art).encoder("image", "fp32")
    x = _x(art)
    want = load_ort(path, "cpu").run(x)
    enc = ov.load_openvino(path, "openvino", "f32")
    got = enc.run(x)
    assert enc.backend == "openvino-f32" and enc.providers == ["openvino:CPU"]
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    assert np.allclose(enc.run(x[:1]), got[:1], atol=1e-5)  # batch-independent


def test_bucket_is_the_next_power_of_two_capped_at_the_max_batch():
    assert [ov.bucket(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 64, 65)] == [1, 1, 2, 4, 4, 8, 8, 16, 64, 128]
    assert [ov.bucket(n, 48) for n in (1, 20, 33, 48, 49)] == [1, 32, 48, 48, 64]


def test_an_int8_encoder_takes_an_empty_batch_and_names_a_failed_compile(art, monkeypatch):
    enc = ov.load_openvino(load_artifact(art).encoder("image", "fp32"), "openvino", "f32", int8=True)
    x = _x(art, 3)
    assert enc.run(x[:0]).shape == (0, enc.run(x[:1]).shape[1])

    class NoMemory:  # OpenVINO's own core, except that compiling fails
        def __getattr__(self, name):
            return getattr(real, name)

        def compile_model(self, *a, **k):
            raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\nout of memory")

    real = ov.core()
    monkeypatch.setattr(ov, "core", lambda: NoMemory())
    with pytest.raises(BackendError, match=r"could not compile image_encoder.fp32.onnx at batch 4 for CPU: .*out of memory"):
        enc.run(x)
    assert enc.run(x[:1]).shape[0] == 1  # what was compiled still runs


def test_int8_batches_run_on_static_compiles_and_an_image_does_not_depend_on_its_batch(art):
    path = load_artifact(art).encoder("image", "fp32")
    enc = ov.load_openvino(path, "openvino", "f32", int8=True)
    assert enc.static and enc.batches == (1,)  # batch 1 is compiled at load
    x = _x(art, 5)
    got = enc.run(x)  # padded to 8 rows, 5 returned
    assert got.shape[0] == 5 and enc.batches == (1, 8)
    b, compiled = enc.compiled(5)
    assert b == 8 and compiled.inputs[0].get_partial_shape().is_static
    assert list(compiled.inputs[0].get_partial_shape())[0].get_length() == 8
    alone = np.concatenate([enc.run(x[i:i + 1]) for i in range(5)])
    assert np.abs(alone - got).max() <= 1e-5 and np.abs(enc.run(x[:3]) - got[:3]).max() <= 1e-5
    assert enc.batches == (1, 8, 4)
    plain = ov.load_openvino(path, "openvino", "f32")  # other precisions: one dynamic-batch compile
    assert not plain.static and plain.run(x).shape[0] == 5 and plain.batches == (None,)
    assert np.abs(plain.run(x) - got).max() <= 1e-4 * max(1.0, float(np.abs(got).max()))


def test_a_load_error_names_openvinos_reason_not_where_it_raised(tmp_path):
    bad = tmp_path / "image_encoder.fp32.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BackendError) as e:  # OpenVINO's message starts with "Exception from src/...cpp:NN:"
        ov.load_openvino(bad, "openvino", "f32")
    assert str(e.value).startswith("backend 'openvino': OpenVINO could not compile image_encoder.fp32.onnx for CPU: ")
    assert "Exception from" not in str(e.value)
    assert "\n" not in str(e.value)


def test_a_model_with_another_dynamic_dimension_compiles_as_it_is():
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "t"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    enc = ov.load_openvino(model.SerializeToString(), "openvino", "f32", int8=True)
    x = np.array([[-1.0, 2.0, 3.0], [4.0, -5.0, 6.0], [1.0, 1.0, -1.0]], np.float32)
    assert np.array_equal(enc.run(x), np.maximum(x, 0)) and enc.run(x[:, :2]).shape == (3, 2)
    assert enc.batches == (None,)
    summed = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "g",  # no batch out
                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    enc = ov.load_openvino(helper.make_model(summed, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                           "openvino", "f32", int8=True)
    assert np.isclose(float(enc.run(x)), float(x.sum())) and enc.batches == (None,)


@pytest.mark.skipif(ov.reduced_hint("CPU") != "bf16", reason="this CPU has no BF16")
def test_bf16_hint_is_reported_and_close(art):
    path = load_artifact(art).encoder("image", "fp32")
    x = _x(art)
    ref, enc = ov.load_openvino(path, "openvino", "f32").run(x), ov.load_openvino(path, "openvino", "bf16")
    got = enc.run(x)
    assert enc.backend == "openvino-bf16"
    cos = np.sum(got * ref, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(got, ref)  # really ran in bf16


def test_cache_folder_under_the_artifact_keyed_by_model_version_device(art):
    a = load_artifact(art)
    path = a.encoder("image", "fp32")
    sha = a.manifest["files"][path.name]["sha256"]
    assert not (art / "engines").exists()
    enc = ov.load_openvino(path, "openvino", "f32")
    want = art / "engines" / "openvino" / f"image_encoder.fp32-{sha[:16]}-ov{ov.version()}-CPU"
    assert enc.cache_dir == want and want.is_dir()
    assert any(want.iterdir())  # OpenVINO wrote the compiled model there
    again = ov.load_openvino(path, "openvino", "f32")
    assert np.array_equal(again.run(_x(art, 1)), enc.run(_x(art, 1)))


def test_read_only_artifact_falls_back_to_the_user_cache(art, tmp_path):
    (art / "engines").write_text("not a directory")  # nothing can be created under it, even as root
    path = load_artifact(art).encoder("image", "fp32")
    enc = ov.load_openvino(path, "openvino", "f32")
    assert enc.cache_dir is not None and enc.cache_dir.is_relative_to(tmp_path / "xdg" / "coder" / "openvino")
    assert enc.cache_dir.name.endswith("-CPU") and enc.cache_dir.is_dir()


def test_nothing_writable_runs_uncached(art, monkeypatch):
    (art / "engines").write_text("x")
    (art / "xdg-file").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(art / "xdg-file"))
    enc = ov.load_openvino(load_artifact(art).encoder("image", "fp32"), "openvino", "f32")
    assert enc.cache_dir is None and enc.run(_x(art, 1)).shape[0] == 1


def test_device_names_and_missing_devices(art):
    assert ov.device_of("openvino") == "CPU" and ov.device_of("openvino:GPU") == "GPU"
    with pytest.raises(BackendError, match="choose one of"):
        ov.device_of("openvino:TPU")
    path = load_artifact(art).encoder("image", "fp32")
    for dev in ("GPU", "NPU"):
        if dev not in ov.core().available_devices:
            with pytest.raises(BackendError, match=f"no {dev} device"):
                ov.load_openvino(path, f"openvino:{dev}", "f32")


def test_classifier_options_accept_openvino_backends():
    from coder.runtime.classifier import ClassifierOptions

    for b in ("openvino", "openvino:GPU", "openvino:NPU"):
        assert ClassifierOptions("a", backend=b).backend == b
    with pytest.raises(ConfigError, match="openvino:GPU"):
        ClassifierOptions("a", backend="openvino:TPU")


def _counting_gate(passed: bool, calls: list):
    def gate(art, path, hint, device, threads):
        calls.append(hint)
        return PrecisionGate(hint, device, 16, 0.9999 if passed else 0.98, 1.0, passed)
    return gate


def test_reduced_hint_only_after_the_gate_and_the_verdict_is_cached(art, monkeypatch):
    monkeypatch.setattr(ov, "reduced_hint", lambda device="CPU": "bf16")
    a, calls = load_artifact(art), []
    assert choose_hint(a, "fp32", "openvino", gate=_counting_gate(True, calls))[0] == "bf16"
    assert choose_hint(a, "fp32", "openvino", gate=_counting_gate(False, calls))[0] == "bf16"  # cached verdict
    assert calls == ["bf16"]
    files = list((art / "engines" / "openvino").glob("*/gate-bf16-*.json"))
    assert len(files) == 1
    d = __import__("json").loads(files[0].read_text())
    assert d["format"] == "coder.openvino-precision-gate" and d["format_version"] == 2 and d["gate"]["passed"]
    files[0].unlink()
    hint, verdict = choose_hint(a, "fp32", "openvino", gate=_counting_gate(False, calls))
    assert (hint, verdict.passed, calls) == ("f32", False, ["bf16", "bf16"])


def test_no_gate_without_a_reduced_precision_or_for_exported_reduced_files(art, monkeypatch):
    calls = []
    monkeypatch.setattr(ov, "reduced_hint", lambda device="CPU": None)
    assert choose_hint(load_artifact(art), "fp32", "openvino", gate=_counting_gate(True, calls)) == ("f32", None)
    monkeypatch.setattr(ov, "reduced_hint", lambda device="CPU": "bf16")
    assert choose_hint(load_artifact(art), "fp16", "openvino", gate=_counting_gate(True, calls)) == ("f32", None)
    assert calls == []


def test_gate_on_a_read_only_artifact_is_kept_per_call(art, monkeypatch):
    monkeypatch.setattr(ov, "reduced_hint", lambda device="CPU": "bf16")
    (art / "engines").write_text("x")
    (art / "xdg-file").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(art / "xdg-file"))
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no write is attempted, so no warning either
        assert choose_hint(load_artifact(art), "fp32", "openvino", gate=_counting_gate(True, calls))[0] == "bf16"


def test_gate_falls_back_to_the_user_cache(art, tmp_path, monkeypatch):
    monkeypatch.setattr(ov, "reduced_hint", lambda device="CPU": "bf16")
    (art / "engines").write_text("x")
    calls = []
    for _ in range(2):
        choose_hint(load_artifact(art), "fp32", "openvino", gate=_counting_gate(True, calls))
    assert calls == ["bf16"] and list((tmp_path / "xdg").rglob("gate-bf16-*.json"))


def test_real_gate_measures_cosine_and_top1(art):
    a = load_artifact(art)
    v = gate_mod.run_gate(a, a.encoder("image", "fp32"), "f32", "CPU")  # f32 vs f32: must pass exactly
    assert v.images == gate_mod.GATE_SCENES and v.min_cosine > 0.99999 and v.top1_agreement == 1.0 and v.passed


def test_backend_string_through_the_encoder_and_classifier(art, monkeypatch):
    from coder.runtime.classifier import Classifier
    from coder.runtime.encoder import ImageEncoder

    monkeypatch.setattr(gate_mod, "run_gate", _counting_gate(False, []))  # this machine: bf16 refused
    monkeypatch.setattr(ov, "reduced_hint", lambda device="CPU": "bf16")
    enc = ImageEncoder.load(art, "fp32", "openvino")
    assert enc.backend == "openvino-f32"
    ref = Classifier.load(art, backend="cpu")
    clf = Classifier.load(art, backend="openvino")
    assert clf.backend == "openvino-f32" and clf.encoder.head.backend == "cpu"  # head: ONNX Runtime, 1 thread
    x = _x(art, 4)
    got, want = clf.classify_pixels(x), ref.classify_pixels(x)
    assert [p.label for p in got] == [p.label for p in want] and {p.backend for p in got} == {"openvino-f32"}
    assert np.allclose([p.stage1_scores for p in got], [p.stage1_scores for p in want], atol=1e-3)
    plain = Classifier.load(art, backend="openvino", fused_head=False)
    assert [p.label for p in plain.classify_pixels(x)] == [p.label for p in want]


def test_probe_reports_cpu():
    assert ov.probe_openvino()["openvino"].startswith("ok")


def test_the_extra_pulls_neither_torch_nor_an_onnx_runtime():
    import importlib.metadata as md
    import re

    below = {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in md.requires("openvino") or []
             if "extra ==" not in r}
    assert not below & {"torch", "onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"}, below


def test_cli_classify_and_embed_with_openvino(art, sample_images, monkeypatch):
    import json
    import subprocess
    import sys

    from typer.testing import CliRunner

    from coder.cli import app
    from coder.cli.common import EXIT_CODES

    monkeypatch.setattr(gate_mod, "run_gate", _counting_gate(True, []))
    res = CliRunner().invoke(app, ["classify", str(sample_images[0]), "-a", str(art), "--backend", "openvino",
                                   "--json"])
    assert res.exit_code == 0, res.output
    want = "openvino-" + (ov.reduced_hint("CPU") or "f32")  # the (injected) gate passed: the reduced hint ran
    assert json.loads(res.stdout.splitlines()[0])["backend"] == want
    res = CliRunner().invoke(app, ["embed", str(sample_images[0]), "-a", str(art), "--backend", "openvino", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["backend"] == want
    if "NPU" not in ov.core().available_devices:  # a subprocess: one line, exit 6
        proc = subprocess.run([sys.executable, "-m", "coder", "classify", str(sample_images[0]), "-a", str(art),
                               "--backend", "openvino:NPU"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == next(c for cls, c, _ in EXIT_CODES if cls is BackendError), proc.stderr
        assert "no NPU device" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bench_rows_for_every_openvino_precision(art):
    from coder.bench import run_bench

    res = run_bench(art, batches=(1,), repeats=2, backends=("cpu",), with_torch=False)
    enc = {r["backend"]: r for r in res["rows"] if r["stage"] == "encoder"}
    assert enc["openvino-f32 fp32"]["pct_of_matmul_peak"] > 0
    reduced = ov.reduced_hint("CPU")
    if reduced == "bf16":  # its percentage is of OpenVINO's bf16 GEMM peak, measured in the same run
        row, peak = enc["openvino-bf16 fp32"], res["matmul_peak_gflops_by_precision"]["bf16"]
        assert abs(row["pct_of_matmul_peak"] - 100 * res["image_gflop"] * row["images_per_s"] / peak) < 1e-6
    assert any(r["backend"].startswith("openvino-") and r["backend"].endswith("fused head") for r in res["rows"])
    assert res["auto_cpu"]["backend"] == "cpu" and not res["auto_cpu"]["measured"]  # conftest pins ONNX Runtime


def test_head_runs_on_openvino_where_onnx_runtime_is_missing(art, monkeypatch):
    from coder.runtime import fused
    from coder.runtime.classifier import find_bank
    from coder.text_bank.bank import load_bank

    a = load_artifact(art)
    bank = load_bank(find_bank(a.root, None), a)
    feats = np.random.default_rng(3).standard_normal((4, a.embed_dim)).astype(np.float32)
    want = fused.load_head(bank, 5, "openvino").run_all(feats)
    real = fused.importlib.util.find_spec
    monkeypatch.setattr(fused.importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    head = fused.load_head(bank, 5, "openvino")
    assert head.backend == "openvino-f32"
    got = head.run_all(feats)
    assert np.array_equal(got[2], want[2]) and all(np.allclose(g, w, atol=1e-4) for g, w in zip(got, want))
