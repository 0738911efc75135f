"""Batch labeling throughput: single-process ``coder classify --out`` vs ``--ray`` with 1 and 2
classifier actors (1 ONNX Runtime thread each), in one run, on the same folder of JPEGs.

    nice python benchmarks/bench_ray.py --artifacts coder-artifacts/ViT-B-32__none [--images 400]

Each configuration is a fresh ``coder classify`` process writing a fresh Parquet dataset
(``--overwrite``). Reported per row: wall seconds of the whole command, images/s over that
wall time, images/s of the labeling itself (the command's own clock, minus the Ray start for
``--ray``), the Ray start-up seconds, and the ratio to the single process. The single process
uses ONNX Runtime's default intra-op threads (all cores). Ratios are what to compare: absolute
numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import script  # noqa: E402  (also puts the repository on sys.path)

CONFIGS = {
    "single process (--out)": [],
    "ray, 1 actor x 1 thread": ["--ray", "--actors", "1", "--cpus-per-actor", "1"],
    "ray, 2 actors x 1 thread": ["--ray", "--actors", "2", "--cpus-per-actor", "1"],
}


def make_jpegs(folder: Path, n: int) -> None:
    from coder.samples import synthetic_scene

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        synthetic_scene(i, (640, 480)).convert("RGB").save(folder / f"frame{i:05d}.jpg", quality=90)


def run_config(artifacts: str, folder: Path, out: Path, extra: list[str], batch_size: int) -> dict:
    cmd = [sys.executable, "-m", "coder", "classify", str(folder), "-a", artifacts, "--backend", "cpu", "--out",
           str(out), "--overwrite", "--batch-size", str(batch_size), "--json", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")
    summary = json.loads(res.stdout)
    work = summary["seconds"] - summary["ray_startup_s"]
    return {"wall_s": round(wall, 2), "images": summary["images"], "actors": summary["actors"],
            "ray_startup_s": summary["ray_startup_s"], "images_per_s_wall": round(summary["images"] / wall, 2),
            "images_per_s_labeling": round(summary["images"] / work, 2) if work > 0 else None}


def run(artifacts: str, images: int = 400, batch_size: int = 16) -> dict:
    import os

    with tempfile.TemporaryDirectory(prefix="coder-bench-ray-") as tmp:
        folder = Path(tmp) / "frames"
        make_jpegs(folder, images)
        rows = {name: run_config(artifacts, folder, Path(tmp) / f"out{i}.parquet", extra, batch_size)
                for i, (name, extra) in enumerate(CONFIGS.items())}
    base = rows["single process (--out)"]
    for r in rows.values():
        r["vs_single_wall"] = round(r["images_per_s_wall"] / base["images_per_s_wall"], 3)
        r["vs_single_labeling"] = round(r["images_per_s_labeling"] / base["images_per_s_labeling"], 3)
    one, two = rows["ray, 1 actor x 1 thread"], rows["ray, 2 actors x 1 thread"]
    from coder.manifest import load_artifact

    return {"architecture": load_artifact(artifacts).architecture, "images": images, "image_size": "640x480 JPEG",
            "batch_size": batch_size, "cpus": os.cpu_count(), "rows": rows,
            "scaling_2_vs_1_actor": round(two["images_per_s_labeling"] / one["images_per_s_labeling"], 3)}


def render(result: dict) -> None:
    print(f"{result['architecture']}: {result['images']} x {result['image_size']}, batch {result['batch_size']}, "
          f"{result['cpus']} CPUs")
    print(f"{'configuration':28} {'wall s':>7} {'img/s wall':>10} {'img/s label':>11} {'ray start s':>11} "
          f"{'x single (wall/label)':>22}")
    for name, r in result["rows"].items():
        print(f"{name:28} {r['wall_s']:7.1f} {r['images_per_s_wall']:10.1f} {r['images_per_s_labeling']:11.1f} "
              f"{r['ray_startup_s']:11.1f} {r['vs_single_wall']:10.2f} / {r['vs_single_labeling']:.2f}")
    print(f"2 actors vs 1 actor (labeling): {result['scaling_2_vs_1_actor']:.2f}x")


if __name__ == "__main__":
    script(__doc__, run, render, images=400, batch_size=16)
