"""coder bench: rows for every stage and backend that loads, named by what ran; skipped ones explained."""

import json

import pytest

from typer.testing import CliRunner

from coder.bench import matmul_peak_gflops, run_bench
from coder.cli import app


@pytest.mark.torch  # compares with torch eager
def test_run_bench_rows(tiny_artifact):
    res = run_bench(tiny_artifact, batches=(1, 2), repeats=3)
    stages = {(r["backend"], r["stage"], r["batch"]) for r in res["rows"]}
    for b in (1, 2):
        assert ("pil+numpy", "decode+pre", b) in stages
        for precision in ("fp32", "fp16", "int8"):
            assert (f"ort-cpu {precision}", "encoder", b) in stages
        assert ("torch-eager fp32", "encoder", b) in stages
    assert all(r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in res["rows"])
    encoder_rows = [r for r in res["rows"] if r["stage"] == "encoder"]
    assert all(0 < r["pct_of_matmul_peak"] < 1000 for r in encoder_rows)
    r = encoder_rows[0]  # GFLOPS achieved = GFLOP/image * images/s
    assert abs(r["pct_of_matmul_peak"] - 100 * res["image_gflop"] * r["images_per_s"] / res["matmul_peak_gflops"]) < 1e-6
    assert res["image_gflop"] > 0 and res["matmul_peak_gflops"] > 0
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "ort-cuda fp32" in res["skipped"]


def test_head_rows_with_a_bank(tiny_artifact, tmp_path):
    import shutil

    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    build_bank(art, init_texts("cifar10"))
    res = CliRunner().invoke(app, ["bench", str(art), "--batches", "1", "--repeats", "2", "--no-torch", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    stages = {r["stage"] for r in out["rows"]}
    assert {"stage 1", "rerank", "encoder", "decode+pre", "encoder+head"} <= stages
    pipelines = {r["backend"] for r in out["rows"] if r["stage"] == "encoder+head"}
    assert {"ort-cpu fp32 + numpy head", "ort-cpu fp32 fused head"} <= pipelines
    assert "tensorrt-native fp16" in out["skipped"]


def test_matmul_peak_is_positive():
    assert matmul_peak_gflops(n=256, repeats=2) > 0


def test_bench_on_an_fp32_only_artifact(tiny_fp32_artifact):
    """The README's main command exports fp32 only: bench runs what exists and explains the rest."""
    res = CliRunner().invoke(app, ["bench", str(tiny_fp32_artifact), "--batches", "1", "--repeats", "2",
                                   "--no-torch", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    pipelines = {r["backend"] for r in out["rows"] if r["stage"] == "encoder+head"}
    assert "ort-cpu fp32 fused head" in pipelines
    assert not any("fp16" in r["backend"] for r in out["rows"])
    assert "tensorrt-native fp16 fused head" in out["skipped"]


def _fake_result() -> dict:
    rows = []
    for backend in ("pil+numpy", "ort-cpu fp32", "ort-cpu fp32 fused head", "ort-cuda fp16 + numpy head",
                    "tensorrt-native fp16 fused head", "torch-eager fp32"):
        for b in (1, 8, 32):
            rows.append({"backend": backend, "stage": "encoder+head", "batch": b, "p50_ms": 1234.56 + b,
                         "p90_ms": 2345.67 + b, "p99_ms": 13456.78 + b, "images_per_s": 812.3,
                         "pct_of_matmul_peak": 87.0})
    return {"architecture": "ViT-B-32", "matmul_peak_gflops": 206.0, "rows": rows, "skipped": {}}


def test_bench_table_is_readable_at_80_columns(monkeypatch):
    import io
    import re

    from rich.console import Console

    from coder.cli import predict as cli_predict

    buf = io.StringIO()
    monkeypatch.setattr(cli_predict, "out", Console(file=buf, width=80, emoji=False, highlight=False))
    result = _fake_result()
    cli_predict._print_bench(result)
    lines = buf.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    for r in result["rows"]:  # every number of every row, whole, on one line
        want = [f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['images_per_s']:.1f}", "87%"]
        assert any(all(w in line for w in want) and re.search(rf"\b{r['batch']}\b", line) for line in lines)
    first = "".join(line.split("  ")[0].strip() for line in lines[3:] if line.strip())
    assert "tensorrt-nativefp16fusedhead" in first.replace(" ", "")  # folded, never cut with "…"
    assert "%CPU" in buf.getvalue()
    assert "…" not in buf.getvalue()


def test_bench_bank_option(tiny_fp32_artifact):
    args = ["bench", str(tiny_fp32_artifact), "--batches", "1", "--repeats", "2", "--no-torch", "--json"]
    res = CliRunner().invoke(app, args + ["--bank", "cifar10"])
    assert res.exit_code == 0, res.output
    assert any(r["stage"] == "rerank" for r in json.loads(res.stdout)["rows"])
    from coder.cli.common import EXIT_CODES
    from coder.errors import ArtifactError

    res = CliRunner().invoke(app, args + ["--bank", "nope"])
    assert res.exit_code == next(c for cls, c, _ in EXIT_CODES if cls is ArtifactError)
    assert "no bank 'nope'" in res.output


def test_bench_without_onnx_runtime_is_exit_6(tiny_fp32_artifact, monkeypatch):
    """With no engine installed every encoder row is skipped: that is a backend error (exit 6), not exit 0."""
    import sys

    from coder.cli.common import EXIT_CODES
    from coder.errors import BackendError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    monkeypatch.setitem(sys.modules, "openvino", None)  # nor the other CPU engine: no row can run
    res = CliRunner().invoke(app, ["bench", str(tiny_fp32_artifact), "--batches", "1", "--repeats", "1",
                                   "--no-torch"])
    assert res.exit_code == next(c for cls, c, _ in EXIT_CODES if cls is BackendError), res.output
    assert "no backend could run the image encoder" in res.output


def test_int8_rows_are_a_share_of_the_int8_peak(tiny_artifact):
    from coder.bench import int8_matmul_peak_gops

    assert int8_matmul_peak_gops(n=256, repeats=2) > 0
    res = run_bench(tiny_artifact, batches=(1,), repeats=2, backends=("cpu",), with_torch=False)
    assert res["int8_matmul_peak_gops"] > 0
    rows = {r["backend"]: r for r in res["rows"] if r["stage"] == "encoder"}
    for name, peak in (("ort-cpu int8", res["int8_matmul_peak_gops"]), ("ort-cpu fp32", res["matmul_peak_gflops"])):
        r = rows[name]
        assert abs(r["pct_of_matmul_peak"] - 100 * res["image_gflop"] * r["images_per_s"] / peak) < 1e-6
