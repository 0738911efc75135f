"""Inputs shared by the Parquet / Ray batch-labeling tests: an artifact copy with a bank,
and a folder of nested good images in several formats plus bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

GOOD = [("jpg", "RGB"), ("png", "RGBA"), ("bmp", "RGB"), ("webp", "RGB"), ("gif", "P"), ("png", "L")]
BAD = {"bad.jpg": b"this is not an image", "sub/empty.png": b"", "sub/deep/trunc.jpg": None}


def artifact_with_bank(tiny_artifact: Path, dest: Path) -> Path:
    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = dest / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    build_bank(str(art), init_texts("cifar10"))
    return art


def make_images(root: Path, n: int = 9, start: int = 0, bad: bool = True) -> list[Path]:
    """``n`` good images spread over ``root``, ``root/sub``, ``root/sub/deep``; bad files too."""
    from coder.samples import synthetic_scene

    dirs = [root, root / "sub", root / "sub" / "deep"]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        ext, mode = GOOD[i % len(GOOD)]
        p = dirs[i % 3] / f"img{i:03d}.{ext}"
        synthetic_scene(i, (96 + 7 * i % 150, 80 + 5 * i % 120)).convert(mode).save(p)
        paths.append(p)
    if bad:
        for name, data in BAD.items():
            if data is None:  # a JPEG cut in half
                data = (root / "img000.jpg").read_bytes()[:300]
            (root / name).write_bytes(data)
    return paths


def json_records(output: str) -> dict[str, dict]:
    return {r["file"]: r for r in map(json.loads, (line for line in output.splitlines() if line.startswith("{")))}


def parquet_rows(out: Path) -> dict[str, dict]:
    rows = pq.read_table(out).to_pylist()
    by_file = {r["file"]: r for r in rows}
    assert len(by_file) == len(rows), "a file has two rows"
    return by_file


def assert_rows_match(rows: dict[str, dict], records: dict[str, dict], tol: float = 1e-4) -> None:
    """Parquet rows equal ``classify --json`` records: labels identical, scores within ``tol``."""
    assert set(records) <= set(rows)
    for f, rec in records.items():
        r = rows[f]
        assert r["error"] is None
        for k in ("label", "name", "top_k", "top_k_names", "reranked", "rerank_candidates", "backend", "few_shot"):
            assert r[k] == (list(rec[k]) if isinstance(rec[k], (list, tuple)) else rec[k]), (f, k)
        for k in ("stage1_scores", "rerank_scores"):
            assert max(abs(a - b) for a, b in zip(r[k], rec[k])) <= tol, (f, k)
        assert abs(r["gap"] - rec["gap"]) <= tol
