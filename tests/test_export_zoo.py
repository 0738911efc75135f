"""benchmarks/bench_backbones.py: rows, per-row cache (resume), rows that do not export say why."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch  # the zoo script exports with torch/open_clip

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_backbones.py"


@pytest.fixture(scope="module")
def zoo():
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_backbones", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_cache_and_resume(zoo, tiny_arch, tmp_path, monkeypatch, capsys):
    opts = dict(repeats=2, redo=0, offline_tokenizer=0, keep=0, table_only=0)
    res = zoo.run(str(tmp_path), models=f"{tiny_arch},ViT-B-16-SigLIP", **opts)
    row, failed = res["rows"][tiny_arch], res["rows"]["ViT-B-16-SigLIP"]
    assert row["int8"] and row["image_fp32_max_abs"] <= 1e-4 and row["image_fp16_min_cos"] >= 0.999
    assert row["cpu_fp32_b1_ms"] > 0 and row["cpu_int8_b1_ms"] > 0 and row["int8_cos_to_fp32_min"] > 0.99
    assert row["params_total_m"] > row["params_image_m"] > 0 and row["image_fp32_mb"] > row["image_int8_mb"]
    assert "timm/ViT-B-16-SigLIP" in failed["error"]
    assert not (tmp_path / tiny_arch).exists()  # artifacts are removed once measured (--keep 0)
    cached = json.loads((tmp_path / "zoo.json").read_text())
    assert cached["rows"][tiny_arch] == json.loads(json.dumps(row))

    def must_not_run(arch, *a, **k):
        assert arch == "ViT-B-16-SigLIP", f"{arch} was measured again"  # only failed rows are retried
        return {"model": arch, "error": "still offline"}

    monkeypatch.setattr(zoo, "measure", must_not_run)
    again = zoo.run(str(tmp_path), models=f"{tiny_arch},ViT-B-16-SigLIP", **opts)
    assert again["rows"][tiny_arch] == cached["rows"][tiny_arch]
    zoo.render(again)
    table = capsys.readouterr().out
    assert f"| {tiny_arch} |" in table and "does not export: still offline" in table
