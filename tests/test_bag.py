"""``coder bag`` on real bags written by rosbags: ROS 2 mcap and sqlite3, ROS 1; parity with
``coder classify`` on the same pixels saved as PNG; the output bag read back; errors; Ctrl-C."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
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


def _bt601_uyvy(seed: int, h: int = 30, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A (h, 2w) UYVY frame and its RGB pixels from the BT.601 video-range definition in floating point
    (R = 1.164 (Y-16) + 1.596 (V-128), G = 1.164 (Y-16) - 0.391 (U-128) - 0.813 (V-128),
    B = 1.164 (Y-16) + 2.018 (U-128)), rounded to nearest and clipped; no code under test is used.

    Fixed-point decoders (OpenCV's, cv_bridge's) agree with it to within 1e-3 before rounding, so a pair of
    pixels with a value within 0.01 of a rounding tie is made black (Y 16, U = V = 128) to keep every
    expected value unambiguous."""
    rng = np.random.default_rng(seed)
    y = rng.integers(16, 236, (h, w)).astype(float)
    u, v = (np.repeat(rng.integers(16, 241, (h, w // 2)), 2, axis=1).astype(float) for _ in range(2))
    c, d, e = 1.164 * (y - 16), u - 128, v - 128
    rgb = np.stack([c + 1.596 * e, c - 0.391 * d - 0.813 * e, c + 2.018 * d], -1)
    tie = ((np.abs(rgb - np.floor(rgb) - 0.5) < 0.01) & (rgb > 0) & (rgb < 255)).any(-1)
    tie = tie.reshape(h, w // 2, 2).any(-1).repeat(2, axis=1)  # a macropixel shares U and V
    y[tie], u[tie], v[tie] = 16, 128, 128
    rgb[tie] = 0
    quad = np.stack([u[:, 0::2], y[:, 0::2], v[:, 0::2], y[:, 1::2]], -1).astype(np.uint8)  # U Y0 V Y1
    return quad.reshape(h, 2 * w), np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)


def _bilinear_bayer(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Demosaic by definition, pixel by pixel: a pixel keeps its own sample; a missing colour is the mean (rounded
    half up) of the samples of that colour among its 8 neighbours, with the border mirrored (index -1 is 1)."""
    h, w = raw.shape
    colour = lambda yy, xx: "RGB".index(pattern[2 * (yy % 2) + xx % 2])  # noqa: E731
    mirror = lambda i, n: -i if i < 0 else 2 * (n - 1) - i if i >= n else i  # noqa: E731
    out = np.empty((h, w, 3), np.uint8)
    for yy in range(h):
        for xx in range(w):
            for c in range(3):
                if colour(yy, xx) == c:
                    out[yy, xx, c] = raw[yy, xx]
                    continue
                near = [int(raw[mirror(yy + dy, h), mirror(xx + dx, w)]) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                        if (dy, dx) != (0, 0) and colour(mirror(yy + dy, h), mirror(xx + dx, w)) == c]
                out[yy, xx, c] = (sum(near) + len(near) // 2) // len(near)
    return out


def _frames():
    """(frames for the bag, expected PIL image or None for a corrupt frame) in log order. Every expectation is
    computed here from the encodings' definitions, never by the conversion code under test."""
    rgb = [_scene(i) for i in range(12)]
    grey = rgb[4].mean(axis=2).astype(np.uint8)
    v16 = (grey.astype(np.uint16) * 250 + 37)
    mono16_want = Image.fromarray(np.floor(v16 / 257 + 0.5).astype(np.uint8))  # cv_bridge: v * 255 / 65535, rounded
    yuv, yuv_rgb = _bt601_uyvy(1)
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
    add(Frame("/cam", 3 * S, "cam", "mono16", v16, big_endian=True, pad=2), mono16_want)
    add(Frame("/cam2", 3 * S + 7, "cam2", "uyvy", yuv), Image.fromarray(yuv_rgb))
    add(Frame("/cam", 4 * S, "cam", "bayer_rggb8", bayer), Image.fromarray(_bilinear_bayer(bayer, "RGGB")))
    add(Frame("/cam", 5 * S, "cam", "rgb8", rgb[5], raw=b"\x00" * 100), None)  # truncated: corrupt
    add(Frame("/cam2/compressed", 5 * S + 7, "cam2", "jpeg", rgb[8], raw=jpeg.getvalue()), Image.open(io.BytesIO(jpeg.getvalue())))
    add(Frame("/cam2/compressed", 6 * S + 7, "cam2", "png", rgb[9]), Image.fromarray(rgb[9]))
    add(Frame("/cam2/compressed", 7 * S + 7, "cam2", "jpeg", rgb[10], raw=b"\xff\xd8\xff\xe0 broken"), None)
    add(Frame("/cam", 8 * S, "cam", "bgra8", rgba[..., [2, 1, 0, 3]]), Image.fromarray(rgba, "RGBA"))
    # image_transport's png for a mono16 camera: a 16-bit grey PNG, the very frame of the raw mono16 one above
    add(Frame("/cam2/compressed", 9 * S + 7, "cam2", "png", v16, fmt="mono16; png compressed mono16"), mono16_want)
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


def test_frames_decode_to_the_pixels_their_definitions_give():
    """Pixel for pixel, before any model: each good frame's message -> exactly its independent expectation."""
    from rosbags.typesys import Stores, get_typestore

    from tests.ros_bags import message

    ts = get_typestore(Stores.ROS2_HUMBLE)
    for frame, want in _frames():
        if want is not None:
            msgtype, msg = message(ts, frame)
            got = rm.msg_to_pil(msg, msgtype, frame.topic)
            assert got.mode == want.mode, frame.encoding
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=frame.encoding)


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
    mono16, png16 = records[4], records[-1]  # the same pixels, raw and as a 16-bit PNG: the same result
    assert png16["topic"] == "/cam2/compressed" and png16["name"] == mono16["name"]
    np.testing.assert_allclose(png16["stage1_scores"], mono16["stage1_scores"], atol=1e-5)
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


# `coder bag` in a subprocess whose commit-point hook (coder.deploy.bag._step) stops at the N-th time point P
# is reached: "kill" SIGKILLs the process there (a power cut), "wait" says "@P" on stderr and sleeps until the
# test's signal arrives (a deterministic point, never a race with the work finishing).
DRIVER = """
import os, signal, sys, time
import coder.deploy.bag as bag
point, n, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = {}
def step(name):
    seen[name] = seen.get(name, 0) + 1
    if (name, seen[name]) == (point, n):
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stderr.write("@" + name + chr(10))
        sys.stderr.flush()
        time.sleep(300)
bag._step = step
from coder.cli import main
sys.exit(main(sys.argv[4:]))
"""
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _driven(point: str, n: int, action: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, point, str(n), action, "bag", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _tree_sha(path: Path) -> dict:
    from coder.store import sha256_file

    return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def _stamps(out: Path) -> list[int]:
    from rosbags.highlevel import AnyReader

    with AnyReader([out]) as reader:
        return [reader.deserialize(raw, c.msgtype).header.stamp.sec for c, _, raw in
                reader.messages([c for c in reader.connections if c.topic == "/coder/classification"])]


def _complete(out: Path) -> bool:
    meta = (out / "metadata.yaml").read_text()
    return "coder.complete: 'true'" in meta or 'coder.complete: "true"' in meta


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    frames = [Frame("/cam", (i + 1) * S, "cam", "rgb8", _scene(i % 7, 32, 24)) for i in range(8)]
    return write_bag(tmp_path_factory.mktemp("small") / "rec", frames, "mcap")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_leaves_a_readable_partial_bag(art, small_bag, tmp_path, sig, code, word):
    """SIGINT and SIGTERM, sent while the 3rd result is being written: exit 130 / 143, and the out-bag holds
    exactly the 3 results written, readable, marked unfinished. A second run with --force replaces it."""
    out = tmp_path / "partial"
    args = [str(small_bag), "-t", "/cam", "-a", str(art), "--json", "--batch-size", "2", "--out-bag", str(out)]
    proc = _driven("frame", 3, "wait", args)
    while (line := proc.stderr.readline()) and not line.rstrip().endswith("@frame"):
        pass
    assert line, proc.communicate()
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert word in err and "did not finish; wrote the 3 results" in err
    assert len(rest.splitlines()) == 2  # frames 1, 2 printed; the 3rd was written to the bag, then the signal
    assert _stamps(out) == [1, 2, 3] and not _complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["partial"]  # no staging left
    res = runner.invoke(app, ["bag", *args, "--force"])
    assert res.exit_code == 0, res.output
    assert _stamps(out) == list(range(1, 9)) and _complete(out)


def test_interrupted_force_run_keeps_the_previous_bag(art, small_bag, tmp_path):
    out = tmp_path / "labels"
    args = [str(small_bag), "-t", "/cam", "-a", str(art), "--out-bag", str(out), "--force"]
    assert runner.invoke(app, ["bag", *args]).exit_code == 0
    before = _tree_sha(out)
    proc = _driven("frame", 2, "wait", args + ["--every", "2"])
    while (line := proc.stderr.readline()) and not line.rstrip().endswith("@frame"):
        pass
    assert line, proc.communicate()
    res = runner.invoke(app, ["bag", *args])  # a second run on the same out-bag meanwhile: exit 3, naming the first
    assert res.exit_code == 3 and f"pid {proc.pid}" in res.output, res.output
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "the previous bag is kept" in err, err
    assert _tree_sha(out) == before and _complete(out) and _stamps(out) == list(range(1, 9))
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    res = runner.invoke(app, ["bag", *args[:-3], "--out-bag", str(link), "--force", "--every", "4"])
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and _stamps(link) == [1, 5] and _complete(out)  # the bag it points to was replaced


@pytest.mark.parametrize("where", ["same", "inside", "contains", "same-file"])
def test_out_bag_over_an_input_is_refused_and_nothing_is_deleted(art, tmp_path, where):
    """`coder bag REC --out-bag REC --force` once deleted the recording. Any out-bag equal to, inside, or holding
    an input bag is a usage error (exit 2) before anything is opened or deleted."""
    rec = write_bag(tmp_path / "data" / "rec", [Frame("/cam", S, "cam", "rgb8", _scene(0))], "mcap")
    before = _tree_sha(tmp_path / "data")
    given = {"same": rec, "inside": rec, "contains": rec, "same-file": storage_file(rec)}[where]
    out = {"same": rec, "inside": rec / "labels", "contains": tmp_path / "data",
           "same-file": rec / "x" / ".." / ".." / "rec"}[where]
    res = runner.invoke(app, ["bag", str(given), "-t", "/cam", "-a", str(art), "--out-bag", str(out), "--force"])
    assert res.exit_code == CODE[ConfigError], res.output
    [line] = [x for x in res.output.splitlines() if x.startswith("error")]
    assert "is, holds or lies inside the input bag" in line
    assert _tree_sha(tmp_path / "data") == before


def test_classifier_options_reach_the_classifier(art, small_bag, tmp_path, monkeypatch):
    """`coder bag` builds the one ClassifierOptions: --engine-dir, --rebuild-stale, --adapter, --fused-head."""
    from coder.runtime.classifier import ClassifierOptions

    seen = []

    def load(self):
        seen.append(self)
        raise ConfigError("stop here")

    monkeypatch.setattr(ClassifierOptions, "load", load)
    res = runner.invoke(app, ["bag", str(small_bag), "-t", "/cam", "-a", str(art), "--engine-dir", str(tmp_path / "e"),
                              "--rebuild-stale", "--adapter", str(tmp_path / "a.npz"), "--no-fused-head", "--tau", "0.5",
                              "--backend", "cpu"])
    assert res.exit_code == CODE[ConfigError] and "stop here" in res.output
    [o] = seen
    assert (o.engines.engine_dir, o.engines.rebuild_stale, o.adapter, o.fused_head, o.tau, o.backend) == \
        (str((tmp_path / "e").resolve()), True, str((tmp_path / "a.npz").resolve()), False, 0.5, "cpu")
    assert o.artifacts == str(art.resolve())


# Every commit point of the out-bag, in the order a run reaches them (moved-previous only when replacing).
POINTS = [("opened", 1), ("frame", 1), ("frame", 8), ("closed", 1), ("moved-previous", 1), ("renamed", 1),
          ("cleaned", 1)]


@pytest.mark.parametrize("previous", [True, False], ids=["replacing", "new"])
def test_killed_at_every_commit_point_loses_nothing(art, small_bag, tmp_path, previous):
    """Fault injection (SIGKILL, no cleanup runs) at each commit point of `--out-bag`, then a plain re-run.
    After the kill: the input bag unchanged, the out-bag absent, the previous one intact, or the new one complete
    and readable. The re-run: exit 0 (never 70), a complete bag, nothing left beside it."""
    src = _tree_sha(small_bag)
    for point, n in POINTS if previous else [p for p in POINTS if p[0] in ("closed", "renamed", "cleaned")]:
        case = tmp_path / f"{point}-{n}"
        case.mkdir()
        out = case / "labels"
        args = [str(small_bag), "-t", "/cam", "-a", str(art), "--out-bag", str(out), "--force", "--batch-size", "3"]
        old = None
        if previous:
            assert runner.invoke(app, ["bag", *args, "--every", "2"]).exit_code == 0  # 4 results
            old = _tree_sha(out)
        proc = _driven(point, n, "kill", args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (point, err[-2000:])
        assert _tree_sha(small_bag) == src, point
        if out.exists():
            now = _tree_sha(out)
            assert now == old or (_complete(out) and _stamps(out) == list(range(1, 9))), point
        else:
            assert point in ("moved-previous", "renamed", "opened", "frame", "closed") and (
                not previous or (case / ".labels.previous").is_dir()), point
        if point == "moved-previous":  # the user's bag is restored by the next run, even one without --force
            res = runner.invoke(app, ["bag", *args[:-3]])
            assert res.exit_code == CODE[ConfigError] and _tree_sha(out) == old, res.output
        res = runner.invoke(app, ["bag", *args])
        assert res.exit_code == 0, (point, res.output)
        assert _complete(out) and _stamps(out) == list(range(1, 9)), point
        assert sorted(p.name for p in case.iterdir()) == ["labels"], point
    assert _tree_sha(small_bag) == src


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
