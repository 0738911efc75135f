"""CPU engines side by side on one image encoder, in one run, each timed in blocks.

    python benchmarks/bench_cpu_engines.py --artifacts coder-artifacts/ViT-B-32__none \
        [--rounds 10] [--blocks 6] [--only "OpenVINO int8,ORT int8"] [--json]

Engines: ONNX Runtime fp32 (the reference), ONNX Runtime int8 and OpenVINO int8 (its NNCF IR at the hint
its gate allows, what ``--backend openvino --precision int8`` runs; if the artifact has int8 files),
OpenVINO at the f32 hint, OpenVINO at its reduced hint (bf16 on a CPU with BF16) and OpenVINO's
default (no precision hint: what OpenVINO picks by itself, with the latency hint and compile cache
coder always sets). Each engine is timed in blocks of ``--rounds``
calls, in ``--blocks`` rounds per batch size (:func:`coder.timing.rounds_ms`: round-robin timing measured
ONNX Runtime's spinning threads slowing whichever engine ran next). ``ms`` is an engine's best block
median; its ratio to ONNX Runtime fp32 is the median over rounds of the ratio of two blocks of the same
round (quartiles in ``--json``), which share the VM's phase. ``cosine`` is each engine's minimum
per-image cosine to ONNX Runtime fp32 on the 16 validation
scenes; ``batch_dependent`` is the largest change of an image's embedding between batch 1 and batch 8.
With a bank (and no ``--only``), the CODER head graph after the
OpenVINO encoder is timed on ONNX Runtime (one thread, what coder runs) and on OpenVINO f32.
``--only`` keeps ONNX Runtime fp32 and the named engines, so more rounds fit in the same time.
Also reports the choice ``--backend auto`` makes here (measured if not cached).
"""

from __future__ import annotations

import numpy as np

from common import script  # also puts the repository on sys.path

from coder.bench import matmul_peak_gflops  # noqa: E402
from coder.timing import rounds_ms  # noqa: E402


def _engines(art) -> dict:
    """name -> engine (``run(x)``), every CPU engine that loads here."""
    from coder.engines import openvino as ov
    from coder.engines.ort import load_ort
    from coder.runtime.openvino_precision import load_openvino_encoder
    from coder.runtime.openvino_precision import model_sha256 as openvino_model_sha256

    def sha(p):
        return art.manifest["files"][p.name]["sha256"]

    fp32 = art.encoder("image", "fp32")
    reduced = ov.reduced_hint("CPU")
    out = {"ORT fp32": load_ort(fp32, "cpu")}
    if "int8" in art.variants("image"):
        p = art.encoder("image", "int8")
        out["ORT int8"] = load_ort(p, "cpu", "int8")
        # What `--backend openvino --precision int8` runs: the NNCF IR (else the QDQ file), at the gated hint.
        enc = load_openvino_encoder(art, "int8", "openvino")
        kind = "" if enc.path.suffix == ".xml" else ", QDQ file"
        out[f"OpenVINO int8 ({enc.precision_hint}{kind})"] = enc
        if reduced and enc.precision_hint != reduced:  # the gate kept f32: what the reduced hint would have given
            out[f"OpenVINO int8 ({reduced}{kind}, gate failed)"] = ov.load_openvino(
                enc.path, "openvino", reduced, None, openvino_model_sha256(art, enc.path.name), int8=True)
    out["OpenVINO f32"] = ov.load_openvino(fp32, "openvino", "f32", None, sha(fp32))
    if reduced:
        out[f"OpenVINO {reduced}"] = ov.load_openvino(fp32, "openvino", reduced, None, sha(fp32))
    out["OpenVINO default"] = ov.load_openvino(fp32, "openvino", None, None, sha(fp32))
    return out


def _cosines(engines: dict, pixels: np.ndarray, ref: np.ndarray) -> dict:
    from coder.vectors import l2_normalize

    out = {}
    for name, eng in engines.items():
        b8 = l2_normalize(np.concatenate([eng.run(pixels[i:i + 8]) for i in range(0, len(pixels), 8)]))
        b1 = l2_normalize(np.concatenate([eng.run(pixels[i:i + 1]) for i in range(len(pixels))]))
        out[name] = {"cosine": float(np.sum(b8 * ref, 1).min()), "batch_dependent": float(np.abs(b8 - b1).max())}
    return out


def _timed(engines: dict, xs: dict, repeats: int, blocks: int) -> dict:
    """{batch: {engine: Rounds}}: engines timed in blocks, ``blocks`` rounds per batch size
    (:func:`coder.timing.rounds_ms`)."""
    return {b: rounds_ms({n: (lambda e=e, x=x: e.run(x)) for n, e in engines.items()}, repeats, blocks)
            for b, x in xs.items()}


