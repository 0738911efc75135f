"""The ROS 2 node's logic without rclpy: parameters, the newest-frame policy, one frame's outputs."""

import json
import os
import shutil
import threading
import time
from types import SimpleNamespace as NS

import numpy as np
import pytest

from coder.deploy.ros2_core import LatestSlot, LatestWorker, NodeConfig, process_frame
from coder.deploy.ros_msgs import COMPRESSED_TYPE, IMAGE_TYPE
from coder.errors import ConfigError, FrameError


def test_params_parse_coerce_and_reject():
    cfg = NodeConfig.from_params({"artifacts": "art", "top_k": 3, "tau": 1, "input_topic": "/cam/image/compressed"})
    assert (cfg.top_k, cfg.tau, cfg.input_msgtype) == (3, 1.0, COMPRESSED_TYPE)
    assert NodeConfig.from_params({}).input_msgtype == IMAGE_TYPE
    assert NodeConfig.from_params({"bank": 123, "artifacts": None}) == NodeConfig(bank="123")  # YAML-typed ROS values
    assert NodeConfig.from_params({"input_type": "compressed"}).input_msgtype == COMPRESSED_TYPE
    o = cfg.classifier_options()
    assert (o.bank, o.backend, o.precision, o.tau, o.threads, o.classes) == (None, "auto", "fp32", 1.0, None, None)
    assert o.artifacts == os.path.realpath("art")  # resolved once, in the options object
    assert NodeConfig.from_params({"classes": ["cat", " dog"]}).classifier_options().classes == ("cat", "dog")
    assert NodeConfig.from_params({"classes": "cat,dog"}).classes == ("cat", "dog")
    assert NodeConfig.from_params({"classes": []}).classes == ()
    assert NodeConfig().classifier_options().tau is None  # negative: the bank preset
    for bad in ({"top_k": 0}, {"top_k": 2.5}, {"top_k": True}, {"backend": "tpu"}, {"precision": "int4"},
                {"tau": "high"}, {"input_type": "raw8"}, {"output_topic": ""}, {"topk": 3},
                {"classes": ["cat", "Cat"]}, {"classes": ["cat", ""]}, {"classes": [1, 2]},
                {"classes": ["cat"], "bank": "cifar10"}):
        with pytest.raises(ConfigError):
            NodeConfig.from_params(bad)


@pytest.mark.parametrize("params", [{"top_k": float("inf")}, {"top_k": "inf"}, {"top_k": "1e400"}, {"top_k": 10**400},
                                    {"top_k": float("nan")}, {"tau": float("nan")}, {"tau": "nan"},
                                    {"tau": float("inf")}, {"tau": "-inf"}, {"tau": "1e400"}, {"tau": True}])
def test_non_finite_numbers_are_usage_errors(params):
    """``top_k: inf`` / ``1e400`` once crashed (OverflowError, exit 70); ``tau: nan`` was accepted and the gate
    never fired. Both are one ConfigError line naming the parameter (exit 2)."""
    from coder.errors import exit_code_for

    [name] = params
    with pytest.raises(ConfigError, match=f"^parameter {name}: ") as e:
        NodeConfig.from_params(params)
    assert exit_code_for(e.value) == 2 and "\n" not in str(e.value)
    with pytest.raises(ConfigError):  # also when the config is built directly
        NodeConfig(tau=float("nan")).check()


def test_slot_keeps_only_the_newest():
    slot = LatestSlot()
    assert slot.take(timeout=0) is None
    assert [slot.put(i) for i in range(4)] == [False, True, True, True]
    assert (slot.take(timeout=0), slot.dropped, slot.received) == (3, 3, 4)
    assert slot.take(timeout=0.01) is None
    threading.Timer(0.05, slot.put, args=("late",)).start()
    assert slot.take(timeout=2) == "late"  # take() waits for the next frame
    slot.close()
    assert slot.take(timeout=2) is None


def test_worker_drops_stale_frames_under_load():
    """A camera faster than the classifier: no queue builds up, the newest frame always wins. The first frame's
    "inference" is held (an Event, not a sleep) while 29 more arrive; then only the newest of them runs."""
    held, running, done = threading.Event(), threading.Event(), []

    def slow(item):
        if item == 0:
            running.set()
            held.wait(60)
        done.append(item)

    worker = LatestWorker(slow, lambda item, e: None).start()
    worker.submit(0)
    assert running.wait(60)  # frame 0 is being classified
    for i in range(1, 30):
        worker.submit(i)
    held.set()
    deadline = time.monotonic() + 60  # a bound, not a timing: the loop ends as soon as frame 29 is done
    while 29 not in done and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert done == [0, 29]  # newest last, nothing stale in between, never out of order
    assert (worker.slot.dropped, worker.slot.received) == (28, 30)


def test_worker_survives_a_failing_frame():
    errors, done = [], []

    def handle(item):
        if item == "bad":
            raise FrameError("/cam @ 1.000000000: corrupt")
        done.append(item)

    worker = LatestWorker(handle, lambda item, e: errors.append((item, str(e)))).start()
    worker.submit("bad")
    time.sleep(0.2)
    worker.submit("good")
    time.sleep(0.2)
    worker.stop()
    assert errors == [("bad", "/cam @ 1.000000000: corrupt")] and done == ["good"]


