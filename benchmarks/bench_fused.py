"""Does appending the CODER head to the encoder graph pay? Fused graph vs encoder + numpy head.

    python benchmarks/bench_fused.py --artifacts coder-artifacts/ViT-B-32__none [--backend cpu] [--json]

Same synthetic ImageNet-scale bank as bench_head.py (1000 classes, 20k pairs), the worst case
(tau = 1.01: every image reranks). Per batch size, medians of: the plain encoder + numpy stage 1 +
rerank, and the fused graph + the host-side gate; both from preprocessed pixels, same session
options, in one run. Also the head alone: numpy vs the head graph in ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx

from common import script  # also puts the repository on sys.path
from bench_head import C, _Bank, synthetic_rows

from coder.bench import median_ms  # noqa: E402
from coder.engines.head_graph import fuse_head, head_model  # noqa: E402
from coder.engines.ort import load_ort  # noqa: E402
from coder.manifest import load_artifact  # noqa: E402
from coder.runtime.encoder import l2_normalize  # noqa: E402
from coder.runtime.head import gate, rerank, stage1_scores  # noqa: E402
from coder.text_bank.fold import fold  # noqa: E402


def _sessions(artifacts: str, bank, precision: str, backend: str, tmp: str):
    art = load_artifact(artifacts)
    enc_path = art.encoder("image", precision)
    plain = load_ort(enc_path, backend, precision)
    head = head_model(bank, 5)
    onnx.save(head, f"{tmp}/head.onnx")
    onnx.save(fuse_head(onnx.load(str(enc_path)), head_model(bank, 5)), f"{tmp}/fused.onnx")
    return art, plain, load_ort(f"{tmp}/fused.onnx", backend, precision), load_ort(f"{tmp}/head.onnx", backend)


def blocks_ms(fns, repeats: int, rounds: int = 2) -> list[float]:
    """Per callable, the lowest of ``rounds`` block medians (A..A B..B C..C, twice).

    Not round-robin: each ONNX Runtime session keeps its own threads spinning for a while
    after a run, so alternating two sessions on a small CPU measures their contention,
    which a deployment running one of them never sees.
    """
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], median_ms(fn, repeats))
    return best


def run(artifacts: str, repeats: int, backend: str, precision: str) -> dict:
    import tempfile

    probe = load_artifact(artifacts)
    rows, emb = synthetic_rows(probe.embed_dim)
    bank = _Bank(fold(rows, emb, C))
    with tempfile.TemporaryDirectory() as tmp:
        art, plain, fused, head = _sessions(artifacts, bank, precision, backend, tmp)
        size = tuple(art.preprocess.size)
        out = {"architecture": art.architecture, "backend": fused.backend, "precision": precision, "classes": C,
               "pairs": int(len(bank.pair_vec)), "batches": []}
        for b in (1, 8, 32):
            x = np.random.default_rng(b).standard_normal((b, 3, *size)).astype(np.float32)

            def separate():
                f = l2_normalize(plain.run(x))
                return rerank(f, stage1_scores(f, bank), bank, tau=1.01, k=5).labels

            def one_call():
                _, _, top, gap, r = fused.run_all(x)
                return gate(top, gap, r, 1.01).labels

            assert np.array_equal(separate(), one_call())
            f = l2_normalize(plain.run(x))
            t_enc, t_sep, t_fused = blocks_ms([lambda: plain.run(x), separate, one_call], repeats)
            t_np = median_ms(lambda: rerank(f, stage1_scores(f, bank), bank, tau=1.01, k=5), repeats * 10)
            t_graph = median_ms(lambda: gate(*head.run_all(f)[2:], 1.01), repeats * 10)
            out["batches"].append({"batch": b, "encoder_only_ms": t_enc, "separate_ms": t_sep, "fused_ms": t_fused,
                                   "fused_speedup": t_sep / t_fused, "numpy_head_ms": t_np,
                                   "graph_head_ms": t_graph})
    return out


def render(r: dict) -> None:
    print(f"{r['architecture']} {r['precision']} on {r['backend']}, {r['classes']} classes, {r['pairs']} pairs")
    print("batch | encoder only ms | encoder+numpy head ms | fused graph ms | fused speed-up | numpy head ms"
          " | head graph ms")
    for b in r["batches"]:
        print(f"{b['batch']:5d} | {b['encoder_only_ms']:15.2f} | {b['separate_ms']:21.2f} | {b['fused_ms']:14.2f} | {b['fused_speedup']:13.3f}x"
              f" | {b['numpy_head_ms']:13.3f} | {b['graph_head_ms']:13.3f}")


if __name__ == "__main__":
    script(__doc__, run, render, repeats=20, backend="cpu", precision="fp32")
