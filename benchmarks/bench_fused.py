"""How should the CODER head run after the encoder? Two sessions vs one fused graph vs numpy.

    python benchmarks/bench_fused.py --artifacts coder-artifacts/ViT-B-32__none [--backend cpu] [--json]

Same synthetic ImageNet-scale bank as bench_head.py (1000 classes, 20k pairs), the worst case
(tau = 1.01: every image reranks). Per batch size, medians of, in one run and from the same
preprocessed pixels:

* ``separate``: the plain encoder + the numpy head (stage 1 + rerank);
* ``fused``: the encoder with the head appended, one graph (a full copy of the encoder's
  weights per bank; what the runtime used to write into every bank);
* ``two_sessions``: the encoder session + the head graph in its own one-thread session
  (what the runtime does now: nothing written, see coder/runtime/fused.py).

Also the largest |difference| of the two-session scores from the fused graph's, and whether
their labels agree. Goal: two sessions within 5 % of the fused graph at batch 1.
"""

from __future__ import annotations

import numpy as np
import onnx

from common import script  # also puts the repository on sys.path
from bench_head import C, _Bank, synthetic_rows

from coder.timing import blocks_ms, median_ms  # noqa: E402
from coder.engines.head_graph import fuse_head, head_model  # noqa: E402
from coder.engines.ort import load_ort  # noqa: E402
from coder.manifest import load_artifact  # noqa: E402
from coder.runtime.encoder import l2_normalize  # noqa: E402
from coder.runtime.fused import load_head  # noqa: E402
from coder.runtime.head import gate, rerank, stage1_scores  # noqa: E402
from coder.text_bank.fold import fold  # noqa: E402


def _sessions(artifacts: str, bank, precision: str, backend: str, tmp: str):
    art = load_artifact(artifacts)
    enc_path = art.encoder("image", precision)
    plain = load_ort(enc_path, backend, precision)
    onnx.save(fuse_head(onnx.load(str(enc_path)), head_model(bank, 5)), f"{tmp}/fused.onnx")
    return art, plain, load_ort(f"{tmp}/fused.onnx", backend, precision), load_head(bank, 5, backend)


def _batch(b: int, size, plain, fused, head, bank, repeats: int) -> dict:
    x = np.random.default_rng(b).standard_normal((b, 3, *size)).astype(np.float32)

    def separate():
        f = l2_normalize(plain.run(x))
        return rerank(f, stage1_scores(f, bank), bank, tau=1.01, k=5).labels

    def one_call():
        _, _, top, gap, r = fused.run_all(x)
        return gate(top, gap, r, 1.01).labels

    def two_sessions():
        _, _, top, gap, r = head.run_all(plain.run(x))
        return gate(top, gap, r, 1.01).labels

    a, c = fused.run_all(x), head.run_all(plain.run(x))
    diff = max(float(np.abs(p.astype(np.float64) - q).max()) for p, q in zip(a, c))
    same = bool(np.array_equal(one_call(), two_sessions()) and np.array_equal(one_call(), separate()))
    t = blocks_ms({"enc": lambda: plain.run(x), "sep": separate, "fused": one_call, "two": two_sessions}, repeats)
    t_enc, t_sep, t_fused, t_two = t["enc"], t["sep"], t["fused"], t["two"]
    f = l2_normalize(plain.run(x))
    t_graph = median_ms(lambda: head.run_all(f), repeats * 10)
    return {"batch": b, "encoder_only_ms": t_enc, "separate_ms": t_sep, "fused_ms": t_fused,
            "two_sessions_ms": t_two, "two_sessions_vs_fused": t_two / t_fused, "fused_speedup": t_sep / t_fused,
            "head_session_ms": t_graph, "max_abs_diff_vs_fused": diff, "labels_equal": same}


def run(artifacts: str, repeats: int, backend: str, precision: str) -> dict:
    import tempfile

    probe = load_artifact(artifacts)
    rows, emb = synthetic_rows(probe.embed_dim)
    bank = _Bank(fold(rows, emb, C))
    bank.class_names = [str(i) for i in range(C)]
    with tempfile.TemporaryDirectory() as tmp:
        art, plain, fused, head = _sessions(artifacts, bank, precision, backend, tmp)
        out = {"architecture": art.architecture, "backend": fused.backend, "precision": precision, "classes": C,
               "pairs": int(len(bank.pair_vec)), "batches": []}
        for b in (1, 8, 32):
            out["batches"].append(_batch(b, tuple(art.preprocess.size), plain, fused, head, bank, repeats))
    return out


def render(r: dict) -> None:
    print(f"{r['architecture']} {r['precision']} on {r['backend']}, {r['classes']} classes, {r['pairs']} pairs")
    print("batch | encoder ms | enc+numpy ms | fused ms | two sessions ms | two/fused | head ms | max|diff| | labels")
    for b in r["batches"]:
        print(f"{b['batch']:5d} | {b['encoder_only_ms']:10.2f} | {b['separate_ms']:12.2f} | {b['fused_ms']:8.2f} |"
              f" {b['two_sessions_ms']:15.2f} | {b['two_sessions_vs_fused']:8.3f}x | {b['head_session_ms']:7.3f} |"
              f" {b['max_abs_diff_vs_fused']:9.2e} | {'same' if b['labels_equal'] else 'DIFFER'}")


if __name__ == "__main__":
    script(__doc__, run, render, repeats=20, backend="cpu", precision="fp32")
