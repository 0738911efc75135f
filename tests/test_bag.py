"""``coder bag`` on real bags written by rosbags: ROS 2 mcap and sqlite3, ROS 1; parity with
``coder classify`` on the same pixels saved as PNG; the output bag read back; errors; Ctrl-C."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coder.cli import EXIT_CODES, app
from coder.deploy import ros_msgs as rm
from coder.errors import ConfigError, InputError
from tests.ros_bags import Frame, storage_file, write_bag

pytest.importorskip("rosbags")
runner = CliRunner()
CODE = {cls: code for cls, code, _ in EXIT_CODES}
S = 10**9


@pytest.fixture(scope="module")
def art(tiny_artifact, tmp_path_factory):
    """The tiny artifact with one cifar10 bank."""
    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    out = tmp_path_factory.mktemp("bagart") / "art"
    shutil.copytree(tiny_artifact, out, ignore=shutil.ignore_patterns("banks"))
    build_bank(out, init_texts("cifar10"))
    return out


def _scene(seed, w=40, h=30):
    from coder.samples import synthetic_scene

    return np.asarray(synthetic_scene(seed, (w, h)))


def _frames():
    """(frames for the bag, expected PIL image or None for a corrupt frame) in log order."""
    rgb = [_scene(i) for i in range(12)]
    grey = rgb[4].mean(axis=2).astype(np.uint8)
    v16 = (grey.astype(np.uint16) * 250 + 37)
    yuv = np.random.default_rng(1).integers(16, 236, (30, 80)).astype(np.uint8)
    bayer = rgb[7][..., 1].copy()
    rgba = np.dstack([rgb[3], np.full((30, 40), 255, np.uint8)])
    jpeg = io.BytesIO()
    Image.fromarray(rgb[8]).save(jpeg, format="JPEG", quality=90)
    f = []
    add = lambda frame, want: f.append((frame, want))  # noqa: E731
    add(Frame("/cam", 1 * S, "cam", "rgb8", rgb[0], pad=5), Image.fromarray(rgb[0]))
    add(Frame("/cam2", 1 * S + 7, "cam2", "bgr8", rgb[1][..., ::-1]), Image.fromarray(rgb[1]))
    add(Frame("/cam", 2 * S, "cam", "rgba8", rgba, pad=4), Image.fromarray(rgba, "RGBA"))
    add(Frame("/cam2", 2 * S + 7, "cam2", "mono8", grey, pad=3), Image.fromarray(grey))
    add(Frame("/cam", 3 * S, "cam", "mono16", v16, big_endian=True, pad=2),
        Image.fromarray(np.floor(v16 / 257 + 0.5).astype(np.uint8)))
    add(Frame("/cam2", 3 * S + 7, "cam2", "uyvy", yuv), Image.fromarray(rm.yuv422_to_rgb(yuv, (1, 0, 3, 2))))
    add(Frame("/cam", 4 * S, "cam", "bayer_rggb8", bayer), Image.fromarray(rm.bayer_to_rgb(bayer, (0, 1, 1, 2))))
    add(Frame("/cam", 5 * S, "cam", "rgb8", rgb[5], raw=b"\x00" * 100), None)  # truncated: corrupt
    add(Frame("/cam2/compressed", 5 * S + 7, "cam2", "jpeg", rgb[8], raw=jpeg.getvalue()), Image.open(io.BytesIO(jpeg.getvalue())))
    add(Frame("/cam2/compressed", 6 * S + 7, "cam2", "png", rgb[9]), Image.fromarray(rgb[9]))
    add(Frame("/cam2/compressed", 7 * S + 7, "cam2", "jpeg", rgb[10], raw=b"\xff\xd8\xff\xe0 broken"), None)
    add(Frame("/cam", 8 * S, "cam", "bgra8", rgba[..., [2, 1, 0, 3]]), Image.fromarray(rgba, "RGBA"))
    return f


@pytest.fixture(scope="module")
def expected(art, tmp_path_factory):
    """`coder classify --json` on the expected pixels of every good frame, saved as PNG."""
    d = tmp_path_factory.mktemp("png")
    paths = []
    for i, (_, want) in enumerate(_frames()):
        if want is not None:
            paths.append(d / f"{i:02d}.png")
            want.save(paths[-1])
    res = runner.invoke(app, ["classify", *map(str, paths), "-a", str(art), "--json"])
    assert res.exit_code == 0, res.output
    by_file = {r["file"]: r for r in map(json.loads, res.stdout.splitlines())}
    return [by_file[str(d / f"{i:02d}.png")] if want is not None else None for i, (_, want) in enumerate(_frames())]


def _bag(tmp_path, storage):
    frames = [f for f, _ in _frames()]
    if storage == "ros1":
        return write_bag(tmp_path / "run.bag", frames, "ros1")
    bag = write_bag(tmp_path / "run", frames, storage)
    return storage_file(bag) if storage == "sqlite3" else bag  # a lone .db3 file, a mcap bag directory


@pytest.mark.parametrize("storage", ["mcap", "sqlite3", "ros1"])
def test_bag_matches_classify_and_writes_classifications(art, expected, tmp_path, storage):
    from rosbags.highlevel import AnyReader

    bag = _bag(tmp_path, storage)
    out = tmp_path / "labels"
    res = runner.invoke(app, ["bag", str(bag), "--topic", "/cam", "--topic", "/cam2", "-t", "/cam2/compressed", "-a", str(art), "--json",
                              "--out-bag", str(out), "--batch-size", "4", "--top-k", "3"])
    assert res.exit_code == CODE[InputError], res.output
    records = [json.loads(line) for line in res.stdout.splitlines()]
    frames = [f for f, _ in _frames()]
    assert [(r["topic"], r["stamp_ns"], r["frame_id"]) for r in records] == \
        [(f.topic, f.stamp_ns, f.frame_id) for f in frames]
    assert [r["log_time_ns"] for r in records] == [S + i * 10**8 for i in range(len(frames))]
    good = []
    for r, want in zip(records, expected):
        if want is None:
            assert r["error"] and "label" not in r
            continue
        good.append(r)
        assert r["file"] == str(bag) and r["error"] is None
        assert (r["label"], r["name"], r["top_k"], r["reranked"]) == \
            (want["label"], want["name"], want["top_k"][:3], want["reranked"])
        np.testing.assert_allclose(r["stage1_scores"], want["stage1_scores"][:3], atol=1e-4)
        assert set(r) >= set(want) | {"topic", "stamp_ns", "log_time_ns", "frame_id", "stage1_probabilities"}
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
    assert errors == ["error: /cam @ 5.000000000: data holds 100 bytes, a 40x30 rgb8 image with step 120 needs 3600 "
                      "(truncated frame?)",
                      "error: /cam2/compressed @ 7.000000007: cannot decode image (Truncated File Read)"]

    with AnyReader([out]) as reader:
        assert reader.topics["/coder/classification"].msgtype == "vision_msgs/msg/Classification"
        msgs = [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in
                reader.messages([c for c in reader.connections if c.topic == "/coder/classification"])]
        [info] = [reader.deserialize(raw, c.msgtype) for c, _, raw in
                  reader.messages([c for c in reader.connections if c.topic == "/coder/vision_info"])]
    assert [(m.header.stamp.sec * S + m.header.stamp.nanosec, m.header.frame_id) for _, m in msgs] == \
        [(r["stamp_ns"], r["frame_id"]) for r in good]
    assert [t for t, _ in msgs] == [r["log_time_ns"] for r in good]
    for (_, m), r in zip(msgs, good):
        assert m.results[0].class_id == r["name"]
        assert sorted(h.class_id for h in m.results) == sorted(r["top_k_names"]) or r["reranked"]
        np.testing.assert_allclose([h.score for h in m.results], r["stage1_probabilities"], atol=1e-12)
    assert info.database_location.endswith("cifar10") and info.database_version >= 0
    meta = (out / "metadata.yaml").read_text()
    assert "coder.complete: 'true'" in meta or "coder.complete: \"true\"" in meta


def test_every_start_end_on_a_lone_mcap_file(art, tmp_path):
    frames = [Frame("/cam", (i + 1) * S, "cam", "rgb8", _scene(i, 32, 24)) for i in range(10)]
    bag = write_bag(tmp_path / "b", frames, "mcap", log_step_ns=S)  # logged at 1 s, 2 s, ... 10 s
    res = runner.invoke(app, ["bag", str(storage_file(bag)), "-t", "/cam", "-a", str(art), "--json", "--every", "2",
                              "--start", "2", "--end", "8"])
    assert res.exit_code == 0, res.output
    # window [3 s, 9 s) -> frames 3..8 (1-based); every 2nd of those: 3, 5, 7
    assert [json.loads(line)["stamp_ns"] for line in res.stdout.splitlines()] == [3 * S, 5 * S, 7 * S]


def test_missing_topic_lists_image_topics(art, tmp_path):
    bag = write_bag(tmp_path / "b", [Frame("/front/image", S, "f", "rgb8", _scene(0)),
                                     Frame("/front/compressed", S, "f", "png", _scene(1))], "mcap")
    res = runner.invoke(app, ["bag", str(bag), "-t", "/rear/image", "-a", str(art)])
    assert res.exit_code == CODE[ConfigError]
    assert "/rear/image" in res.output and "/front/image (Image, 1 msgs)" in res.output \
        and "/front/compressed (CompressedImage, 1 msgs)" in res.output
    res = runner.invoke(app, ["bag", str(tmp_path / "nope.mcap"), "-t", "/x", "-a", str(art)])
    assert res.exit_code == CODE[InputError] and "nope.mcap" in res.output
    res = runner.invoke(app, ["bag", str(bag), "-t", "/front/image", "-a", str(art), "--every", "0"])
    assert res.exit_code == CODE[ConfigError]
    out = tmp_path / "exists"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    res = runner.invoke(app, ["bag", str(bag), "-t", "/front/image", "-a", str(art), "--out-bag", str(out), "--force"])
    assert res.exit_code == CODE[ConfigError] and (out / "precious.txt").exists()


def test_sigint_leaves_a_readable_partial_bag(art, tmp_path):
    from rosbags.highlevel import AnyReader

    frames = [Frame("/cam", (i + 1) * S, "cam", "rgb8", _scene(i % 7, 32, 24)) for i in range(3000)]
    bag = write_bag(tmp_path / "big", frames, "mcap")
    out = tmp_path / "partial"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "coder", "bag", str(bag), "-t", "/cam", "-a", str(art), "--json",
                             "--batch-size", "2", "--out-bag", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    first = proc.stdout.readline()  # the first result is out: the run is underway
    assert json.loads(first)["stamp_ns"] == S
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    n_json = 1 + len(rest.splitlines())
    assert n_json < 3000 and "interrupted" in err
    with AnyReader([out]) as reader:
        stamps = [reader.deserialize(raw, c.msgtype).header.stamp.sec for c, _, raw in
                  reader.messages([c for c in reader.connections if c.topic == "/coder/classification"])]
    assert stamps == list(range(1, len(stamps) + 1)) and len(stamps) >= n_json - 2
    assert "coder.complete: 'false'" in (out / "metadata.yaml").read_text()


def test_several_bags_one_unreadable(art, tmp_path):
    ros1 = write_bag(tmp_path / "a.bag", [Frame("/cam", S, "cam", "mono8", _scene(0)[..., 0])], "ros1")
    ros2 = write_bag(tmp_path / "b", [Frame("/cam", 2 * S, "cam", "png", _scene(1))], "mcap")
    killed = write_bag(tmp_path / "c", [Frame("/cam", 3 * S, "cam", "rgb8", _scene(2))] * 5, "mcap")
    broken = storage_file(killed)
    os.truncate(broken, broken.stat().st_size * 2 // 3)  # a recording killed before its footer
    res = runner.invoke(app, ["bag", str(ros1), str(broken), str(ros2), "-t", "/cam", "-a", str(art), "--json"])
    assert res.exit_code == CODE[InputError]
    assert [(r["file"], r["stamp_ns"]) for r in map(json.loads, res.stdout.splitlines())] == \
        [(str(ros1), S), (str(ros2), 2 * S)]
    [line] = [x for x in res.stderr.splitlines() if x.startswith("error")]
    assert line.startswith(f"error: {broken}: cannot read bag (") and "mcap recover" in line


def test_bag_takes_classes_and_records_the_bank_version(art, tmp_path):
    frames = [Frame("/cam", (i + 1) * S, "cam", "rgb8", _scene(i, 32, 24)) for i in range(3)]
    bag = write_bag(tmp_path / "b", frames, "mcap")
    res = runner.invoke(app, ["bag", str(bag), "-t", "/cam", "-a", str(art), "--json", "--classes", "cat,dog,zebra"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(records) == 3 and all(set(r["top_k_names"]) <= {"cat", "dog", "zebra"} for r in records)
    shas = {r["bank_sha256"] for r in records}
    assert len(shas) == 1 and len(shas.pop()) == 64
    plain = runner.invoke(app, ["bag", str(bag), "-t", "/cam", "-a", str(art), "--json"])
    assert {json.loads(line)["bank_sha256"] for line in plain.stdout.splitlines()} != \
        {r["bank_sha256"] for r in records}
