"""int8 image encoder vs fp32 (and vs the dynamic quantization it replaced): one run, timed in blocks.

    coder export -b ViT-B-32 --pretrained none --int8 --classes none --out /tmp/b32
    python benchmarks/bench_int8.py --artifacts /tmp/b32 [--repeats 15] [--json]

The artifact's fp32 and static int8 (``image_encoder.int8.onnx``, the CPU file) encoders run on
ONNX Runtime's CPU provider, and a dynamically quantized copy of the fp32 file is made here for
comparison (MatMul/Gemm, QInt8 weights per tensor: what ``--int8`` wrote before). Each encoder is
timed in blocks of ``--repeats`` calls per batch, twice, keeping the best block median
(:mod:`coder.timing`: each ONNX Runtime session's threads spin after a run, so round-robin timing
measured three sessions contending, which a deployment never sees); reported: those medians and
their ratios. Also reported: per-image cosine to fp32 on
held-out synthetic scenes (min), how much an image's embedding changes between batch 1 and a
batch of 8 (max |diff|), and the int8 encoder's achieved GOPS as a share of this machine's int8
GEMM peak (ONNX Runtime ``MatMulInteger``, measured last in the same run).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from common import script  # also puts the repository on sys.path

from coder.bench import int8_matmul_peak_gops, matmul_peak_gflops  # noqa: E402
from coder.timing import blocks_ms  # noqa: E402

BATCHES = (1, 8)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def _encoders(artifacts: str, tmp: Path) -> dict:
    from coder.engines.ort import load_ort
    from coder.export.onnx_export import quantize_int8
    from coder.manifest import load_artifact

    art = load_artifact(artifacts)
    dynamic = tmp / "image_encoder.int8-dynamic.onnx"
    quantize_int8(art.encoder("image", "fp32"), dynamic)
    return {"fp32": load_ort(art.encoder("image", "fp32"), "cpu", "fp32"),
            "int8 static": load_ort(art.encoder("image", "int8", "cpu"), "cpu", "int8"),
            "int8 dynamic": load_ort(dynamic, "cpu", "int8")}


def run(artifacts: str, repeats: int) -> dict:
    from coder.export.int8 import held_out_pixels
    from coder.manifest import load_artifact

    art = load_artifact(artifacts)
    x = held_out_pixels(art.preprocess, max(BATCHES))
    with tempfile.TemporaryDirectory() as d:
        encs = _encoders(artifacts, Path(d))
        ms = blocks_ms({(name, b): (lambda e=enc, b=b: e.run(x[:b])) for name, enc in encs.items() for b in BATCHES},
                       repeats)
        full = {name: enc.run(x) for name, enc in encs.items()}
        alone = {name: np.concatenate([enc.run(x[i:i + 1]) for i in range(len(x))]) for name, enc in encs.items()}
    flops = art.manifest.get("image_gflop")
    int8_peak, fp32_peak = int8_matmul_peak_gops(), matmul_peak_gflops()  # last: BLAS threads spin after
    rows = []
    for name in encs:
        for b in BATCHES:
            gops = flops * b / (ms[name, b] / 1e3) if flops else None
            peak = fp32_peak if name == "fp32" else int8_peak
            rows.append({"encoder": name, "batch": b, "median_ms": ms[name, b],
                         "speedup_vs_fp32": ms["fp32", b] / ms[name, b],
                         "min_cosine_vs_fp32": float(_cosines(full[name], full["fp32"]).min()),
                         "batch1_vs_batch8_max_abs": float(np.abs(alone[name] - full[name]).max()),
                         "pct_of_peak": 100 * gops / peak if gops and peak else None})
    return {"architecture": art.architecture, "repeats": repeats, "images": int(len(x)),
            "image_gflop": flops, "fp32_matmul_peak_gflops": fp32_peak, "int8_matmul_peak_gops": int8_peak,
            "static_vs_dynamic": {b: ms["int8 dynamic", b] / ms["int8 static", b] for b in BATCHES},
            "int8": art.manifest.get("int8", {}).get("calibration", {}).get("method"), "rows": rows}


def render(res: dict) -> None:
    print(f"{res['architecture']}: blocks of {res['repeats']} calls, best of 2; peaks: fp32 "
          f"{res['fp32_matmul_peak_gflops']:.0f} GFLOPS, int8 {res['int8_matmul_peak_gops']:.0f} GOPS; "
          f"calibration method {res['int8']}")
    print(f"{'encoder':>13} {'batch':>5} {'ms':>8} {'x fp32':>7} {'min cos':>9} {'b1 vs b8':>9} {'% peak':>7}")
    for r in res["rows"]:
        pct = f"{r['pct_of_peak']:6.1f}%" if r["pct_of_peak"] is not None else "      -"
        print(f"{r['encoder']:>13} {r['batch']:>5} {r['median_ms']:>8.1f} {r['speedup_vs_fp32']:>6.2f}x "
              f"{r['min_cosine_vs_fp32']:>9.6f} {r['batch1_vs_batch8_max_abs']:>9.1e} {pct}")
    print("static vs dynamic (dynamic ms / static ms): "
          + ", ".join(f"batch {b}: {v:.2f}x" for b, v in res["static_vs_dynamic"].items()))


if __name__ == "__main__":
    script(__doc__, run, render, repeats=15)
