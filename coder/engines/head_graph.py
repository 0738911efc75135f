"""The folded CODER head as an ONNX graph, and the image encoder with that head appended.

One call of the fused graph maps a pixel batch to everything stage 1 and the rerank need:

=================  ===========  ==========================================================
output             shape        meaning (METHOD.md)
=================  ===========  ==========================================================
``embedding``      (B,D) f32    unit image embedding ``f`` (for adapters and explain)
``stage1``         (B,C) f32    ``100 * (sum_G f.t + max_N f.t) / (|G| + 1)``
``topk_ids``       (B,K) i64    stage-1 top-K, ties to the lower class id
``gap``            (B,) f32     softmax ``p1 - p2`` of stage 1 (``p1`` when K = 1)
``rerank``         (B,K) f32    ``r(c)`` of each top-K class, computed for every image
=================  ===========  ==========================================================

The gate (``gap < tau``) and the final argmax stay on the host: they are a few
comparisons on (B,K) numbers, and keeping ``tau`` out of the graph lets one engine
serve any ``--tau``.

Built from the bank arrays with ``onnx.helper`` (no torch). Everything is fp32:
the head is a small share of the work and fp32 keeps scores within 1e-4 of the
numpy head. The segment max and the pair lookup are written as Gather + reduce
over padded index tables, ops that ONNX Runtime and TensorRT's ONNX parser both
take, instead of ScatterElements reductions.

>>> model = fuse_head(onnx.load("image_encoder.fp32.onnx"), head_model(bank, k=5))  # doctest: +SKIP
"""

from __future__ import annotations

from collections import deque

import numpy as np

OPSET = 17
HEAD_INPUT = "head_in"
OUTPUTS = ("embedding", "stage1", "topk_ids", "gap", "rerank")
HEAD_FORMAT_VERSION = 1  # bump when the graph below changes: it invalidates fused engines


def clamp_k(k: int, n_classes: int) -> int:
    """The rerank's candidate count, as the numpy head uses it: ``clamp_k(5, 3) == 3``."""
    return max(1, min(int(k), n_classes))


def segment_table(n_class: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, M) int64 indices into the name/synonym rows of each class, padded with its first row.

    ``segment_table([0, 0, 1], 2) == [[0, 1], [2, 2]]``: max over a row of the gathered
    similarities is the segment max, and repeating a real row leaves the max unchanged.
    """
    counts = np.bincount(n_class, minlength=n_classes)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    width = max(int(counts.max()), 1)
    offsets = np.minimum(np.arange(width)[None, :], np.maximum(counts, 1)[:, None] - 1)
    return (starts[:, None] + offsets).astype(np.int64)


def partner_tables(pair_from: np.ndarray, pair_to: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class c: the classes c' with a stored pair (c -> c') and that pair's row, padded.

    Returns ``(partners, rows)``, both (C, M) int64, padding ``-1`` / ``0``. A class-by-class
    table would need C*C entries (4 MB at ImageNet scale, 1.7 GB for 21k classes); this one
    needs C * (most pairs of one class).
    """
    order = np.lexsort((pair_to, pair_from))
    counts = np.bincount(pair_from, minlength=n_classes)
    width = max(int(counts.max()) if len(counts) else 0, 1)
    partners = np.full((n_classes, width), -1, np.int64)
    rows = np.zeros((n_classes, width), np.int64)
    slot = np.arange(len(order)) - np.r_[0, np.cumsum(counts)[:-1]][pair_from[order]]
    partners[pair_from[order], slot] = pair_to[order]
    rows[pair_from[order], slot] = order
    return partners, rows


class _Graph:
    """A tiny builder: named constants and nodes, auto-named outputs."""

    def __init__(self, opset: int):
        self.nodes, self.inits, self._n, self.opset = [], [], 0, opset

    def reduce_max(self, x: str, axis: int) -> str:
        """ReduceMax took ``axes`` as an attribute until opset 18, as an input since."""
        if self.opset < 18:
            return self.op("ReduceMax", x, axes=[axis], keepdims=0)
        return self.op("ReduceMax", x, self.const(f"head_axis_{axis}", np.array([axis], np.int64)), keepdims=0)

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        from onnx import helper

        self._n += 1
        out = out or f"head_{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"head_{self._n}", **attrs))
        return out


