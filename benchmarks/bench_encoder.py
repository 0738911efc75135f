"""Image-encoder latency: ONNX Runtime vs torch eager, same weights, same run.

    python benchmarks/bench_encoder.py --artifacts coder-artifacts/ViT-B-32__none [--json]

Reports medians at batch 1 and 8, the ORT/torch speed ratio, and the encoder's
achieved GFLOPS as a percentage of this machine's fp32 matmul peak measured
in the same run (a large numpy matmul). Needs the [export] extra (torch).
"""

from __future__ import annotations

import numpy as np

from common import script  # also puts the repository on sys.path

from coder.bench import matmul_peak_gflops  # noqa: E402
from coder.timing import median_ms  # noqa: E402


def run(artifacts: str, repeats: int) -> dict:
    import torch

    from coder.export.pipeline import image_gflop
    from coder.export.weights import rebuild_from_manifest

    from coder.runtime.encoder import ImageEncoder

    enc = ImageEncoder.load(artifacts)
    manifest = enc.artifact.manifest
    model = rebuild_from_manifest(manifest)
    size = tuple(manifest["preprocess"]["size"])
    flops = image_gflop(model, size) * 1e9
    rows = []
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, *size)).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            t_torch = median_ms(lambda: model.visual(xt), repeats)
        t_ort = median_ms(lambda: enc.engine.run(x), repeats)
        gflops = flops * batch / (t_ort / 1e3) / 1e9
        rows.append({"batch": batch, "ort_ms": t_ort, "torch_ms": t_torch, "speedup_vs_torch": t_torch / t_ort,
                     "ort_gflops": gflops})
    peak = matmul_peak_gflops()  # last: OpenBLAS threads spin after a GEMM and would slow the rows above
    for row in rows:
        row["pct_of_matmul_peak"] = 100 * row["ort_gflops"] / peak
    return {"architecture": manifest["architecture"], "backend": enc.backend, "torch_threads": torch.get_num_threads(),
            "encoder_gflop_per_image": flops / 1e9, "matmul_peak_gflops": peak, "rows": rows}


def render(res: dict) -> None:
    print(f"{res['architecture']}  {res['encoder_gflop_per_image']:.2f} GFLOP/image  "
          f"matmul peak {res['matmul_peak_gflops']:.1f} GFLOPS  backend {res['backend']}")
    print(f"{'batch':>5} {'ORT ms':>9} {'torch ms':>9} {'ORT/torch':>10} {'GFLOPS':>8} {'% peak':>7}")
    for r in res["rows"]:
        print(f"{r['batch']:>5} {r['ort_ms']:>9.1f} {r['torch_ms']:>9.1f} {r['speedup_vs_torch']:>9.2f}x "
              f"{r['ort_gflops']:>8.1f} {r['pct_of_matmul_peak']:>6.1f}%")


if __name__ == "__main__":
    script(__doc__, run, render, repeats=10)
