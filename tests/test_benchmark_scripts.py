"""The benchmark scripts import and parse their options (they are run by hand, not in CI)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script):
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--artifacts" in res.stdout and "--json" in res.stdout


@pytest.mark.torch  # compares with torch eager
def test_encoder_benchmark_runs(tiny_artifact):
    script = next(p for p in SCRIPTS if p.name == "bench_encoder.py")
    res = subprocess.run([sys.executable, str(script), "--artifacts", str(tiny_artifact), "--repeats", "2", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    import json
    rows = json.loads(res.stdout)["rows"]
    assert [r["batch"] for r in rows] == [1, 8] and all(r["pct_of_matmul_peak"] > 0 for r in rows)


def test_fewshot_memory_benchmark_runs(tiny_artifact, tmp_path):
    """--mode memory end to end on a tiny problem: the streaming and all-in-memory adapters are identical."""
    import json
    import shutil

    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    build_bank(art, init_texts("cifar10"))
    script = next(p for p in SCRIPTS if p.name == "bench_fewshot.py")
    res = subprocess.run([sys.executable, str(script), "--artifacts", str(art), "--mode", "memory",
                          "--classes", "3", "--shots", "2", "--check-classes", "2", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["adapter_identical"] is True and r["full"]["n_support"] == 6 and r["check_streaming"]["n_support"] == 4
    assert r["full"]["peak_rss_mb"] > 0 and r["check_all_in_memory"]["peak_rss_mb"] > 0


def test_int8_benchmark_runs(tiny_artifact):
    """fp32, static and dynamic int8 in one interleaved run: static is batch-independent, dynamic is not."""
    import json

    script = next(p for p in SCRIPTS if p.name == "bench_int8.py")
    res = subprocess.run([sys.executable, str(script), "--artifacts", str(tiny_artifact), "--repeats", "2",
                          "--blocks", "2", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    rows = {(r["encoder"], r["batch"]): r for r in out["rows"]}
    assert set(rows) == {(e, b) for e in ("fp32", "int8 static", "int8 dynamic") for b in (1, 8)}
    assert rows["int8 static", 8]["batch1_vs_batch8_max_abs"] <= 1e-5 < rows["int8 dynamic", 8]["batch1_vs_batch8_max_abs"]
    assert rows["int8 static", 1]["min_cosine_vs_fp32"] >= 0.99 and out["int8_matmul_peak_gops"] > 0
    assert out["blocks"] == 2 and out["fp32_matmul_peak_gflops"] > 0
    assert all(r["pct_of_peak"] > 0 for r in out["rows"])
    assert rows["fp32", 1]["speedup_vs_fp32"] == 1.0 and rows["fp32", 1]["speedup_quartiles"] == [1.0, 1.0]


def test_cpu_engines_benchmark_runs_the_named_engines_against_onnx_runtime_fp32(tiny_artifact, private_copy):
    """--only keeps ORT fp32 and OpenVINO int8; the int8 row is batch-independent (static batch sizes)."""
    import json

    pytest.importorskip("openvino")
    art = private_copy(tiny_artifact, "engines", ".coder-cpu-choice")  # the run caches gates and a choice
    script = next(p for p in SCRIPTS if p.name == "bench_cpu_engines.py")
    res = subprocess.run([sys.executable, str(script), "--artifacts", str(art), "--rounds", "2", "--blocks", "2",
                          "--only", "OpenVINO int8", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    rows = {r["engine"]: r for r in out["rows"]}
    int8 = [n for n in rows if n.startswith("OpenVINO int8")]
    assert set(rows) == {"ORT fp32", *int8} and len(int8) >= 1 and out["heads"] == []
    assert all(rows[n]["backend"] == "openvino-int8" and rows[n]["batch_dependent"] <= 1e-5 for n in int8)
    assert rows["ORT fp32"]["b1_vs_ort_fp32"] == 1.0 and all(rows[n]["b8_ms"] > 0 for n in int8)