def _stage1(g: _Graph, f: str, bank, n_classes: int) -> str:
    """One MatMul against [G_sum | N]^T, then the segment max over each class's N rows."""
    w = np.concatenate([bank.g_sum, bank.n_emb]).T.astype(np.float32)
    sims = g.op("MatMul", f, g.const("head_w", w))
    from onnx import helper

    parts = ["head_g", "head_n"]
    splits = np.array([n_classes, len(bank.n_emb)], np.int64)
    g.nodes.append(helper.make_node("Split", [sims, g.const("head_splits", splits)], parts, name="head_split", axis=1))
    gathered = g.op("Gather", parts[1], g.const("head_segments", segment_table(bank.n_class, n_classes)), axis=1)
    n_max = g.reduce_max(gathered, 2)
    scale = (100.0 / (bank.g_count.astype(np.float64) + 1.0)).astype(np.float32)
    return g.op("Mul", g.op("Add", parts[0], n_max), g.const("head_scale", scale), out="stage1")


def _gap(g: _Graph, s1: str, values: str, k: int) -> str:
    """softmax p1 - p2 = (1 - exp(v2 - v1)) / sum exp(s - v1); p1 alone when K = 1."""
    v1 = g.op("Slice", values, g.const("head_0", np.array([0], np.int64)), g.const("head_1", np.array([1], np.int64)),
              g.const("head_ax1", np.array([1], np.int64)))
    denom = g.op("ReduceSum", g.op("Exp", g.op("Sub", s1, v1)), g.const("head_ax1b", np.array([1], np.int64)),
                 keepdims=1)
    if k > 1:
        v2 = g.op("Slice", values, "head_1", g.const("head_2", np.array([2], np.int64)), "head_ax1")
        num = g.op("Sub", g.const("head_one", np.array(1.0, np.float32)), g.op("Exp", g.op("Sub", v2, v1)))
    else:
        num = g.const("head_one", np.array(1.0, np.float32))
    return g.op("Squeeze", g.op("Div", num, denom), "head_ax1", out="gap")


def _rerank(g: _Graph, f: str, top: str, bank, n_classes: int, k: int) -> str:
    """r(c) = 1/(K-1) sum_{c'} [f.t(c,c') - f.t(c',c)] over candidate pairs stored both ways.

    Only the pair vectors of the K candidates' partner lists are gathered and projected
    (B*K*M rows, not all P: at ImageNet scale P*D is 41 MB of memory traffic per call).
    For candidates a_i, a_j the pair (a_i -> a_j) is found by comparing a_j with a_i's
    partner list: (B,K,K,M) booleans, at most one true per (i,j).
    """
    partners, rows = partner_tables(bank.pair_from, bank.pair_to, n_classes)
    m = partners.shape[1]
    cand_partners = g.op("Gather", g.const("head_partners", partners), top, axis=0)  # (B,K,M)
    cand_rows = g.op("Gather", g.const("head_pair_rows", rows), top, axis=0)  # (B,K,M)
    vecs = g.op("Gather", g.const("head_pair_vec", bank.pair_vec.astype(np.float32)), cand_rows, axis=0)
    batch = g.op("Shape", top, start=0, end=1)
    flat_shape = g.op("Concat", batch, g.const("head_km_d", np.array([k * m, bank.pair_vec.shape[1]], np.int64)),
                      axis=0)
    f_col = g.op("Unsqueeze", f, g.const("head_ax2f", np.array([2], np.int64)))  # (B,D,1)
    vals = g.op("MatMul", g.op("Reshape", vecs, flat_shape), f_col)  # (B,K*M,1)
    km_shape = g.op("Concat", batch, g.const("head_k_1_m", np.array([k, 1, m], np.int64)), axis=0)
    vals = g.op("Reshape", vals, km_shape)  # (B,K,1,M)
    hit = g.op("Equal", g.op("Unsqueeze", cand_partners, g.const("head_ax2", np.array([2], np.int64))),
               g.op("Unsqueeze", top, g.const("head_ax13", np.array([1, 3], np.int64))))  # (B,K,K,M)
    hit = g.op("Cast", hit, to=1)  # FLOAT
    ax3 = g.const("head_ax3", np.array([3], np.int64))
    fwd = g.op("ReduceSum", g.op("Mul", hit, vals), ax3, keepdims=0)  # f.t(a_i -> a_j), 0 if absent
    has = g.op("ReduceSum", hit, ax3, keepdims=0)  # 1 where (a_i -> a_j) is stored
    bwd = g.op("Transpose", fwd, perm=[0, 2, 1])
    both = g.op("Mul", has, g.op("Transpose", has, perm=[0, 2, 1]))
    bracket = g.op("Mul", both, g.op("Sub", fwd, bwd))
    total = g.op("ReduceSum", bracket, g.const("head_ax2b", np.array([2], np.int64)), keepdims=0)
    return g.op("Div", total, g.const("head_km1", np.array(float(k - 1), np.float32)), out="rerank")