@pytest.fixture(scope="module")
def clf(tiny_artifact, tmp_path_factory):
    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = tmp_path_factory.mktemp("nodeart") / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    build_bank(art, init_texts("cifar10"))
    return NodeConfig(artifacts=str(art)).classifier_options().load()


def test_process_frame_outputs_match_the_bag_schema(clf):
    from rosbags.typesys import Stores, get_typestore

    from coder.deploy.ros_msgs import register_vision_msgs, stage1_probabilities
    from coder.samples import synthetic_scene

    types = register_vision_msgs(get_typestore(Stores.ROS2_HUMBLE))
    px = np.asarray(synthetic_scene(3, (40, 30)))
    msg = NS(header=NS(stamp=NS(sec=12, nanosec=34), frame_id="cam"), encoding="bgr8", height=30, width=40, step=120,
             is_bigendian=0, data=px[..., ::-1].tobytes())
    out = process_frame(clf, msg, IMAGE_TYPE, "/cam", 3, types)
    [pred] = clf.classify([px], len(clf.class_names))
    probs = stage1_probabilities(pred.stage1_scores)
    assert (out.classification.header.stamp.sec, out.classification.header.stamp.nanosec,
            out.classification.header.frame_id) == (12, 34, "cam")
    assert out.classification.results[0].class_id == pred.name
    assert abs(out.classification.results[0].score - probs[list(pred.top_k).index(pred.label)]) < 1e-12
    rec = json.loads(json.dumps(out.record))
    assert (rec["topic"], rec["stamp_ns"], rec["frame_id"], rec["name"]) == ("/cam", 12 * 10**9 + 34, "cam", pred.name)
    assert len(rec["top_k"]) == 3 and rec["log_time_ns"] is None
    with pytest.raises(FrameError, match=r"^/cam @ 12.000000034: unsupported encoding"):
        process_frame(clf, NS(**{**vars(msg), "encoding": "nv12"}), IMAGE_TYPE, "/cam", 3, types)


def test_node_without_ros_is_one_clear_error():
    import importlib.util
    import subprocess
    import sys

    from typer.testing import CliRunner

    from coder.cli import EXIT_CODES, app
    from coder.errors import BackendError

    if importlib.util.find_spec("rclpy") is not None:
        pytest.skip("rclpy is installed here")
    code = {cls: c for cls, c, _ in EXIT_CODES}[BackendError]
    res = CliRunner().invoke(app, ["ros2", "--ros-args", "-p", "artifacts:=x"])
    assert res.exit_code == code and "rclpy" in res.output and "Traceback" not in res.output
    res = subprocess.run([sys.executable, "-m", "coder.deploy.ros2_node", "--ros-args", "-p", "top_k:=3"],
                         capture_output=True, text=True)
    assert res.returncode == code and res.stderr.startswith("error: the ROS 2 node needs a sourced ROS 2")
    assert res.stderr.count("\n") == 1


def test_backend_parameter_accepts_what_every_entry_point_accepts():
    """The node checks backend/precision through ClassifierOptions: a backend the CLI takes (openvino) is valid."""
    assert NodeConfig.from_params({"backend": "openvino"}).backend == "openvino"
    with pytest.raises(ConfigError, match="^parameter backend 'tpu'"):
        NodeConfig.from_params({"backend": "tpu"})


def test_vocabulary_swaps_between_frames_and_versions_vision_info(clf):
    from coder.deploy.ros2_core import Vocabulary
    from coder.samples import synthetic_scene

    vocab = Vocabulary(clf, "coder CODER (cpu)")
    first = dict(vocab.info)
    assert first["database_location"] == f"{clf.bank.root}@{clf.bank_sha256[:16]}"
    assert first["database_sha256"] == clf.bank_sha256  # the bank version, as every prediction and swap names it
    in_flight = vocab.clf  # what a frame being classified holds
    info = vocab.set_classes(["cat", "dog", "zebra"])
    assert vocab.clf.class_names == ("cat", "dog", "zebra") and in_flight is clf
    assert clf.class_names[0] == "airplane"  # the frame in flight finishes with the old classes
    assert info["database_version"] == first["database_version"] + 1 and info == vocab.info
    assert info["database_location"].endswith("@" + vocab.clf.bank_sha256[:16]) and info["labels"] == ["cat", "dog",
                                                                                                       "zebra"]
    [p] = vocab.clf.classify([np.asarray(synthetic_scene(4, (40, 30)))])
    assert p.name in ("cat", "dog", "zebra") and p.bank_sha256 == vocab.clf.bank_sha256
    again = vocab.set_classes("cat,dog,zebra")  # the same list: a new VisionInfo version, same bank
    assert again["database_version"] == info["database_version"] + 1 and vocab.swaps == 2
    for bad in (["cat", "CAT"], [], ["", "dog"]):
        with pytest.raises(ConfigError):
            vocab.set_classes(bad)
    assert vocab.info == again and vocab.clf.class_names == ("cat", "dog", "zebra")
