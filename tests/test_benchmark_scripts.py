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
