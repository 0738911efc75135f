"""Changing classes while running: what adding a class costs next to classifying one image.

    python benchmarks/bench_live.py --artifacts coder-artifacts/ViT-B-32__none [--repeats 10] [--json]

All in one run, on the artifact's only bank (names + synonyms, no LLM texts), batch 1, fp32, CPU:

* ``classify_b1_ms``: one batch-1 ``Classifier.classify`` (median);
* ``add_first_ms``: the first ``with_classes(add=[one new class])`` of a process (loads the text
  encoder) and ``add_ms``: the next ones (median; a new class each time, so its texts are really
  encoded), both with the fused ONNX head (a new head session is built) and with the numpy head
  (nothing to build); ``texts_encoded`` per added class; ``ratio`` = add_ms / classify_b1_ms (goal <= 20);
* ``first_prediction_ms``: add + the first classify that can return the new class;
* CLI ``coder classify IMG --classes LIST``: cold (bank built) vs cached vs a plain ``coder classify``
  (whole processes, so interpreter start-up is included in all three; after one discarded plain run, as
  the first ``classify`` on a machine also measures which CPU engine ``auto`` takes);
* per-request class lists as the Triton model serves them (:class:`ClassifierCache`, in-process, no
  HTTP): first request with a list, repeated list vs a plain request, and the cache's megabytes;
* the ROS 2 node's core without rclpy (:class:`~coder.deploy.ros2_core.Vocabulary` +
  :func:`~coder.deploy.ros2_core.process_frame`, as tests/test_ros2_core.py drives it): one ``bgr8`` frame
  -> Classification (median), and time to the first frame whose prediction includes a newly added class
  (``set_classes`` with the class appended, the VisionInfo message re-built, then that frame), the first
  change of the process (loads the text encoder) and the next ones (median).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import script  # also puts the repository on sys.path

from coder.timing import median_ms  # noqa: E402
from coder.samples import synthetic_scene  # noqa: E402

NEW = ["zebra", "okapi", "giraffe", "lion", "tiger", "walrus", "penguin", "kangaroo", "koala", "flamingo",
       "hedgehog", "armadillo", "platypus", "meerkat", "lynx", "otter", "beaver", "moose", "bison", "camel",
       "llama", "alpaca", "panda", "sloth", "lemur", "gorilla", "baboon", "jaguar", "cheetah", "hyena"]


def _adds(clf, names: list[str]) -> tuple[float, list[float], list[int]]:
    """(first add ms, later adds ms, texts encoded per add), each add from ``clf`` with one new class."""
    times, encoded = [], []
    for name in names:
        t0 = time.perf_counter()
        new = clf.with_classes(add=[name])
        times.append((time.perf_counter() - t0) * 1e3)
        encoded.append(new.change.texts_encoded)
    return times[0], times[1:], encoded


def _median(xs: list[float]) -> float:
    import statistics

    return float(statistics.median(xs)) if xs else float("nan")


def _api(artifacts: str, image, repeats: int, fused: bool, names: list[str]) -> dict:
    from coder.runtime.classifier import Classifier

    clf = Classifier.load(artifacts, backend="cpu", fused_head=fused)
    b1 = median_ms(lambda: clf.classify([image]), repeats)
    first, later, encoded = _adds(clf, names)
    t0 = time.perf_counter()
    new = clf.with_classes(add=[names[0] + " calf"])
    new.classify([image])
    first_pred = (time.perf_counter() - t0) * 1e3
    b1_new = median_ms(lambda: new.classify([image]), repeats)
    add = _median(later)
    return {"head": clf.head, "classify_b1_ms": b1, "classify_b1_after_ms": b1_new, "add_first_ms": first,
            "add_ms": add, "ratio": add / b1, "texts_encoded": encoded, "first_prediction_ms": first_pred}


def _cli(artifacts: str, image: str, names: str) -> dict:
    from coder.manifest import load_artifact
    from coder.text_bank.class_lists import classes_key

    art = load_artifact(artifacts)
    shutil.rmtree(art.root / "banks" / ".classes" / classes_key(art, names.split(","), "default", "fp32")[:24],
                  ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def run(*extra) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "coder", "classify", image, "-a", artifacts, "--json", *extra],
                       check=True, capture_output=True, env=env)
        return (time.perf_counter() - t0) * 1e3

    run()  # warm-up: the first `coder classify` on a machine measures its CPU engines once (cpu_choice)
    plain = run()
    cold = run("--classes", names)
    cached = run("--classes", names)
    return {"plain_ms": plain, "classes_cold_ms": cold, "classes_cached_ms": cached,
            "cached_over_plain": cached / plain}


def _server(artifacts: str, image, repeats: int) -> dict:
    from coder.deploy.triton_model import ClassifierCache
    from coder.runtime.classifier import Classifier

    clf = Classifier.load(artifacts, backend="cpu")
    cache = ClassifierCache(clf, 256)
    lists = [("cat", "dog", "zebra", "horse", "lion"), ("car", "truck", "bus", "bicycle", "train")]
    t0 = time.perf_counter()
    cache.get(lists[0]).classify([image])
    first = (time.perf_counter() - t0) * 1e3
    plain = median_ms(lambda: clf.classify([image]), repeats)
    repeated = median_ms(lambda: cache.get(lists[0]).classify([image]), repeats)
    cache.get(lists[1])
    return {"first_list_ms": first, "plain_ms": plain, "repeated_list_ms": repeated, "repeated_over_plain":
            repeated / plain, "bank_cache_mb": cache.megabytes, "lists": len(cache.stats()) and
            cache.stats()["class_lists"]}


def _ros(artifacts: str, image, repeats: int, names: list[str]) -> dict:
    from types import SimpleNamespace as NS

    import numpy as np
    from rosbags.typesys import Stores, get_typestore

    from coder.deploy.ros2_core import NodeConfig, Vocabulary, process_frame
    from coder.deploy.ros_msgs import IMAGE_TYPE, register_vision_msgs, vision_info_msg

    types = register_vision_msgs(get_typestore(Stores.ROS2_HUMBLE))
    px = np.asarray(image.convert("RGB"))
    h, w = px.shape[:2]
    msg = NS(header=NS(stamp=NS(sec=1, nanosec=0), frame_id="cam"), encoding="bgr8", height=h, width=w,
             step=3 * w, is_bigendian=0, data=px[..., ::-1].tobytes())
    vocab = Vocabulary(NodeConfig(artifacts=artifacts, backend="cpu").classifier_options().load(), "coder CODER")
    frame = median_ms(lambda: process_frame(vocab.clf, msg, IMAGE_TYPE, "/cam", 5, types), repeats)
    times = []
    for name in names:  # each: the current classes + one new one, then the next frame
        t0 = time.perf_counter()
        info = vocab.set_classes([*vocab.clf.class_names, name])
        vision_info_msg(types, info)
        out = process_frame(vocab.clf, msg, IMAGE_TYPE, "/cam", 5, types)
        times.append((time.perf_counter() - t0) * 1e3)
        # that frame was classified among the new classes (it can return the added one): its bank version
        assert vocab.clf.class_names[-1] == name and out.record["bank_sha256"] == vocab.clf.bank_sha256
    return {"head": vocab.clf.head, "frame_ms": frame, "first_prediction_first_ms": times[0],
            "first_prediction_ms": _median(times[1:]), "swaps": vocab.swaps}


def _fresh_copy(src: Path, dst: Path) -> Path:
    """The artifact with its files linked and its banks copied WITHOUT embedding caches: every new class's
    texts are really encoded, and the class-list bank is really built."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "banks":
            (dst / f.name).symlink_to(f.resolve())
    shutil.copytree(src / "banks", dst / "banks", ignore=shutil.ignore_patterns(".embed-cache-*", ".classes",
                                                                               "versions", ".*.lock"))
    return dst