def head_model(bank, k: int, opset: int = OPSET, input_name: str = HEAD_INPUT):
    """(B,D) raw image embeddings -> the five outputs above, as an ``onnx.ModelProto``.

    ``k`` is clamped to the number of classes, as the numpy head does.
    """
    from onnx import TensorProto, helper

    n_classes = len(bank.g_count)
    dim = bank.g_sum.shape[1]
    k = clamp_k(k, n_classes)
    g = _Graph(opset)
    sq = g.op("ReduceSum", g.op("Mul", input_name, input_name), g.const("head_axm1", np.array([-1], np.int64)),
              keepdims=1)
    norm = g.op("Max", g.op("Sqrt", sq), g.const("head_eps", np.array(1e-12, np.float32)))
    f = g.op("Div", input_name, norm, out="embedding")
    s1 = _stage1(g, f, bank, n_classes)
    values = g.op("TopK", s1, g.const("head_k", np.array([k], np.int64)), axis=1, largest=1, sorted=1,
                  out="head_topk_values")
    g.nodes[-1].output.append("topk_ids")
    _gap(g, s1, values, k)
    if len(bank.pair_vec) and k > 1:
        _rerank(g, f, "topk_ids", bank, n_classes, k)
    else:  # no pairs stored, or nothing to rerank among: r(c) = 0
        g.op("Mul", values, g.const("head_zero", np.array(0.0, np.float32)), out="rerank")
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    outputs = [helper.make_tensor_value_info("embedding", f32, ["batch", dim]),
               helper.make_tensor_value_info("stage1", f32, ["batch", n_classes]),
               helper.make_tensor_value_info("topk_ids", i64, ["batch", k]),
               helper.make_tensor_value_info("gap", f32, ["batch"]),
               helper.make_tensor_value_info("rerank", f32, ["batch", k])]
    graph = helper.make_graph(g.nodes, "coder_head", [helper.make_tensor_value_info(input_name, f32, ["batch", dim])],
                              outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="coder")


def fuse_head(encoder, head):
    """Append ``head`` to an image-encoder ``ModelProto`` (modified in place and returned).

    The encoder's output feeds the head's input; the graph outputs become the head's.
    Nodes are re-sorted topologically: the fp16 converter appends its input Casts at the
    end of the node list, which ONNX Runtime tolerates but the ONNX spec does not.
    """
    enc_out, head_in = encoder.graph.output[0].name, head.graph.input[0].name
    nodes = list(encoder.graph.node)
    for node in head.graph.node:
        node.input[:] = [enc_out if x == head_in else x for x in node.input]
        nodes.append(node)
    g = encoder.graph
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {t.name for t in head.graph.initializer}
    del g.node[:]
    g.node.extend(_toposort(nodes, known))
    g.initializer.extend(head.graph.initializer)
    del g.output[:]
    g.output.extend(head.graph.output)
    return encoder


def _toposort(nodes: list, known: set[str]) -> list:
    """Kahn's algorithm over tensor names, stable for nodes already in order."""
    waiting: dict[str, list[int]] = {}
    missing = []
    for i, node in enumerate(nodes):
        need = {x for x in node.input if x and x not in known}
        missing.append(len(need))
        for x in need:
            waiting.setdefault(x, []).append(i)
    producers = {o for node in nodes for o in node.output}
    for i, node in enumerate(nodes):  # inputs nobody produces (optional/empty): not waited on
        missing[i] -= len({x for x in node.input if x and x not in known and x not in producers})
    ready = deque(i for i, m in enumerate(missing) if m == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(nodes[i])
        for out in nodes[i].output:
            for j in waiting.pop(out, []):
                missing[j] -= 1
                if missing[j] == 0:
                    ready.append(j)
    if len(order) != len(nodes):
        raise ValueError(f"graph has a cycle or dangling inputs ({len(nodes) - len(order)} nodes unplaced)")
    return order
