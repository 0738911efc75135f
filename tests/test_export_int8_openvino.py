"""The OpenVINO int8 IR of `coder export --int8`: NNCF on the export's calibration, gated, listed with its
weights, run as ``openvino-int8``; skipped (with the reason) without nncf or when it misses the gate."""

import copy

import numpy as np
import pytest

from coder.export import int8, int8_openvino
from coder.manifest import Artifact, load_artifact

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def _scenes(art, n=6, seed=5):
    from coder.runtime.preprocess import preprocess_batch
    from coder.samples import synthetic_batch

    return preprocess_batch(synthetic_batch(n, seed=seed), load_artifact(art).preprocess)


def test_ir_is_listed_with_its_weights_and_runs_as_openvino_int8(tiny_artifact):
    from coder.runtime.encoder import ImageEncoder

    art = load_artifact(tiny_artifact)
    xml = art.manifest["int8"]["files"]["openvino"]
    assert xml == int8_openvino.FILE and art.manifest["files"][xml]["external_data"] == [int8_openvino.weights_name(xml)]
    rec = art.manifest["int8"]["openvino"]
    assert rec["gate_passed"] and rec["model_type"] == "transformer" and rec["nncf"]
    assert art.manifest["validation"][xml]["same_top1"] and art.manifest["validation"][xml]["min_cosine"] >= 0.99
    enc = ImageEncoder.load(tiny_artifact, "int8", "openvino")
    assert enc.backend == "openvino-int8" and enc.engine.path.name == xml
    x = _scenes(tiny_artifact)
    alone = np.concatenate([enc.engine.run(x[i:i + 1]) for i in range(len(x))])
    assert np.abs(enc.engine.run(x) - alone).max() <= 1e-5  # static scales: the batch does not matter
    ref = ImageEncoder.load(tiny_artifact, "fp32", "cpu").engine.run(x)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    assert np.sum(unit(alone) * unit(ref), axis=1).min() >= 0.99


@pytest.fixture
def art_dir(tiny_artifact, private_copy):
    """A private copy (the test writes into it), without caches, and a private user cache."""
    return private_copy(tiny_artifact, "engines", ".coder-*")


def test_damaged_weights_are_refused_before_openvino_reads_them(art_dir):
    from coder.errors import ArtifactError

    bin_path = art_dir / int8_openvino.weights_name(int8_openvino.FILE)
    data = bytearray(bin_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bin_path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="openvino.bin"):
        load_artifact(art_dir).encoder("image", "int8", "openvino")