def run(artifacts: str, repeats: int = 10, adds: int = 6) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    try:
        art = _fresh_copy(Path(artifacts), work / "art")
        image = synthetic_scene(7, (320, 240))
        image.save(work / "img.jpg")
        rows = [_api(str(art), image, repeats, True, NEW[:adds]), _api(str(art), image, repeats, False,
                                                                     NEW[adds:2 * adds])]
        return {"artifacts": artifacts, "api": rows, "cli": _cli(str(art), str(work / "img.jpg"),
                                                                 "cat,dog,zebra,okapi,lion"),
                "server": _server(str(art), image, repeats),
                "ros_core": _ros(str(art), image, repeats, NEW[2 * adds:3 * adds])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(r: dict) -> None:
    for a in r["api"]:
        print(f"API ({a['head']} head): classify b1 {a['classify_b1_ms']:.1f} ms; add one class: first "
              f"{a['add_first_ms']:.0f} ms (loads the text encoder), then {a['add_ms']:.1f} ms = {a['ratio']:.1f}x "
              f"classify (texts encoded per add {a['texts_encoded']}); first prediction with the new class "
              f"{a['first_prediction_ms']:.0f} ms; classify b1 after {a['classify_b1_after_ms']:.1f} ms")
    c = r["cli"]
    print(f"CLI: plain classify {c['plain_ms']:.0f} ms, --classes cold {c['classes_cold_ms']:.0f} ms, cached "
          f"{c['classes_cached_ms']:.0f} ms ({c['cached_over_plain']:.2f}x plain)")
    s = r["server"]
    print(f"per-request lists (Triton model, in-process): first list {s['first_list_ms']:.0f} ms, repeated "
          f"{s['repeated_list_ms']:.1f} ms vs plain {s['plain_ms']:.1f} ms ({s['repeated_over_plain']:.2f}x); "
          f"bank cache {s['bank_cache_mb']:.2f} MB for {s['lists']} lists")
    ros = r["ros_core"]
    print(f"ROS core ({ros['head']} head): one frame {ros['frame_ms']:.1f} ms; first frame with a newly added class "
          f"{ros['first_prediction_first_ms']:.0f} ms (first change: loads the text encoder), then "
          f"{ros['first_prediction_ms']:.0f} ms ({ros['first_prediction_ms'] / ros['frame_ms']:.1f}x one frame)")


if __name__ == "__main__":
    script(__doc__, run, render, repeats=10, adds=6)
