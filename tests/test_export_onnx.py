"""ONNX file helpers of the export: what int8 quantizes, typed failures, staging."""

from __future__ import annotations

import numpy as np
import pytest

from coder.errors import ExportError
from coder.export.onnx_export import quantize_int8
from coder.export.onnx_files import companions, staged


def _shared_weight_model(path):
    """Conv+bias layers, one weight reached through Identity (as torch's exporter writes
    de-duplicated initializers, e.g. RN50 with random init)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["W2"], ["W_copy2"]),
         helper.make_node("Conv", ["X", "W", "bias"], ["A"], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["A", "W_copy2", "bias"], ["B"], pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["A", "B"], ["Y"])],
        "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 8, 16, 16])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w2, "W2"),
         numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _ops(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_keeps_convs_in_fp32(tmp_path):
    """ConvInteger is slow on CPU; a conv tower (here with an Identity-shared weight, as torch's exporter
    writes de-duplicated initializers) keeps fp32 convs and quantizes cleanly."""
    import onnxruntime as ort

    src, dst = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    _shared_weight_model(src)
    quantize_int8(src, dst)
    assert "ConvInteger" not in _ops(dst) and "Conv" in _ops(dst)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]  # noqa
    np.testing.assert_allclose(run(dst), run(src), rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx", "m.onnx"]  # no staging leftovers


def test_int8_quantizes_matmuls(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 32])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "mm.onnx"))
    quantize_int8(tmp_path / "mm.onnx", tmp_path / "mm.int8.onnx")
    assert "MatMul" not in _ops(tmp_path / "mm.int8.onnx")
    assert (tmp_path / "mm.int8.onnx").stat().st_size < (tmp_path / "mm.onnx").stat().st_size / 2


def test_int8_failure_is_a_typed_error(tmp_path):
    src = tmp_path / "broken.onnx"
    src.write_bytes(b"not an onnx file")
    with pytest.raises(ExportError, match="int8 quantization of broken.onnx failed"):
        quantize_int8(src, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_staged_failure_changes_nothing(tmp_path):
    final = tmp_path / "e.onnx"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with staged(final) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError("killed")
    assert final.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["e.onnx"]


def test_companions_of_an_inline_file_is_empty(tmp_path):
    _shared_weight_model(tmp_path / "m.onnx")
    assert companions(tmp_path / "m.onnx") == []
