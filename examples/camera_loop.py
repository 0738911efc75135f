"""Camera-loop style use of coder: numpy frames in, one prediction per frame, latency printed.

    python examples/camera_loop.py --artifacts coder-artifacts/ViT-B-32__none [--frames 50] [--bgr]

Without a camera it feeds synthetic BGR frames (as OpenCV/ROS deliver them).
Swap ``synthetic_frames`` for your capture loop (``cv2.VideoCapture(0).read()``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from coder import Classifier
from coder.samples import synthetic_scene


def synthetic_frames(n: int, width: int = 640, height: int = 480):
    for i in range(n):
        rgb = np.asarray(synthetic_scene(i, (width, height)))
        yield np.ascontiguousarray(rgb[..., ::-1])  # BGR, like OpenCV


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--bank", default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--frames", type=int, default=30)
    args = ap.parse_args()
    clf = Classifier.load(args.artifacts, bank=args.bank, backend=args.backend)
    latencies = []
    for i, frame in enumerate(synthetic_frames(args.frames)):
        t0 = time.perf_counter()
        [pred] = clf.classify([frame], bgr=True)
        ms = (time.perf_counter() - t0) * 1e3
        latencies.append(ms)
        print(f"frame {i:4d}  {pred.name:<24} gap {pred.gap:.3f}{'  reranked' if pred.reranked else ''}"
              f"  {ms:6.1f} ms  (pre {pred.timings_ms.preprocess:.1f} / enc {pred.timings_ms.encoder:.1f}"
              f" / head {pred.timings_ms.head:.2f})")
    print(f"backend {clf.backend}: median {statistics.median(latencies):.1f} ms, "
          f"p90 {sorted(latencies)[int(0.9 * (len(latencies) - 1))]:.1f} ms over {len(latencies)} frames")


if __name__ == "__main__":
    main()
