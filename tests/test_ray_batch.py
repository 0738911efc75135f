"""``coder classify --ray`` on a local Ray (started once for this module by ``connect``, as the CLI
starts it): rows equal ``classify --json``, bad files are error rows, resume, text lists, the same
table as the single-process ``--out``; SIGTERM while Ray runs; ``connect`` beside a stale cluster file."""

from __future__ import annotations

import signal
from pathlib import Path

import onnxruntime as ort
import pytest

pq = pytest.importorskip("pyarrow.parquet")  # the [ray] extra
import pyarrow as pa  # noqa: E402
from typer.testing import CliRunner

from coder.cli import app
from coder.cli.common import EXIT_CODES
from coder.doctor import nvidia_gpu_present
from coder.errors import ConfigError, InputError
from coder.deploy.ray_batch import connect, prepare_env
from tests.batch_data import (BAD, artifact_with_bank, assert_rows_match, hook_command, hook_env, json_records,
                              make_images, parquet_rows, wait_for)

prepare_env(None)  # before Ray is imported: a loopback-only local Ray
ray = pytest.importorskip("ray")
runner = CliRunner()
CODE = {cls: code for cls, code, _ in EXIT_CODES}
RAY_START_TIMEOUT_S = 120
TEST_TIMEOUT_S = 180


def _alarm(seconds: int, what: str):
    def fire(*_):
        raise TimeoutError(f"{what} took more than {seconds} s")

    signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)


@pytest.fixture(scope="module")
def local_ray():
    _alarm(RAY_START_TIMEOUT_S, "starting a local Ray")
    try:
        started, _ = connect(None)  # what `classify --ray` does: a new local instance, loopback only
    finally:
        signal.alarm(0)
    assert started
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _bounded(local_ray):
    _alarm(TEST_TIMEOUT_S, "a Ray test")
    yield
    signal.alarm(0)


@pytest.fixture(scope="module")
def art(tiny_artifact, tmp_path_factory):
    return artifact_with_bank(tiny_artifact, tmp_path_factory.mktemp("ray"))


def _label(*args):
    return runner.invoke(app, ["classify", *map(str, args)])


def test_ray_rows_equal_json_errors_are_rows_and_resume(art, tmp_path):
    good = make_images(tmp_path / "in")
    out = tmp_path / "labels.parquet"
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--ray", "--batch-size", "4")
    assert res.exit_code == CODE[InputError], res.output
    assert "labeled 12 images (3 errors)" in res.stdout and "1 actor(s) used" in res.stdout
    rows = parquet_rows(out)
    assert len(rows) == len(good) + len(BAD)
    assert_rows_match(rows, json_records(_label(tmp_path / "in", "-a", art, "--json").stdout))
    errors = {f for f, r in rows.items() if r["error"] is not None}
    assert errors == {str(tmp_path / "in" / name) for name in BAD}
    # resume: nothing new -> no new rows, no new part; 5 new files -> 5 new rows
    parts = sorted(out.glob("part-*"))
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--ray", "--batch-size", "4")
    assert res.exit_code == 0 and "labeled 0 images" in res.stdout and sorted(out.glob("part-*")) == parts
    make_images(tmp_path / "in", 5, start=50, bad=False)
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--ray", "--batch-size", "4")
    assert "labeled 5 images (0 errors)" in res.stdout, res.output
    assert len(parquet_rows(out)) == len(good) + len(BAD) + 5


def test_ray_and_single_process_write_the_same_table(art, tmp_path):
    good = make_images(tmp_path / "in", 6)
    lst = tmp_path / "paths.txt"
    lst.write_text("\n".join(str(p) for p in good[:4]) + f"\nfile://{good[4]}\n{tmp_path / 'in' / 'bad.jpg'}\n")
    a, b = tmp_path / "ray.parquet", tmp_path / "local.parquet"
    assert _label(lst, "-a", art, "--out", a, "--ray", "--actors", "1").exit_code == CODE[InputError]
    assert _label(lst, "-a", art, "--out", b).exit_code == CODE[InputError]
    ta, tb = (pq.read_table(p).sort_by("file") for p in (a, b))
    assert ta.column("file").to_pylist() == sorted([*map(str, good[:5]), str(tmp_path / "in" / "bad.jpg")])
    assert ta.schema.equals(tb.schema, check_metadata=False)
    for col in ta.column_names:
        if col not in ("stage1_scores", "gap", "rerank_scores"):
            assert ta.column(col).to_pylist() == tb.column(col).to_pylist(), col
    assert_rows_match(parquet_rows(a), {f: r for f, r in parquet_rows(b).items() if r["error"] is None})


