"""The CPU int8 file's weight MatMuls carry their bias in ONNX Runtime's MatMulIntegerToFloat kernel."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from coder.export.int8_ort import ATTENTION, KERNEL, fold_model, fuse_attention, write_cpu_form
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


def test_write_cpu_form_rewrites_the_file_atomically(qdq):
    before = qdq.read_bytes()
    assert write_cpu_form(qdq, external=False) == {"matmul_kernels": 3, "attention_kernels": 0}
    assert qdq.read_bytes() != before and sorted(p.name for p in qdq.parent.iterdir()) == ["f.onnx", "q.onnx"]
    after = qdq.read_bytes()
    assert write_cpu_form(qdq, external=False) == {"matmul_kernels": 0, "attention_kernels": 0}
    assert qdq.read_bytes() == after  # nothing to rewrite: not written again


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
    assert write_cpu_form(qdq, external=True, attention=False) == {"matmul_kernels": 3, "attention_kernels": 0}
    assert (qdq.parent / data_name(qdq.name)).is_file()
    assert sorted(p.name for p in qdq.parent.iterdir()) == ["f.onnx", "q.onnx", "q.onnx.data"]
    for g, w in zip(_run(qdq, x), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


S, D, H = 5, 16, 2  # tokens, width, heads (head width 8)


def _attention_model(rng, scale=(D // H) ** -0.5, qk=(0, 1), mask=False) -> onnx.ModelProto:
    """x (B,S,D) -> self-attention as coder's exporter writes it (q/k/v Gathers, Transposes, scaled q) -> out
    projection. ``qk`` picks the Gather indices of q and k, ``mask`` adds a constant before the softmax."""
    w = {"w_qkv": rng.normal(size=(D, 3 * D)) * np.repeat([0.8, 0.8, 0.25], D), "b_qkv": rng.normal(size=3 * D) / 4, "w_o": rng.normal(size=(D, D)),
         "shape5": np.array([-1, S, 3, H, D // H]), "shape3": np.array([-1, S, D]), "scale": np.array(scale),
         "i0": np.array(qk[0]), "i1": np.array(qk[1]), "i2": np.array(2)}
    if mask:
        w["mask"] = np.triu(np.full((S, S), -5.0), 1)
    inits = [numpy_helper.from_array(v.astype(np.int64 if k[0] in "is" and k != "scale" else np.float32), k)
             for k, v in w.items()]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w_qkv"], ["m"], name="blk/attn/MatMul"), n("Add", ["m", "b_qkv"], ["qkv"]),
             n("Reshape", ["qkv", "shape5"], ["r"]),
             *[n("Gather", ["r", f"i{j}"], [f"g{j}"], axis=2) for j in range(3)],
             n("Transpose", ["g0"], ["qt"], perm=[0, 2, 1, 3]), n("Mul", ["qt", "scale"], ["q"]),
             n("Transpose", ["g1"], ["k"], perm=[0, 2, 3, 1]), n("Transpose", ["g2"], ["v"], perm=[0, 2, 1, 3]),
             n("MatMul", ["q", "k"], ["s0" if mask else "s"], name="blk/attn/MatMul_1"),
             *([n("Add", ["s0", "mask"], ["s"])] if mask else []),
             n("Softmax", ["s"], ["p"], axis=-1), n("MatMul", ["p", "v"], ["o"], name="blk/attn/MatMul_2"),
             n("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]), n("Reshape", ["ot", "shape3"], ["a"]),
             n("MatMul", ["a", "w_o"], ["y"], name="blk/attn/out_proj/MatMul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", S, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", S, D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _reference_attention(x, model) -> np.ndarray:
    """The float attention of ``_attention_model`` (scale 1/sqrt(head width)), straight from its weights."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qkv = (x @ w["w_qkv"] + w["b_qkv"]).reshape(len(x), S, 3, H, D // H).transpose(2, 0, 3, 1, 4)
    scores = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) / np.sqrt(D // H)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    out = (p / p.sum(-1, keepdims=True)) @ qkv[2]
    return out.transpose(0, 2, 1, 3).reshape(len(x), S, D) @ w["w_o"]


def _quantized(model, tmp_path, rng) -> onnx.ModelProto:
    """``model`` through the export's own steps: ONNX shape inference, quantize_static (QDQ), the bias fold."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    src, dst = tmp_path / "attn.onnx", tmp_path / "attn.q.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(model), str(src))
    xs = [{"x": rng.normal(size=(1, S, D)).astype(np.float32)} for _ in range(16)]
    quantize_static(str(src), str(dst), _Reader(xs), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    extra_options={"WeightSymmetric": True, "OpTypesToExcludeOutputQuantization": ["MatMul"]})
    q = onnx.load(str(dst))
    assert fold_model(q) == 2  # the q/k/v and the out projection
    return q


def _cosine(a, b) -> float:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.min(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def test_self_attention_becomes_one_qattention_matching_float_attention(tmp_path):
    rng = np.random.default_rng(5)
    model = _attention_model(rng)
    q = _quantized(model, tmp_path, rng)
    x = rng.normal(size=(3, S, D)).astype(np.float32)
    unfused = _run(q.SerializeToString(), x)[0]
    assert fuse_attention(q) == 1
    ops = [n.op_type for n in q.graph.node]
    assert ops.count(ATTENTION) == 1 and not {"Softmax", "Gather", "Transpose", "MatMul"} & set(ops)
    assert {n.op_type for n in q.graph.node} == {ATTENTION, KERNEL, "QuantizeLinear"}
    assert not [t.name for t in q.graph.initializer if t.name.startswith(("shape", "i", "scale"))]  # unread: gone
    got = _run(q.SerializeToString(), x)[0]
    want = _reference_attention(x, model)
    assert _cosine(got, want) > 0.995 and _cosine(got, want) >= _cosine(unfused, want) - 1e-3  # q,k swapped: 0.26
    alone = np.concatenate([_run(q.SerializeToString(), x[i:i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(alone, got, rtol=0, atol=1e-5)  # batch-independent
    assert fuse_attention(q) == 0  # idempotent


@pytest.mark.parametrize("change", [{"scale": 0.5}, {"qk": (1, 0)}, {"mask": True}])
def test_attention_of_another_form_is_left_alone(tmp_path, change):
    """QAttention scales by 1/sqrt(head width), reads q|k|v in that order and takes no additive mask."""
    rng = np.random.default_rng(6)
    model = _attention_model(rng, **change)
    q = _quantized(model, tmp_path, rng)
    x = rng.normal(size=(2, S, D)).astype(np.float32)
    want = _run(q.SerializeToString(), x)[0]
    assert fuse_attention(q) == 0
    np.testing.assert_array_equal(_run(q.SerializeToString(), x)[0], want)


def test_the_exported_cpu_file_runs_attention_as_qattention(tiny_artifact, tmp_path):
    """Each block's attention is one QAttention in the optimized graph: no Softmax or q/k/v QuantizeLinear left."""
    art = load_artifact(tiny_artifact)
    assert art.manifest["int8"]["cpu_attention_kernels"] == 2  # coder-tiny: 2 blocks
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(art.encoder("image", "int8", "cpu")), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert ops.count(ATTENTION) == 2 and "Softmax" not in ops
    assert ops.count("QuantizeLinear") == 4 * 2 + 1  # per block: ln_1, attention output, ln_2, GELU; projection
