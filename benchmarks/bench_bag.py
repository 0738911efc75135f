"""`coder bag` vs `coder classify` on the same frames: is reading a bag the bottleneck?

    python benchmarks/bench_bag.py --artifacts coder-artifacts/ViT-B-32__none [--frames 500] [--storage mcap]

Writes a rosbag2 bag of ``--frames`` synthetic ``--width`` x ``--height`` rgb8 frames, and the same
pixels as PNG files; then runs, as fresh processes one after the other in this one run,
``coder bag BAG --topic /camera/image_raw --json`` and ``coder classify DIR --json`` (same batch
size, output to /dev/null) and reports frames/s of each and their ratio (goal: bag >= 0.9x
classify). Both include the one-time model load; ``--repeats`` alternates the two commands and
takes the median. Peak RSS of each process shows that the bag is streamed (memory well under the
bag's size). The artifact needs exactly one bank (or pass ``--bank``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import script  # noqa: E402  (also puts the repository on sys.path)


def write_inputs(root: Path, n: int, width: int, height: int, storage: str) -> tuple[Path, Path]:
    import numpy as np
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from coder.samples import synthetic_scene

    ts = get_typestore(Stores.ROS2_HUMBLE)
    Image, Header, Time = (ts.types[t] for t in ("sensor_msgs/msg/Image", "std_msgs/msg/Header",
                                                 "builtin_interfaces/msg/Time"))
    bag, pngs = root / "bag", root / "png"
    pngs.mkdir()
    scenes = [synthetic_scene(i, (width, height)) for i in range(min(n, 50))]  # 50 distinct scenes, cycled
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(bag, version=9, storage_plugin=plugin) as w:
        conn = w.add_connection("/camera/image_raw", Image.__msgtype__, typestore=ts)
        for i in range(n):
            px = np.asarray(scenes[i % len(scenes)])
            t = 10**9 + i * 33_333_333
            msg = Image(header=Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera"),
                        height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3,
                        data=px.reshape(-1))
            w.write(conn, t, ts.serialize_cdr(msg, Image.__msgtype__))
            scenes[i % len(scenes)].save(pngs / f"{i:05d}.png")
    return bag, pngs


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


def run(artifacts: str, frames: int, width: int, height: int, batch_size: int, storage: str, repeats: int,
        bank: str) -> dict:
    coder = [sys.executable, "-m", "coder"]
    common = ["-a", artifacts, "--batch-size", str(batch_size), "--json"] + (["--bank", bank] if bank else [])
    with tempfile.TemporaryDirectory(prefix="bench-bag-") as tmp:
        bag, pngs = write_inputs(Path(tmp), frames, width, height, storage)
        cmds = {"bag": coder + ["bag", str(bag), "--topic", "/camera/image_raw"] + common,
                "classify": coder + ["classify", str(pngs)] + common}
        bag_mib = sum(f.stat().st_size for f in bag.iterdir()) / 2**20
        times: dict[str, list[float]] = {k: [] for k in cmds}
        rss: dict[str, float] = {k: 0.0 for k in cmds}
        for _ in range(repeats):
            for name, cmd in cmds.items():
                wall, peak = timed(cmd)
                times[name].append(wall)
                rss[name] = max(rss[name], peak)
    fps = {k: frames / statistics.median(v) for k, v in times.items()}
    return {"frames": frames, "size": [width, height], "storage": storage, "batch_size": batch_size,
            "artifacts": artifacts, "bag_mib": bag_mib, "seconds": times, "frames_per_s": fps, "peak_rss_mib": rss,
            "ratio_bag_over_classify": fps["bag"] / fps["classify"]}


def render(r: dict) -> None:
    print(f"{r['frames']} frames {r['size'][0]}x{r['size'][1]}, {r['storage']} bag, batch {r['batch_size']}, "
          f"artifact {r['artifacts']}, bag {r['bag_mib']:.0f} MiB")
    for k, v in r["frames_per_s"].items():
        print(f"  coder {k:<9} {v:8.1f} frames/s  (runs: {', '.join(f'{s:.1f}s' for s in r['seconds'][k])}; "
              f"peak RSS {r['peak_rss_mib'][k]:.0f} MiB)")
    print(f"  ratio bag / classify: {r['ratio_bag_over_classify']:.2f}x (goal >= 0.9x)")


if __name__ == "__main__":
    script(__doc__, run, render, frames=500, width=640, height=480, batch_size=16, storage="mcap", repeats=1,
           bank="")