def test_ray_pool_that_cannot_fit_is_a_config_error(art, tmp_path):
    fits = int(ray.cluster_resources()["CPU"])  # CPU actors decode their own inputs: every CPU can hold one
    make_images(tmp_path / "in", 1, bad=False)
    res = _label(tmp_path / "in", "-a", art, "--out", tmp_path / "o.parquet", "--ray", "--actors", fits + 1)
    assert res.exit_code == CODE[ConfigError] and f"at most {fits}" in res.output
    res = _label(tmp_path / "in", "-a", art, "--out", tmp_path / "o.parquet", "--ray", "--actors", "3,2")
    assert res.exit_code == CODE[ConfigError]


def test_local_ray_listens_on_loopback_only():
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_actor_that_cannot_load_is_one_typed_error(art, tmp_path):
    from coder.errors import BackendError

    make_images(tmp_path / "in", 1, bad=False)
    res = _label(tmp_path / "in", "-a", art, "--out", tmp_path / "o.parquet", "--ray", "--backend", "cuda",
                 "--gpus-per-actor", "0")  # no CUDA provider here: the actor's Classifier.load raises
    assert res.exit_code == CODE[BackendError], res.output
    ours = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and ours[0].startswith("error: backend 'cuda'")  # Ray's own log lines aside


def test_pool_fits_cpus_and_gpus():
    from coder.deploy.ray_batch import RayOptions, fit_pool, parse_actors

    assert parse_actors(None) == (1, None) and parse_actors("3") == (3, 3) and parse_actors("1,4") == (1, 4)
    cpu = RayOptions(actors=(1, None), cpus_per_actor=2)
    assert fit_pool(cpu, 16, 0, "cpu").actors == (1, 8)  # CPU actors read and decode themselves
    staged = RayOptions(actors=(1, None), cpus_per_actor=2, decode_in_actor=False)
    assert fit_pool(staged, 16, 0, "cpu").actors == (1, 7)  # 0.25 CPU stays for read/decode tasks
    assert fit_pool(RayOptions(actors=(1, None)), 16, 2, "cuda").actors == (1, 2)  # one GPU each
    assert fit_pool(RayOptions(actors=(2, 8), gpus_per_actor=0.5), 16, 2, "cuda").actors == (2, 4)
    assert fit_pool(RayOptions(actors=(1, None), gpus_per_actor=0), 4, 0, "cuda").actors == (1, 4)
    assert RayOptions().in_actor("cpu") and not RayOptions().in_actor("cuda")
    assert not RayOptions(gpus_per_actor=0.5).in_actor("cpu") and RayOptions(gpus_per_actor=0).in_actor("cuda")
    with pytest.raises(ConfigError, match="at most 0"):
        fit_pool(RayOptions(actors=(1, 1)), 16, 0, "tensorrt")


HAS_CUDA = nvidia_gpu_present() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and onnxruntime-gpu")
def test_gpu_actors_label_like_the_cpu(art, tmp_path):
    make_images(tmp_path / "in", 4, bad=False)
    out = tmp_path / "gpu.parquet"
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--ray", "--backend", "cuda", "--actors", "1")
    assert res.exit_code == 0, res.output
    rows = parquet_rows(out)
    assert {r["backend"] for r in rows.values()} == {"cuda"}
    cpu = json_records(_label(tmp_path / "in", "-a", art, "--json", "--backend", "cpu").stdout)
    assert {f: r["label"] for f, r in rows.items()} == {f: r["label"] for f, r in cpu.items()}


def test_unreachable_cluster_fails_fast(art, tmp_path):
    import socket

    from coder.errors import BackendError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_images(tmp_path / "in", 1, bad=False)
    res = _label(tmp_path / "in", "-a", art, "--out", tmp_path / "o.parquet", "--ray", "--ray-address",
                 f"127.0.0.1:{port}")
    assert res.exit_code == CODE[BackendError] and "cannot reach the Ray cluster" in res.output


def test_sigterm_while_ray_runs_writes_every_finished_row_and_resume_completes(art, tmp_path):
    """The CLI starts its own Ray (ray.init replaces SIGTERM's handler); held after the first rows reached the
    writer, SIGTERM: exit 143, those rows committed, no temporary left; the re-run labels exactly the rest."""
    import subprocess

    make_images(tmp_path / "in", 10, bad=False)
    out, marker = tmp_path / "o.parquet", tmp_path / "held"
    proc = subprocess.Popen(hook_command(marker, "classify", tmp_path / "in", "-a", art, "--out", out, "--ray",
                                         "--actors", "1", "--batch-size", "2", hold_after_rows=2,
                                         rows_per_part=1000),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=hook_env())
    held = int(wait_for(marker, proc))
    assert held < 10 and not list(out.glob("part-*"))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "terminated" in stderr and not list(out.glob(".tmp-*"))
    assert len(parquet_rows(out)) == held
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--ray")
    assert f"labeled {10 - held} images" in res.stdout and f"{held} already in" in res.stdout, res.output
    assert len(parquet_rows(out)) == 10