def test_without_an_ir_openvino_runs_the_plain_qdq_file(tiny_artifact):
    """The CPU file's QAttention is ONNX Runtime's own (OpenVINO's reader has no conversion for it): without an
    IR, OpenVINO reads the plain QDQ file, the same calibration, and embeds as ONNX Runtime's CPU file does."""
    ov = pytest.importorskip("openvino")
    art = load_artifact(tiny_artifact)
    assert art.manifest["int8"]["cpu_attention_kernels"] > 0
    m = copy.deepcopy(art.manifest)
    del m["int8"]["files"]["openvino"]
    name = Artifact(art.root, m).encoder_name("image", "int8", "openvino")
    assert name == "image_encoder.int8.trt.onnx"
    x = _scenes(tiny_artifact, 4)
    compiled = ov.Core().compile_model(str(art.root / name), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.array(compiled.create_infer_request().infer([x])[compiled.outputs[0]])
    want = int8.embed(art.encoder("image", "int8", "cpu"), x)
    cos = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.99


def test_skipped_without_nncf_and_when_the_gate_fails(tiny_artifact, tmp_path, monkeypatch):
    src = load_artifact(tiny_artifact).encoder("image", "fp32")
    x = _scenes(tiny_artifact, 4)
    failing = lambda got: {"images": len(got), "min_cosine": 0.5, "median_cosine": 0.6, "top1_agreement": None}  # noqa: E731
    rec = int8_openvino.quantize_openvino(src, tmp_path, x, x, failing, 0.99)
    assert rec["file"] is None and rec["skipped"] == "missed the gate" and not rec["gate_passed"]
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    monkeypatch.setattr(int8_openvino.importlib.util, "find_spec", lambda name: None)
    rec = int8_openvino.quantize_openvino(src, tmp_path, x, x, failing, 0.99)
    assert rec == {"file": None, "skipped": "openvino and nncf not installed (pip install 'coder[export,openvino]')"}


def test_export_report_names_the_ir_or_why_not():
    from coder.cli.artifacts import int8_report_lines

    base = {"calibration": {"source": "synthetic", "images": 32, "method": "MinMax",
                            "methods_tried": {"MinMax": {"min_cosine": 0.995}}}, "excluded_nodes": [], "consumers": {},
            "held_out": {"images": 16, "min_cosine": 0.995, "median_cosine": 0.998, "top1_agreement": None}}
    ok = {**base, "openvino": {"nncf": "3.4.0", "model_type": "transformer", "gate_passed": True,
                               "probe": {"min_cosine": 0.9988, "median_cosine": 0.9995}}}
    assert "NNCF 3.4.0, transformer model type): cosine min 0.99880 / median 0.99950" in "\n".join(int8_report_lines(ok))
    skipped = {**base, "openvino": {"skipped": "missed the gate"}}
    assert "not written (missed the gate); --backend openvino runs the plain QDQ file (image_encoder.int8.trt.onnx)" \
        in "\n".join(int8_report_lines(skipped))
    dw = {**base, "openvino": {**ok["openvino"], "depthwise": {"runtime_precisions": {"bf16": 90}, "quantized": False}}}
    assert "model type, depthwise convolutions not quantized (OpenVINO runs them 90 bf16)): cosine min 0.99880" in \
        "\n".join(int8_report_lines(dw))
    kernels = {**base, "cpu_matmul_kernels": 49, "cpu_attention_kernels": 12}
    assert "int8 CPU kernels: 49 MatMulIntegerToFloat, 12 QAttention" in int8_report_lines(kernels)
    kept = {**kernels, "cpu_attention_kernels": 0, "cpu_attention_skipped": "missed the gate"}
    assert "0 QAttention (kept as QDQ: QAttention missed the gate)" in "\n".join(int8_report_lines(kept))


def test_classifier_reports_openvino_int8(tiny_artifact, tmp_path):
    from coder.runtime.classifier import Classifier
    from coder.samples import synthetic_scene
    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import names_texts

    build_bank(tiny_artifact, names_texts(["cat", "dog", "ship"]), out=tmp_path / "bank")
    clf = Classifier.load(tiny_artifact, bank=str(tmp_path / "bank"), backend="openvino", precision="int8")
    ref = Classifier.load(tiny_artifact, bank=str(tmp_path / "bank"), backend="cpu", precision="fp32")
    images = [synthetic_scene(40 + i, (224, 224)) for i in range(3)]
    got, want = clf.classify(images), ref.classify(images)
    assert {p.backend for p in got} == {"openvino-int8"}
    assert np.abs(np.array([p.stage1_scores for p in got]) - [p.stage1_scores for p in want]).max() < 2.0


def test_int8_ir_runs_its_float_layers_at_the_reduced_hint_only_after_the_gate(art_dir, monkeypatch):
    from coder.engines import openvino as ov
    from coder.runtime.openvino_precision import PrecisionGate, choose_hint, load_openvino_encoder

    art = load_artifact(art_dir)
    monkeypatch.setattr(ov, "reduced_hint", lambda device="CPU": "bf16")
    failing = lambda art, path, hint, device, threads: PrecisionGate(hint, device, 16, 0.98, 1.0, False)  # noqa: E731
    assert choose_hint(art, "int8", "openvino", gate=failing)[0] == "f32"
    enc = load_openvino_encoder(art, "int8", "openvino", gate=failing)
    assert (enc.backend, enc.precision_hint) == ("openvino-int8", "f32")
    for f in (art_dir / "engines").rglob("gate-*.json"):
        f.unlink()
    passing = lambda art, path, hint, device, threads: PrecisionGate(hint, device, 16, 0.9999, 1.0, True)  # noqa: E731
    hint, verdict = choose_hint(art, "int8", "openvino", gate=passing)
    assert hint == "bf16" and verdict.passed


@pytest.mark.skipif(__import__("coder.engines.openvino", fromlist=["x"]).reduced_hint("CPU") != "bf16",
                    reason="this CPU has no BF16")
def test_the_real_gate_on_the_int8_ir(tiny_artifact):
    from coder.runtime.openvino_precision import run_gate

    art = load_artifact(tiny_artifact)
    verdict = run_gate(art, art.encoder("image", "int8", "openvino"), "bf16", "CPU")
    assert verdict.images == 16 and 0.99 < verdict.min_cosine <= 1.0 + 1e-6


def _depthwise_model(path):
    """x (B,3,16,16) -> pointwise conv -> 3x3 depthwise conv -> pointwise conv -> global pool: (B, 8)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = {"w1": rng.normal(size=(16, 3, 1, 1)), "wd": rng.normal(size=(16, 1, 3, 3)), "w2": rng.normal(size=(8, 16, 1, 1))}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"]), n("Relu", ["a"], ["b"]),
             n("Conv", ["b", "wd"], ["c"], group=16, pads=[1, 1, 1, 1]), n("Relu", ["c"], ["d"]),
             n("Conv", ["d", "w2"], ["e"]), n("GlobalAveragePool", ["e"], ["f"]), n("Flatten", ["f"], ["y"])]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _depthwise_quantized(xml) -> bool:
    """Whether a FakeQuantize feeds the IR's GroupConvolution."""
    model = int8_openvino.core().read_model(str(xml))
    conv = next(op for op in model.get_ops() if op.get_type_name() == "GroupConvolution")
    return any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in conv.inputs())


def test_depthwise_precisions_reads_the_compiled_model(tmp_path):
    model = int8_openvino.quantize_model(_depthwise_model(tmp_path / "dw.onnx"), _pixels(8))
    ran = int8_openvino.depthwise_precisions(model)
    assert sum(ran.values()) == 1 and set(ran) <= {"i8", "u8", "bf16", "f32", "f16"}


@pytest.mark.parametrize("ran", [{"bf16": 1}, {"i8": 1}])
def test_depthwise_convolutions_keep_quantizers_only_where_openvino_runs_them_int8(tmp_path, monkeypatch, ran):
    """OpenVINO's CPU plugin may run a depthwise convolution in bf16 although NNCF quantized its input: the
    quantizer is then a separate FakeQuantize node of pure overhead, and the IR is written without it."""
    src = _depthwise_model(tmp_path / "dw.onnx")
    x = _pixels(12)
    want = int8.embed(src, x)
    monkeypatch.setattr(int8_openvino, "depthwise_precisions", lambda model: ran)
    out = tmp_path / "out"
    out.mkdir()
    rec = int8_openvino.quantize_openvino(src, out, x[:8], x[8:], int8.gate_judge(want[8:], None, 0), 0.5)
    assert rec["file"] == int8_openvino.FILE
    assert rec["depthwise"] == {"runtime_precisions": ran, "quantized": "i8" in ran}
    assert _depthwise_quantized(out / int8_openvino.FILE) == ("i8" in ran)


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(8).uniform(-1, 1, size=(n, 3, 16, 16)).astype(np.float32)
