"""``coder classify --ray --ray-address`` against a two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``, 127.0.0.1, 1 + 2 CPUs), the driver a separate process whose
working directory differs from the workers': relative paths are labeled (the driver makes them
absolute), and a file the workers cannot see is one error line, not an error row that blocks a resume.
Skipped cleanly when Ray cannot start here in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("pyarrow.parquet")  # the [ray] extra
from coder.deploy.ray_batch import prepare_env
from tests.batch_data import artifact_with_bank, hook_command, hook_env, make_images, parquet_rows

prepare_env(None)  # before Ray is imported: loopback-only nodes
ray = pytest.importorskip("ray")
START_TIMEOUT_S = 150
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    workers_cwd = tmp_path_factory.mktemp("workers")
    here = os.getcwd()

    def give_up(*_):
        raise TimeoutError

    os.chdir(workers_cwd)  # the nodes (and so their workers) start here, not in the driver's cwd
    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(START_TIMEOUT_S)
    c = None
    try:
        c = Cluster(initialize_head=True, connect=False,
                    head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 2**20})
        c.add_node(num_cpus=2, object_store_memory=100 * 2**20)  # 3 CPUs in all: 2 actors + read/decode
        c.wait_for_nodes()
    except Exception as e:  # noqa: BLE001 -- a machine where Ray cannot start skips, never hangs
        if c is not None:
            c.shutdown()
        pytest.skip(f"a two-node Ray cluster did not start here: {type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        os.chdir(here)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def art(tiny_artifact, tmp_path_factory):
    return artifact_with_bank(tiny_artifact, tmp_path_factory.mktemp("cluster"))


def _classify(cluster, cwd, marker, *args, **hooks):
    return subprocess.run(hook_command(marker, "classify", *args, "--ray", "--ray-address", cluster.address,
                                       "--actors", "2", "--batch-size", "2", **hooks),
                          cwd=cwd, capture_output=True, text=True, env=hook_env(), timeout=RUN_TIMEOUT_S)


def test_relative_paths_from_another_cwd_are_labeled(cluster, art, tmp_path):
    driver = tmp_path / "driver"
    good = make_images(driver / "in", 6, bad=False)
    res = _classify(cluster, driver, tmp_path / "m", "in", "-a", art, "--out", "o.parquet", "--json")
    assert res.returncode == 0, res.stderr
    rows = parquet_rows(driver / "o.parquet")
    assert set(rows) == {str(p) for p in good} and all(r["error"] is None for r in rows.values())
    res = _classify(cluster, driver / "in", tmp_path / "m", ".", "-a", art, "--out", "../o.parquet", "--json")
    assert res.returncode == 0 and '"skipped_existing": 6' in res.stdout, res.stderr


def test_a_file_the_workers_cannot_see_is_one_error_line_and_no_row(cluster, art, tmp_path):
    driver = tmp_path / "driver"
    good = make_images(driver / "in", 4, bad=False)
    hidden = good[1]
    kept = hidden.read_bytes()
    res = _classify(cluster, driver, tmp_path / "m", "in", "-a", art, "--out", "o.parquet",
                    remove_before_run=hidden)  # listed by the driver, gone for the workers
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 input(s) listed on this machine cannot be read on the Ray workers" in errors[0]
    assert str(hidden) in errors[0]
    assert set(parquet_rows(driver / "o.parquet")) == {str(p) for p in good} - {str(hidden)}
    hidden.write_bytes(kept)
    res = _classify(cluster, driver, tmp_path / "m", "in", "-a", art, "--out", "o.parquet", "--json")
    assert res.returncode == 0 and '"images": 1' in res.stdout, res.stderr
    assert len(parquet_rows(driver / "o.parquet")) == 4


def test_driver_is_not_a_worker(cluster):
    """The test's premise: the workers' cwd is not the driver's (else relative paths would work by luck)."""
    code = ("import os, ray; ray.init(address=%r, log_to_driver=False); "
            "print(ray.get(ray.remote(lambda: os.getcwd()).options(num_cpus=0).remote()))" % cluster.address)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=hook_env(),
                         timeout=RUN_TIMEOUT_S, cwd="/")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] != "/"
