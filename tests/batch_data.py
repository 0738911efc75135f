"""Inputs shared by the Parquet / Ray batch-labeling tests: an artifact copy with a bank,
and a folder of nested good images in several formats plus bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
    import pyarrow.parquet as pq  # here, not at the top: tests without the [ray] extra import this module too

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


def input_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``: proves a run left its inputs unchanged."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- `python -m tests.batch_data`: run the CLI with a deterministic stop point --------------------------------
# --hold-after-rows N: once N rows reached the writer, write MARKER (the count) and wait for a signal there.
# --kill-at K: SIGKILL this process at the K-th commit point of the dataset (a part or _coder.json written to its
#   temporary name, or renamed into place), after writing MARKER; exits normally when there are fewer points.
# --rows-per-part R: flush a part every R rows and never by time (many commit points from few images; or none
#   before the end with a large R).
# --remove-before-run FILE: delete FILE after the driver listed the inputs, before Ray reads them (a file the
#   workers cannot see).

def hook_command(marker: Path, *cli: str, hold_after_rows: int | None = None, kill_at: int | None = None,
                 rows_per_part: int | None = None, remove_before_run: Path | None = None) -> list[str]:
    import sys

    cmd = [sys.executable, "-m", "tests.batch_data", "--marker", str(marker)]
    for flag, value in (("--hold-after-rows", hold_after_rows), ("--kill-at", kill_at),
                        ("--rows-per-part", rows_per_part), ("--remove-before-run", remove_before_run)):
        if value is not None:
            cmd += [flag, str(value)]
    return [*cmd, "--", *map(str, cli)]


def hook_env() -> dict[str, str]:
    """The environment of a hooked subprocess: this checkout first on the path, offline."""
    import os

    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "HF_HUB_OFFLINE": "1"}


def wait_for(marker: Path, proc, timeout_s: float = 240.0) -> str:
    """Wait until ``proc`` wrote ``marker`` (its stop point); fails if it exits first."""
    import time

    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before its stop point:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no stop point within {timeout_s} s")
        time.sleep(0.05)
    return marker.read_text()


def _install_hooks(marker: Path, hold_after_rows, kill_at, rows_per_part, remove_before_run) -> None:
    import contextlib
    import os
    import signal

    from coder.deploy import parquet_out

    state = {"rows": 0, "points": 0}

    def point(what: str) -> None:
        state["points"] += 1
        if state["points"] == kill_at:
            marker.write_text(f"{kill_at} {what}")
            os.kill(os.getpid(), signal.SIGKILL)

    real_path, real_json = parquet_out.atomic_path, parquet_out.atomic_write_json

    @contextlib.contextmanager
    def atomic_path(final):
        with real_path(final) as tmp:
            yield tmp
            point(f"{Path(final).name} written, not renamed")
        point(f"{Path(final).name} renamed")

    def atomic_write_json(final, obj):
        point(f"{Path(final).name} before writing")
        real_json(final, obj)
        point(f"{Path(final).name} written")

    if kill_at is not None:
        parquet_out.atomic_path, parquet_out.atomic_write_json = atomic_path, atomic_write_json
    real_init, real_add = parquet_out.ParquetOutput.__init__, parquet_out.ParquetOutput.add

    def init(self, root, meta, **kw):
        if rows_per_part:  # parts by row count only, never by time (a loaded machine must not change the points)
            kw = {**kw, "rows_per_part": rows_per_part, "seconds_per_part": float("inf")}
        real_init(self, root, meta, **kw)

    def add(self, table):
        real_add(self, table)
        state["rows"] += table.num_rows
        if hold_after_rows is not None and state["rows"] >= hold_after_rows and not marker.exists():
            marker.write_text(str(state["rows"]))
            while True:  # until SIGINT / SIGTERM raise coder.store.Interrupted here
                signal.pause()

    parquet_out.ParquetOutput.__init__, parquet_out.ParquetOutput.add = init, add
    if remove_before_run is not None:
        from coder.deploy import ray_batch

        real_run = ray_batch.run_ray

        def run_ray(*args, **kwargs):
            remove_before_run.unlink()
            return real_run(*args, **kwargs)

        ray_batch.run_ray = run_ray


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--marker", type=Path, required=True)
    ap.add_argument("--hold-after-rows", type=int)
    ap.add_argument("--kill-at", type=int)
    ap.add_argument("--rows-per-part", type=int)
    ap.add_argument("--remove-before-run", type=Path)
    ap.add_argument("cli", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    _install_hooks(a.marker, a.hold_after_rows, a.kill_at, a.rows_per_part, a.remove_before_run)
    from coder.cli import main

    raise SystemExit(main(a.cli[1:] if a.cli[:1] == ["--"] else a.cli))
