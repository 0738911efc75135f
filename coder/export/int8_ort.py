"""The CPU int8 file in the form ONNX Runtime runs fastest: each weight MatMul and its bias in one kernel.

ONNX Runtime turns a QDQ ``DequantizeLinear(x) -> MatMul <- DequantizeLinear(weight)`` into its
``MatMulIntegerToFloat`` kernel (com.microsoft), but leaves the bias ``Add`` behind it: one more pass
over every output, and after the MLP's first layer a ``BiasGelu`` instead of ``Gelu``. On ViT-B/32
(batch 1, ONNX Runtime 1.32's profiler) those were 4.3 ms of ``Add`` and 6.3 ms of ``BiasGelu``; once the
bias is folded, 0.9 ms of ``Add`` (the residuals) and 0.8 ms of ``Gelu`` remain. Dynamic quantization's
``DynamicQuantizeMatMul`` always took its bias, which is why the static file used to run at 0.89x
dynamic's speed.

:func:`fold_model` writes the node ONNX Runtime would make, with the bias as its optional 7th
input (``MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias)``, ONNX Runtime
docs/ContribOperators.md). The integers, scales and zero points are the QDQ file's own, so results
stay batch-independent; only the float rounding of ``+ bias`` moves. Activation x activation MatMuls
(attention) and MatMuls left in float are not touched. Only ONNX Runtime reads the cpu file; TensorRT and
OpenVINO (without its own IR) read the plain QDQ file.

Self-attention is written as ONNX Runtime's ``QAttention`` kernel (:func:`fuse_attention`): the q/k/v
projection from the same uint8 input, scores, softmax and the weighted sum in one node, the attention
itself in float. Left as QDQ, each block ran 4 ``QuantizeLinear`` nodes on q, k, v and the softmax, and
about a dozen Split/Squeeze/Transpose/Reshape nodes around two small integer matmuls: the per-node cost that
kept the static file at 0.92-0.95x the dynamic one's speed at batch 1 on ViT-B/32.

>>> write_cpu_form(out / "image_encoder.int8.onnx", external=False)  # doctest: +SKIP
{'matmul_kernels': 49, 'attention_kernels': 12}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .onnx_files import save_model, staged

DOMAIN = "com.microsoft"
KERNEL = "MatMulIntegerToFloat"
ATTENTION = "QAttention"
FORM_VERSION = 2  # the CPU file's form (2: QAttention); in the export's resume key, so an older form is never resumed


def write_cpu_form(path: Path, external: bool, attention: bool = True) -> dict[str, int]:
    """Rewrite ``path`` in place (atomically): weight MatMuls with their bias (:func:`fold_model`), then
    self-attention (:func:`fuse_attention`) unless ``attention`` is False. Returns how many kernels of each."""
    import onnx

    model = onnx.load(str(path))
    counts = {"matmul_kernels": fold_model(model), "attention_kernels": fuse_attention(model) if attention else 0}
    if any(counts.values()):
        with staged(path) as tmp:
            save_model(model, tmp, external)
    return counts


def fold_model(model) -> int:
    """Each weight MatMul with its bias as ``MatMulIntegerToFloat`` in ``model`` (modified in place); returns how many."""
    g = model.graph
    replace, drop = _plan(g)
    if not replace:
        return 0
    nodes = [replace.get(i, n) for i, n in enumerate(g.node) if i not in drop]
    read = _reads(nodes) | {o.name for o in g.output}
    nodes = [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in read]  # now unread
    _set_nodes(model, nodes)
    return len(replace)


def _set_nodes(model, nodes) -> None:
    """``nodes`` become the graph's; shapes and constants no node reads any more go, the domain is declared."""
    g = model.graph
    del g.node[:]
    g.node.extend(nodes)
    read = _reads(nodes) | {o.name for o in g.output}
    known = read | {o for n in nodes for o in n.output}
    kept = [v for v in g.value_info if v.name in known]  # shapes of the tensors that are gone go too
    del g.value_info[:]
    g.value_info.extend(kept)
    unread = [t for t in g.initializer if t.name not in read]  # ONNX Runtime warns of each at every load
    for t in unread:
        g.initializer.remove(t)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        import onnx

        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))


def _plan(g) -> tuple[dict[int, Any], set[int]]:
    """({node index: its MatMulIntegerToFloat}, {indices of the bias Adds it absorbs})."""
    ix = _Index(g)
    position = {o: i for i, n in enumerate(g.node) for o in n.output}
    replace, drop = {}, set()
    for i, n in enumerate(g.node):
        pair = _dequantized_inputs(n, ix.producer, ix.inits)
        if pair is None:
            continue
        a, b = pair
        add, bias = _bias_add(n, ix.users, ix.inits, ix.outputs, ix.inits[b.input[0]].dims[1])
        inputs = [a.input[0], b.input[0], a.input[1], b.input[1], _opt(a, 2), _opt(b, 2)] + ([bias] if bias else [])
        replace[i] = _node(KERNEL, inputs, add.output[0] if add is not None else n.output[0], n.name)
        if add is not None:
            drop.add(position[add.output[0]])
    return replace, drop


