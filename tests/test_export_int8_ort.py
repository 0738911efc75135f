"""The CPU int8 file's weight MatMuls carry their bias in ONNX Runtime's MatMulIntegerToFloat kernel."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from coder.export.int8_ort import KERNEL, fold_matmul_bias, fold_model
from coder.manifest import load_artifact

ort = pytest.importorskip("onnxruntime")


def _float_model(rng) -> onnx.ModelProto:
    """x (B,4,32) -> MatMul W1 + b1 -> Relu -> (attention-like) x @ x^T -> MatMul W2 (graph output, no bias);
    a fourth MatMul's Add reads a non-constant tensor."""
    w = {"w1": rng.normal(size=(32, 64)), "b1": rng.normal(size=64), "w2": rng.normal(size=(64, 5)),
         "w3": rng.normal(size=(32, 64))}  # 2 KiB int8 weights: above save_model's external-data threshold
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Transpose", ["r1"], ["r1t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["r1", "r1t"], ["att"], name="att"),
             helper.make_node("MatMul", ["att", "r1"], ["mix"], name="mix"),
             helper.make_node("MatMul", ["mix", "w2"], ["y"], name="fc2"),
             helper.make_node("MatMul", ["x", "w3"], ["m3"], name="fc3"),
             helper.make_node("Add", ["m3", "r1"], ["z"], name="residual")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, 5]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 4, 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class _Reader:
    def __init__(self, xs):
        self.xs = iter(xs)

    def get_next(self):
        return next(self.xs, None)


@pytest.fixture
def qdq(tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(_float_model(rng), str(src))
    xs = [{"x": rng.normal(size=(1, 4, 32)).astype(np.float32)} for _ in range(8)]
    quantize_static(str(src), str(dst), _Reader(xs), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    extra_options={"WeightSymmetric": True, "OpTypesToExcludeOutputQuantization": ["MatMul"]})
    return dst


def _run(model, x):
    data = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_folding_keeps_every_output_and_takes_the_bias_into_the_kernel(qdq):
    x = np.random.default_rng(1).normal(size=(3, 4, 32)).astype(np.float32)
    want = _run(qdq, x)
    model = onnx.load(str(qdq))
    assert fold_model(model) == 3  # fc1, fc2, fc3: the weight MatMuls; att and mix read two activations
    nodes = {n.name: n for n in model.graph.node}
    assert nodes["fc1"].op_type == KERNEL and nodes["fc1"].input[6] == "b1" and nodes["fc1"].output[0] == "a1"
    assert "bias1" not in nodes  # its Add is in the kernel
    assert len(nodes["fc2"].input) == 6 and nodes["fc2"].output[0] == "y"  # graph output, no bias to take
    assert len(nodes["fc3"].input) == 6 and nodes["residual"].op_type == "Add"  # adds an activation: stays
    assert nodes["att"].op_type == nodes["mix"].op_type == "MatMul"
    weights = {"w1_quantized", "w2_quantized", "w3_quantized"}
    assert not any(n.op_type == "DequantizeLinear" and n.input[0] in weights for n in model.graph.node)
    got = _run(model.SerializeToString(), x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert fold_model(model) == 0  # idempotent


def test_weights_quantized_along_the_wrong_axis_are_left_to_onnx_runtime(qdq):
    model = onnx.load(str(qdq))
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] == "w1_quantized":
            del n.attribute[:]
            n.attribute.append(helper.make_attribute("axis", 0))
    fold_model(model)
    assert {n.name: n.op_type for n in model.graph.node}["fc1"] == "MatMul"


def test_fold_matmul_bias_rewrites_the_file_atomically(qdq):
    before = qdq.read_bytes()
    assert fold_matmul_bias(qdq, external=False) == 3
    assert qdq.read_bytes() != before and sorted(p.name for p in qdq.parent.iterdir()) == ["f.onnx", "q.onnx"]
    assert fold_matmul_bias(qdq, external=False) == 0


def test_the_exported_cpu_file_runs_without_separate_bias_adds(tiny_artifact, tmp_path):
    """ONNX Runtime's own QDQ fusion left every bias Add (and BiasGelu) outside MatMulIntegerToFloat: the static
    file ran at 0.89x the dynamic one's speed on ViT-B/32. Its optimized graph must now have none."""
    art = load_artifact(tiny_artifact)
    cpu = art.encoder("image", "int8", "cpu")
    assert art.manifest["int8"]["cpu_matmul_kernels"] > 0
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(cpu), opts, providers=["CPUExecutionProvider"])
    g = onnx.load(opts.optimized_model_filepath).graph
    kernel_out = {n.output[0] for n in g.node if n.op_type == KERNEL}
    consts = {t.name for t in g.initializer}
    assert kernel_out
    bias_adds = [n.name for n in g.node if n.op_type in ("Add", "BiasGelu") and set(n.input) & kernel_out
                 and set(n.input) & consts]  # the residual Adds read two activations
    assert not bias_adds


def test_an_activation_dequantize_another_node_reads_is_kept(qdq):
    model = onnx.load(str(qdq))
    fc1 = next(n for n in model.graph.node if n.name == "fc1")
    model.graph.node.append(helper.make_node("Identity", [fc1.input[0]], ["x_seen"]))
    model.graph.output.append(helper.make_tensor_value_info("x_seen", TensorProto.FLOAT, ["B", 4, 32]))
    x = np.random.default_rng(2).normal(size=(2, 4, 32)).astype(np.float32)
    want = _run(model.SerializeToString(), x)
    assert fold_model(model) == 3
    got = _run(model.SerializeToString(), x)  # ONNX Runtime refuses a graph whose Identity lost its input
    np.testing.assert_allclose(got[2], want[2], rtol=0, atol=0)


def test_external_data_is_rewritten_beside_the_model(qdq):
    from coder.export.onnx_files import data_name, save_model

    x = np.random.default_rng(3).normal(size=(2, 4, 32)).astype(np.float32)
    want = _run(qdq, x)
    save_model(onnx.load(str(qdq)), qdq, external=True)
    assert fold_matmul_bias(qdq, external=True) == 3
    assert (qdq.parent / data_name(qdq.name)).is_file()
    assert sorted(p.name for p in qdq.parent.iterdir()) == ["f.onnx", "q.onnx", "q.onnx.data"]
    for g, w in zip(_run(qdq, x), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_openvino_runs_the_folded_file_as_it_runs_the_qdq_file(qdq, tmp_path):
    """Without an NNCF IR, `--backend openvino --precision int8` reads the CPU file: its ONNX reader must take
    MatMulIntegerToFloat with uint8 activations and a non-zero zero point as ONNX Runtime does."""
    ov = pytest.importorskip("openvino")
    x = np.random.default_rng(4).normal(size=(3, 4, 32)).astype(np.float32)
    folded = tmp_path / "folded.onnx"
    model = onnx.load(str(qdq))
    fold_model(model)
    onnx.save(model, str(folded))
    zero_points = [t for t in model.graph.initializer if t.data_type == TensorProto.UINT8]
    assert any(numpy_helper.to_array(z).any() for z in zero_points)  # asymmetric activations

    def run_ov(path):
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        res = compiled.create_infer_request().infer({"x": x})
        return [np.array(res[o]) for o in compiled.outputs]

    for got, want, ort_out in zip(run_ov(folded), run_ov(qdq), _run(folded, x)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got, ort_out, rtol=1e-3, atol=1e-3)
