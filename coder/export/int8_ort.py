"""The CPU int8 file in the form ONNX Runtime runs fastest: each weight MatMul and its bias in one kernel.

ONNX Runtime turns a QDQ ``DequantizeLinear(x) -> MatMul <- DequantizeLinear(weight)`` into its
``MatMulIntegerToFloat`` kernel (com.microsoft), but leaves the bias ``Add`` behind it: one more pass
over every output, and after the MLP's first layer a ``BiasGelu`` instead of ``Gelu``. On ViT-B/32
(batch 1, ONNX Runtime 1.32's profiler) those were 4.3 ms of ``Add`` and 6.3 ms of ``BiasGelu``; once the
bias is folded, 0.9 ms of ``Add`` (the residuals) and 0.8 ms of ``Gelu`` remain. Dynamic quantization's
``DynamicQuantizeMatMul`` always took its bias, which is why the static file used to run at 0.89x
dynamic's speed.

:func:`fold_matmul_bias` writes the node ONNX Runtime would make, with the bias as its optional 7th
input (``MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias)``, ONNX Runtime
docs/ContribOperators.md). The integers, scales and zero points are the QDQ file's own, so results
stay batch-independent; only the float rounding of ``+ bias`` moves. Activation x activation MatMuls
(attention) and MatMuls left in float are not touched. Only ONNX Runtime and OpenVINO read the cpu
file (OpenVINO's ONNX reader knows the op); TensorRT gets the plain QDQ file.

>>> fold_matmul_bias(out / "image_encoder.int8.onnx", external=False)  # doctest: +SKIP
49
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .onnx_files import save_model, staged

DOMAIN = "com.microsoft"
KERNEL = "MatMulIntegerToFloat"
FORM_VERSION = 1  # the CPU file's form; in the export's resume key, so an unfolded file is never resumed


def fold_matmul_bias(path: Path, external: bool) -> int:
    """Rewrite ``path`` in place (atomically); returns how many weight MatMuls became ``MatMulIntegerToFloat``."""
    import onnx

    model = onnx.load(str(path))
    folded = fold_model(model)
    if folded:
        with staged(path) as tmp:
            save_model(model, tmp, external)
    return folded


def fold_model(model) -> int:
    """:func:`fold_matmul_bias` on a loaded ``ModelProto`` (modified in place)."""
    g = model.graph
    replace, drop = _plan(g)
    if not replace:
        return 0
    nodes = [replace.get(i, n) for i, n in enumerate(g.node) if i not in drop]
    outputs = {o.name for o in g.output}
    read = {x for n in nodes for x in n.input} | outputs
    nodes = [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in read]  # now unread
    del g.node[:]
    g.node.extend(nodes)
    known = read | {o for n in nodes for o in n.output}
    kept = [v for v in g.value_info if v.name in known]  # shapes of the tensors that are gone go too
    del g.value_info[:]
    g.value_info.extend(kept)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        import onnx

        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return len(replace)


def _plan(g) -> tuple[dict[int, Any], set[int]]:
    """({node index: its MatMulIntegerToFloat}, {indices of the bias Adds it absorbs})."""
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    position = {o: i for i, n in enumerate(g.node) for o in n.output}
    users: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            users.setdefault(x, []).append(n)
    outputs = {o.name for o in g.output}
    replace, drop = {}, set()
    for i, n in enumerate(g.node):
        pair = _dequantized_inputs(n, producer, inits)
        if pair is None:
            continue
        a, b = pair
        add, bias = _bias_add(n, users, inits, outputs, inits[b.input[0]].dims[1])
        inputs = [a.input[0], b.input[0], a.input[1], b.input[1], _opt(a, 2), _opt(b, 2)] + ([bias] if bias else [])
        replace[i] = _node(KERNEL, inputs, add.output[0] if add is not None else n.output[0], n.name)
        if add is not None:
            drop.add(position[add.output[0]])
    return replace, drop


def _dequantized_inputs(node, producer, inits):
    """(activation DQ, weight DQ) of a MatMul ONNX Runtime's kernel can take, else None.

    The activation must be per-tensor; the weight a 2-D constant, per-tensor or per output column
    (``axis`` 1: ``b_scale`` of shape [N]), which is what ``quantize_static(per_channel=True)`` writes.
    """
    if node.op_type != "MatMul":
        return None
    a, b = (producer.get(x) for x in node.input[:2])
    if a is None or b is None or a.op_type != "DequantizeLinear" or b.op_type != "DequantizeLinear":
        return None
    weight = inits.get(b.input[0])
    if weight is None or len(weight.dims) != 2 or _scale_rank(a, inits) != 0:
        return None
    if _scale_rank(b, inits) not in (0, 1) or (_scale_rank(b, inits) == 1 and _axis(b) not in (1, -1)):
        return None
    return a, b


def _bias_add(node, users, inits, outputs, width: int):
    """(the Add, its bias name) when the MatMul's only user adds a constant [``width``] vector, else (None, None)."""
    out = node.output[0]
    after = users.get(out, [])
    if out in outputs or len(after) != 1 or after[0].op_type != "Add":
        return None, None
    add = after[0]
    other = [x for x in add.input if x != out]
    bias = inits.get(other[0]) if len(other) == 1 else None
    if bias is None or list(bias.dims) != [width]:
        return None, None
    return add, bias.name


def _scale_rank(dq, inits) -> int | None:
    scale = inits.get(dq.input[1])
    return None if scale is None else len(scale.dims)


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _opt(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _node(op: str, inputs: list[str], output: str, name: str):
    import onnx

    return onnx.helper.make_node(op, inputs, [output], name=name, domain=DOMAIN)