def _reads(nodes) -> set[str]:
    """Every tensor ``nodes`` read, inside their subgraphs (If/Loop bodies) too."""
    names = set()
    for n in nodes:
        names.update(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= _reads(sub.node)
    return names


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


# --- self-attention as QAttention -----------------------------------------------------------------------------
# What coder's exporter writes for an ``nn.MultiheadAttention`` (coder.export.towers._attention), quantized:
#   qkv = MatMulIntegerToFloat(x_u8, W[D,3D], ..., bias) -> Reshape [-1, S, 3, H, d] -> Gather(axis 2) 0 | 1 | 2
#   q: Transpose (0,2,1,3), Mul d^-0.5 | k: Transpose (0,2,3,1) | v: Transpose (0,2,1,3)   (Q/DQ pairs anywhere)
#   MatMul(q, k) -> Softmax(-1) -> MatMul(., v) -> Transpose (0,2,1,3) -> Reshape [-1, S, D]
# ONNX Runtime's QAttention (com.microsoft, docs/ContribOperators.md) computes exactly this from x_u8 with the
# q/k/v columns in that order (q | k | v, head-major), scaling scores by 1/sqrt(d). Anything else (a mask, another
# scale, another layout) is left as it is.
_TRANSPARENT = ("QuantizeLinear", "DequantizeLinear")
_Q_PERM, _K_PERM = (0, 2, 1, 3), (0, 2, 3, 1)


def fuse_attention(model) -> int:
    """Each self-attention of the pattern above as one ``QAttention`` (``model`` modified in place); returns how many."""
    g = model.graph
    ix = _Index(g)
    fused = {}
    for n in g.node:
        if n.op_type == KERNEL and (plan := _attention_plan(n, ix)) is not None:
            fused[id(n)] = plan
    if not fused:
        return 0
    gone = set().union(*(region for _, region in fused.values()))
    nodes = [fused[id(n)][0] if id(n) in fused else n for n in g.node if id(n) in fused or id(n) not in gone]
    _set_nodes(model, nodes)
    return len(fused)


class _Index:
    """Producers, consumers, constants and known ranks of a graph's tensors."""

    def __init__(self, g):
        from onnx import numpy_helper

        self.graph = g
        self.users: dict[str, list] = {}
        for n in g.node:
            for x in n.input:
                self.users.setdefault(x, []).append(n)
        self.producer = {o: n for n in g.node for o in n.output}
        self.outputs = {o.name for o in g.output}
        self.inits = {t.name: t for t in g.initializer}
        self._array = numpy_helper.to_array
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*g.value_info, *g.input, *g.output)
                      if v.type.tensor_type.HasField("shape")}

    def const(self, name: str):
        """The constant ``name`` as a numpy array (small shape/scale tensors only), else None."""
        t = self.inits.get(name)
        return None if t is None or len(t.dims) > 1 or (t.dims and t.dims[0] > 8) else self._array(t)

    def only_user(self, tensor: str):
        """The single node reading ``tensor`` (which is no graph output), else None."""
        users = self.users.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def rank(self, tensor: str) -> int | None:
        """Known rank of ``tensor``, looking through a QuantizeLinear (same shape)."""
        if tensor in self.ranks:
            return self.ranks[tensor]
        p = self.producer.get(tensor)
        return self.rank(p.input[0]) if p is not None and p.op_type == "QuantizeLinear" else None