def test_connect_starts_its_own_ray_beside_a_stale_cluster_file(tmp_path):
    """A `ray start` killed long ago leaves RAY_TMPDIR/ray/ray_current_cluster; the embedded default must
    not try to join it (it once failed with exit 6) but start its own instance."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="r", dir="/tmp") as tmp:  # short: Ray's socket paths have a limit
        (Path(tmp) / "ray").mkdir()
        (Path(tmp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # nobody listens there
        code = ("import ray; from coder.deploy.ray_batch import connect; started, cpus = connect(None); "
                "print(started, cpus > 0, ray.get_runtime_context().gcs_address != '127.0.0.1:1', "
                "ray.util.get_node_ip_address()); ray.shutdown()")
        env = {**hook_env(), "RAY_TMPDIR": tmp}
        env.pop("RAY_ADDRESS", None)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             timeout=RAY_START_TIMEOUT_S)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "True", "True", "127.0.0.1"], res.stdout


def test_decode_tasks_and_decoding_actors_write_the_same_rows(art, tmp_path):
    """The two pipelines (separate read/decode tasks, as GPU actors use; actors decoding themselves, as CPU
    actors do) give the same rows, error rows included."""
    from coder.deploy.batch import ClassifyJob
    from coder.deploy.ray_batch import RayOptions, run_ray
    from coder.deploy.sources import expand_sources
    from coder.runtime.classifier import ClassifierOptions

    make_images(tmp_path / "in", 5)
    sources = list(expand_sources([tmp_path / "in"]))
    job = ClassifyJob(ClassifierOptions(str(art), backend="cpu"))
    tables = {}
    for in_actor in (False, True):
        got = []
        stats = run_ray(job, sources, RayOptions(actors=(1, 1), batch_size=3, decode_in_actor=in_actor), got.append)
        assert stats.backends == {"cpu"} and not stats.unseen
        tables[in_actor] = pa.concat_tables(got).sort_by("file").to_pylist()
    assert len(tables[True]) == len(sources) and sum(r["error"] is not None for r in tables[True]) == len(BAD)
    for a, b in zip(tables[False], tables[True]):
        assert {k: v for k, v in a.items() if "score" not in k and k != "gap"} == \
            {k: v for k, v in b.items() if "score" not in k and k != "gap"}


@pytest.mark.parametrize("point", [3, 4])  # the first part written to its temporary name; renamed
def test_sigkill_of_a_ray_driver_then_resume_gives_one_row_per_file(art, tmp_path, point):
    """A --ray driver SIGKILLed at a commit point (its Ray dies with it) loses no committed part; the re-run
    starts its own Ray and completes: one row per file, no temporary left, never exit 70."""
    import subprocess

    make_images(tmp_path / "in", 4, bad=False)
    out, marker = tmp_path / "o.parquet", tmp_path / "killed"
    res = subprocess.run(hook_command(marker, "classify", tmp_path / "in", "-a", art, "--out", out, "--ray",
                                      "--actors", "1", "--batch-size", "2", kill_at=point, rows_per_part=2),
                         capture_output=True, text=True, env=hook_env(), timeout=300)
    assert res.returncode == -9 and marker.exists(), res.stderr
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--ray")
    assert res.exit_code == 0, res.output
    assert f"{2 if point == 4 else 0} already in" in res.stdout  # the committed part is kept, the rest redone
    assert len(parquet_rows(out)) == 4 and not list(out.glob(".tmp-*"))


def test_stop_iteration_closes_the_batches_and_waits_for_ray_data_threads():
    """Before ray.shutdown(): the iterator is closed on this thread and Ray Data's threads started by the run
    have ended (one still calling into Ray after the shutdown made Ray exit the process with status 1)."""
    import threading

    from coder.deploy.ray_batch import stop_iteration

    release, closed = threading.Event(), []
    old = threading.Thread(target=release.wait, name="Prefetcher-old", daemon=True)
    old.start()
    before = set(threading.enumerate())
    worker = threading.Thread(target=release.wait, name="Prefetcher", daemon=True)  # ends once closed
    other = threading.Thread(target=release.wait, name="not-ray-data", daemon=True)
    worker.start()
    other.start()

    def batches():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)
            release.set()

    it = batches()
    assert next(it) == 1
    assert stop_iteration(it, before, timeout=30) == []
    assert closed == [True] and not worker.is_alive()
    stuck = threading.Event()
    late = threading.Thread(target=stuck.wait, name="StreamingExecutor-1", daemon=True)
    late.start()
    assert stop_iteration(iter(()), before, timeout=0.05) == ["StreamingExecutor-1"]  # bounded, and said
    stuck.set()