def _ratios(ms: dict, name: str) -> dict:
    """``b1_vs_ort_fp32`` (median over rounds) and ``b1_quartiles``, per batch size."""
    out = {}
    for b, rounds in ms.items():
        median, q1, q3 = rounds[name].speedup_over(rounds["ORT fp32"])
        out.update({f"b{b}_vs_ort_fp32": median, f"b{b}_quartiles": [q1, q3]})
    return out


def _head_rows(art, engines: dict, xs: dict, rounds: int, blocks: int) -> list[dict]:
    """The bank's head graph after the OpenVINO encoder: ONNX Runtime (1 thread) vs OpenVINO f32."""
    from coder.bench import _bank_or_none
    from coder.engines import openvino as ov
    from coder.engines.head_graph import head_model
    from coder.runtime.fused import HEAD_THREADS, load_head

    bank = _bank_or_none(art)
    if bank is None:
        return []
    heads = {"ORT cpu (1 thread)": load_head(bank, bank.k, "openvino"),
             "OpenVINO f32": ov.load_openvino(head_model(bank, bank.k).SerializeToString(), "openvino", "f32",
                                              HEAD_THREADS)}
    enc = engines.get("OpenVINO bf16", engines["OpenVINO f32"])
    feats = {b: enc.run(x) for b, x in xs.items()}
    t = _timed(heads, feats, rounds * 5, blocks)
    return [{"head": h, "batch": b, "ms": t[b][h].best_ms} for h in heads for b in xs]


def _select(engines: dict, only: str) -> dict:
    """``--only "OpenVINO int8"``: ONNX Runtime fp32 (the reference) and the engines whose name contains one
    of the comma-separated words; every engine when empty. Fewer engines, more rounds in the same time."""
    words = [w.strip() for w in only.split(",") if w.strip()]
    return {n: e for n, e in engines.items() if not words or n == "ORT fp32" or any(w in n for w in words)}


def run(artifacts: str, rounds: int, blocks: int, only: str) -> dict:
    from coder.engines import openvino as ov
    from coder.manifest import load_artifact
    from coder.runtime.engine_build import reference_pixels
    from coder.vectors import l2_normalize

    art = load_artifact(artifacts)
    engines = _select(_engines(art), only)
    pixels = reference_pixels(art, 16)
    ref = l2_normalize(np.concatenate([engines["ORT fp32"].run(pixels[i:i + 8]) for i in range(0, 16, 8)]))
    quality = _cosines(engines, pixels, ref)
    size = art.preprocess.size
    xs = {b: np.random.default_rng(b).standard_normal((b, 3, *size)).astype(np.float32) for b in (1, 8)}
    ms = _timed(engines, xs, rounds, blocks)
    heads = [] if only else _head_rows(art, engines, xs, rounds, blocks)
    peak = matmul_peak_gflops()  # last: BLAS threads spin after a GEMM
    rows = [{"engine": n, "backend": e.backend, **quality[n],
             **{f"b{b}_ms": ms[b][n].best_ms for b in xs}, **_ratios(ms, n)} for n, e in engines.items()]
    from coder.runtime.cpu_choice import choose_cpu_engine
    from coder.runtime.encoder import ImageEncoder
    from coder.runtime.openvino_precision import cpu_identity

    choice = choose_cpu_engine(art, "fp32", None, lambda e: ImageEncoder.load(artifacts, "fp32", e))
    return {"architecture": art.architecture, "openvino": ov.version(), "rounds": rounds,
            "blocks": blocks, "only": only, "cpu": cpu_identity(),
            "matmul_peak_gflops": peak, "rows": rows, "heads": heads, "auto": choice.describe()}


def render(res: dict) -> None:
    print(f"{res['architecture']}  OpenVINO {res['openvino']}  {res['cpu']['model']} ({res['cpu']['cores']} cores)  "
          f"engines timed in blocks of {res['rounds']} calls, {res['blocks']} rounds; x: median ratio within rounds")
    print(f"{'engine':<18} {'backend':<16} {'b1 ms':>8} {'b8 ms':>8} {'b1 x':>6} {'b8 x':>6} {'cosine':>8} "
          f"{'b1 vs b8':>9}")
    for r in res["rows"]:
        print(f"{r['engine']:<18} {r['backend']:<16} {r['b1_ms']:>8.1f} {r['b8_ms']:>8.1f} "
              f"{r['b1_vs_ort_fp32']:>5.2f}x {r['b8_vs_ort_fp32']:>5.2f}x {r['cosine']:>8.5f} "
              f"{r['batch_dependent']:>9.1e}")
    for h in res["heads"]:
        print(f"head after the OpenVINO encoder on {h['head']}: batch {h['batch']} {h['ms']:.3f} ms")
    print(f"--backend auto here: {res['auto']}")


if __name__ == "__main__":
    script(__doc__, run, render, rounds=10, blocks=6, only="")