def _attention_plan(qkv, ix: _Index):
    """(the QAttention node, ids of the nodes it replaces) when ``qkv`` starts the pattern above, else None."""
    w = ix.inits.get(qkv.input[1])
    if w is None or len(w.dims) != 2 or w.dims[1] % 3 or ix.rank(qkv.input[0]) != 3:
        return None
    dim = w.dims[1] // 3
    split = _split_heads(qkv, ix, dim)
    if split is None:
        return None
    reshape, gathers, heads, tokens = split
    q, k, v = (_walk(g.output[0], ix) for g in gathers)
    if q is None or k is None or v is None:
        return None
    (q_steps, mm1, q_at, q_nodes), (k_steps, mm1_k, k_at, k_nodes), (v_steps, mm2, v_at, v_nodes) = q, k, v
    if (not _scaled_query(q_steps, dim // heads) or k_steps != [("Transpose", _K_PERM)]
            or v_steps != [("Transpose", _Q_PERM)] or mm1 is not mm1_k or (q_at, k_at, v_at) != (0, 1, 1)
            or mm1.op_type != "MatMul" or mm2.op_type != "MatMul"):
        return None
    tail = _scores_to_output(mm1, mm2, ix, tokens, dim)
    if tail is None:
        return None
    end, tail_nodes = tail
    region = {id(n) for n in (qkv, reshape, *gathers, *q_nodes, *k_nodes, *v_nodes, mm1, mm2, *tail_nodes)}
    return _qattention(qkv, end, heads, dim, ix), region


def _scaled_query(steps, head: int) -> bool:
    """q's path: heads moved forward and a scale of 1/sqrt(head), in either order (QAttention's own scale)."""
    perms = [x for kind, x in steps if kind == "Transpose"]
    scales = [x for kind, x in steps if kind == "Mul"]
    return len(steps) == 2 and perms == [_Q_PERM] and len(scales) == 1 and abs(scales[0] * head**0.5 - 1) <= 1e-5


def _split_heads(qkv, ix: _Index, dim: int):
    """(Reshape, [Gather q, k, v], heads, tokens) of ``qkv``'s output, else None."""
    reshape = ix.only_user(qkv.output[0])
    shape = ix.const(reshape.input[1]) if reshape is not None and reshape.op_type == "Reshape" else None
    if shape is None or len(shape) != 5 or shape[2] != 3 or shape[1] <= 0 or shape[3] * shape[4] != dim:
        return None
    gathers: dict[int, object] = {}
    users = ix.users.get(reshape.output[0], [])
    for gnode in users:
        index = ix.const(gnode.input[1]) if gnode.op_type == "Gather" and _attr(gnode, "axis", 0) in (2, -3) else None
        if index is None or index.ndim != 0:
            return None
        gathers[int(index)] = gnode
    if sorted(gathers) != [0, 1, 2] or len(users) != 3 or reshape.output[0] in ix.outputs:
        return None
    return reshape, [gathers[i] for i in range(3)], int(shape[3]), int(shape[1])


def _walk(tensor: str, ix: _Index):
    """Follow single-consumer Transpose / scalar Mul / Q / DQ nodes from ``tensor``:
    (steps [("Transpose", perm) | ("Mul", c)], the node it stops at, the input it enters, the nodes passed)."""
    steps, passed = [], []
    while (node := ix.only_user(tensor)) is not None:
        if node.op_type == "Transpose":
            steps.append(("Transpose", tuple(_attr(node, "perm", ()))))
        elif node.op_type == "Mul":
            c = [ix.const(x) for x in node.input if x != tensor]
            if len(c) != 1 or c[0] is None or c[0].size != 1:
                return None
            steps.append(("Mul", float(c[0].reshape(()))))
        elif node.op_type not in _TRANSPARENT:
            return steps, node, list(node.input).index(tensor), passed
        passed.append(node)
        tensor = node.output[0]
    return None


def _scores_to_output(mm1, mm2, ix: _Index, tokens: int, dim: int):
    """(the attention output tensor, nodes from the scores on) for MatMul -> Softmax -> MatMul -> Transpose -> Reshape."""
    to_softmax = _walk(mm1.output[0], ix)
    if to_softmax is None or to_softmax[0] or to_softmax[1].op_type != "Softmax":
        return None
    softmax = to_softmax[1]
    to_mm2 = _walk(softmax.output[0], ix)
    if _attr(softmax, "axis", -1) not in (-1, 3) or to_mm2 is None or to_mm2[0] or to_mm2[1:3] != (mm2, 0):
        return None
    out = _walk(mm2.output[0], ix)
    if out is None or out[0] != [("Transpose", _Q_PERM)] or out[1].op_type != "Reshape":
        return None
    reshape = out[1]
    shape = ix.const(reshape.input[1])
    if shape is None or len(shape) != 3 or list(shape[1:]) != [tokens, dim]:
        return None
    return reshape.output[0], [*to_softmax[3], softmax, *to_mm2[3], *out[3], reshape]


def _qattention(qkv, end: str, heads: int, dim: int, ix: _Index):
    """``QAttention(x_u8, W, bias, x_scale, W_scale, mask="", x_zero_point, W_zero_point)`` writing ``end``."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    bias = _opt(qkv, 6)
    if not bias:  # QAttention requires one
        bias = qkv.name + "/zero_bias"
        ix.graph.initializer.append(numpy_helper.from_array(np.zeros(3 * dim, np.float32), bias))
    inputs = [qkv.input[0], qkv.input[1], bias, qkv.input[2], qkv.input[3], "", _opt(qkv, 4), _opt(qkv, 5)]
    return onnx.helper.make_node(ATTENTION, inputs, [end], name=qkv.name + "/QAttention", domain=DOMAIN,
                                 num_heads=heads)


def _attr(node, name: str, default):
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)
