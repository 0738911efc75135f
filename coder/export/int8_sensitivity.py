"""Which quantized nodes cost the most accuracy, and leaving them in float until the int8 gate passes.

A node's effect is measured without re-quantizing: its inputs are rewired in the QDQ graph to the
float tensors (the activation before its QuantizeLinear, the original fp32 weight and bias), and
the held-out cosine to fp32 is measured with only that node in float. Nodes are then left in float
worst first until the gate passes; the export re-quantizes with them excluded (same ranges).

>>> excluded, effect = exclude_until_pass(qdq, prepared, pixels, judge, 0.99)  # doctest: +SKIP
>>> excluded
('/visual/proj/MatMul',)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ExportError

QUANTIZED_SUFFIX = "_quantized"
FLOAT_SUFFIX = ".fp32"


def _producers(model) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def quantized_nodes(model, op_types=("MatMul", "Gemm")) -> list[str]:
    """Names of ``op_types`` nodes with at least one input from a DequantizeLinear."""
    prod = _producers(model)
    return [n.name for n in model.graph.node if n.op_type in op_types
            and any(i in prod and prod[i].op_type == "DequantizeLinear" for i in n.input)]


def with_float_nodes(qdq, fp32_inits: dict[str, Any], names) -> Any:
    """A copy of ``qdq`` where the nodes ``names`` read float tensors instead of their DequantizeLinear outputs."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    prod = _producers(model)
    have = {t.name for t in model.graph.initializer}
    wanted = set(names)
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        for j, name in enumerate(node.input):
            dq = prod.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[j] = q.input[0]  # the activation before quantization
            elif dq.input[0].endswith(QUANTIZED_SUFFIX) and dq.input[0][:-len(QUANTIZED_SUFFIX)] in fp32_inits:
                original = dq.input[0][:-len(QUANTIZED_SUFFIX)]
                name_ = f"{original}{FLOAT_SUFFIX}"  # its own name: the DQ output may carry the original one
                if name_ not in have:
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(fp32_inits[original])
                    tensor.name = name_
                    model.graph.initializer.append(tensor)
                    have.add(name_)
                node.input[j] = name_  # the fp32 weight / bias
    return model


def exclude_until_pass(qdq_path: Path, fp32_path: Path, pixels: np.ndarray, judge: Callable, min_cosine: float,
                       report: Callable[[str], None] = lambda s: None) -> tuple[tuple[str, ...], dict[str, float]]:
    """Rank the quantized nodes by the probe min cosine with that node alone in float, then leave them in
    float worst first until ``judge`` (:func:`coder.export.int8.gate_judge`) passes. Returns (excluded
    nodes, {node: min cosine with it in float} for the excluded ones and at least the 10 worst).
    """
    import onnx

    from .int8 import embed, passes

    qdq = onnx.load(str(qdq_path))
    fp32_inits = {t.name: t for t in onnx.load(str(fp32_path)).graph.initializer}
    nodes = quantized_nodes(qdq)
    effect = {}
    for i, name in enumerate(nodes):
        report(f"int8 sensitivity: node {i + 1}/{len(nodes)}")
        got = embed(with_float_nodes(qdq, fp32_inits, [name]).SerializeToString(), pixels)
        effect[name] = judge(got)["min_cosine"]
    ranked = sorted(nodes, key=lambda n: -effect[n])
    for count in range(1, len(ranked) + 1):
        excluded = tuple(ranked[:count])
        result = judge(embed(with_float_nodes(qdq, fp32_inits, excluded).SerializeToString(), pixels))
        report(f"int8: {count} node(s) in float, min cosine {result['min_cosine']:.5f}")
        if passes(result, min_cosine):
            return excluded, {n: effect[n] for n in ranked[:max(count, 10)]}
    raise ExportError(f"int8 misses the gate (min cosine {min_cosine}, same top-1) even with all {len(nodes)} "
                      "quantized nodes in float; export without --int8")
