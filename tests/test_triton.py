"""``coder triton-repo`` / ``coder serve`` against a REAL tritonserver on loopback.

The server is the one nvidia-pytriton bundles (Python backend only). Tests that need it skip,
naming the reason, where it cannot start on this machine; everything else runs anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from coder.cli import app

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120
N_IMAGES = 52
runner = CliRunner()


@pytest.fixture(scope="module")
def served_art(tiny_artifact, tmp_path_factory) -> Path:
    """The tiny artifact with a cifar10 bank that has rerank pairs (so the gate can fire)."""
    import dataclasses

    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = tmp_path_factory.mktemp("triton") / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    t = init_texts("cifar10")
    pairs = {(a, b): ("some attribute",) for a in range(10) for b in range(10) if a != b}
    build_bank(art, dataclasses.replace(t, pairs=pairs))
    return art


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """52 scenes in JPEG, PNG and WebP of varied sizes (and one grey, one RGBA)."""
    from coder.samples import synthetic_scene

    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(N_IMAGES):
        img = synthetic_scene(500 + i, (96 + 13 * (i % 7), 80 + 11 * (i % 5)))
        img = img.convert("L") if i == 5 else img.convert("RGBA") if i == 7 else img
        ext = ("jpg", "png", "webp")[i % 3]
        p = d / f"img{i:03d}.{ext}"
        img.save(p)
        paths.append(p)
    return paths


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HF_HUB_OFFLINE": "1"}


def _server_or_skip():
    from coder.deploy.triton_server import find_tritonserver, libpython_dir
    from coder.errors import ServeError

    try:
        binary = find_tritonserver()
        libpython_dir()
    except ServeError as e:
        pytest.skip(f"no usable tritonserver here: {e}")
    return binary


def _http(port: int, path: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def _start_serve(art: Path, log: Path, *extra: str) -> SimpleNamespace:
    """``coder serve`` as a real subprocess on free loopback ports, once it printed ``ready:``."""
    import psutil

    _server_or_skip()
    http, grpc, metrics = _free_ports(3)
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "coder", "serve", "-a", str(art),
                                 "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                                 "--ready-timeout", str(START_TIMEOUT), *extra],
                                stdout=f, stderr=subprocess.STDOUT, env=_env())
    deadline = time.monotonic() + START_TIMEOUT + 10
    while "ready:" not in log.read_text(errors="replace"):
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            if "error while loading shared libraries" in text or "GLIBC" in text:
                pytest.skip(f"the bundled tritonserver cannot start on this machine: {text[-400:]}")
            pytest.fail(f"coder serve exited {proc.returncode}:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"coder serve not ready after {START_TIMEOUT} s:\n{text[-3000:]}")
        time.sleep(0.25)
    tree = psutil.Process(proc.pid).children(recursive=True)
    return SimpleNamespace(http=http, grpc=grpc, metrics=metrics, proc=proc, tree=tree, log=log)


def _stop(srv: SimpleNamespace) -> None:
    if srv.proc.poll() is None:  # a failed test: do not leave the server behind
        srv.proc.send_signal(signal.SIGINT)
        try:
            srv.proc.wait(30)
        except subprocess.TimeoutExpired:
            srv.proc.kill()


@pytest.fixture(scope="module")
def server(served_art, tmp_path_factory):
    srv = _start_serve(served_art, tmp_path_factory.mktemp("serve") / "serve.log", "--max-queue-delay-us", "20000")
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def reference(served_art, images) -> dict[str, dict]:
    """``coder classify --json`` (a real subprocess) on the same files."""
    res = subprocess.run([sys.executable, "-m", "coder", "classify", *map(str, images), "-a", str(served_art),
                          "--backend", "cpu", "--json"], capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return {r["file"]: r for r in rows}


def test_served_labels_match_classify_and_batches_form(server, images, reference, tmp_path):
    from coder.client import CoderClient

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(images[0].read_bytes()[:200])  # a truncated JPEG
    jobs = [*images[:20], corrupt, *images[20:]]
    clients: dict = {}

    def send(i_path):
        i, path = i_path
        key = (threading.get_ident(), i % 2)
        if key not in clients:  # one client per thread and protocol; HTTP and gRPC alternate
            clients[key] = CoderClient(f"127.0.0.1:{server.http}" if i % 2 == 0 else f"127.0.0.1:{server.grpc}",
                                       "http" if i % 2 == 0 else "grpc", timeout=30)
        return clients[key].classify_file(path)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(send, enumerate(jobs)))
    bad = got[20]
    assert bad["error"] and "image" in bad["error"] and "label" not in bad
    good = [g for g in got if g["file"] != str(corrupt)]
    assert len(good) == N_IMAGES and all(g["error"] is None for g in good), [g for g in good if g["error"]]
    for g in good:
        ref = reference[g["file"]]
        assert (g["label"], g["name"], g["top_k"], g["reranked"]) == \
               (ref["label"], ref["name"], list(ref["top_k"]), ref["reranked"]), g["file"]
        np.testing.assert_allclose(g["stage1_scores"], ref["stage1_scores"], atol=1e-4, rtol=0)
        assert abs(g["gap"] - ref["gap"]) <= 1e-4
    # The request after a corrupt one is answered normally.
    assert send((0, corrupt))["error"] and send((0, images[3]))["label"] == reference[str(images[3])]["label"]
    stats = _http(server.http, "/v2/models/coder/stats")["model_stats"][0]
    sizes = {int(b["batch_size"]) for b in stats.get("batch_stats", [])}
    assert max(sizes) > 1, f"dynamic batching formed no batch > 1: {stats}"
    for c in clients.values():
        c.close()


def test_multi_image_request_and_metrics(server, images, reference):
    from coder.client import CoderClient

    with CoderClient(f"127.0.0.1:{server.http}", timeout=30) as c:
        rows = c.classify_bytes([p.read_bytes() for p in images[:3]], [str(p) for p in images[:3]])
        assert [r["label"] for r in rows] == [reference[str(p)]["label"] for p in images[:3]]
        rows = c.classify_bytes([images[0].read_bytes(), b"not an image"])  # one bad image fails its request
        assert all(r["error"] for r in rows)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=5) as r:
        assert b'nv_inference_request_success{model="coder"' in r.read()


def test_curl_style_binary_request(server, images, reference):
    """The README's raw KServe v2 binary-data request, byte for byte, without tritonclient."""
    import struct

    data = images[1].read_bytes()
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(data) + 4}}],
                         "outputs": [{"name": "label"}, {"name": "name"}]}).encode()
    body = header + struct.pack("<I", len(data)) + data
    req = urllib.request.Request(f"http://127.0.0.1:{server.http}/v2/models/coder/infer", data=body, headers={
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.loads(r.read())
    got = {o["name"]: o["data"] for o in out["outputs"]}
    assert got["label"] == [reference[str(images[1])]["label"]] and got["name"] == [reference[str(images[1])]["name"]]
    assert _raw_infer_status(server.http, images[1].read_bytes()[:300]) == 400  # the client's fault: never a 5xx


def _raw_infer_status(port: int, data: bytes) -> int:
    """HTTP status of one binary-data request carrying ``data`` as the image (a corrupt image: 400, not 500,
    since clients and proxies retry a 5xx)."""
    status, body = _infer(port, data)
    if status != 200:
        assert "image" in body.get("error", ""), body
    return status


def _infer(port: int, data: bytes, params: dict | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON reply) of one binary-data KServe v2 request, with request ``parameters``."""
    import struct
    import urllib.error

    head = {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(data) + 4}}]}
    header = json.dumps({**head, **({"parameters": params} if params else {})}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/coder/infer",
                                 data=header + struct.pack("<I", len(data)) + data,
                                 headers={"Content-Type": "application/octet-stream",
                                          "Inference-Header-Content-Length": str(len(header))})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_per_request_classes_through_the_real_server(server, served_art, images, reference):
    """The KServe v2 request parameter ``classes``: labels from that list (as ``classify --classes``), the same
    list again is a cache hit (the server's metrics say so), a bad list is HTTP 400, no list: the served bank."""
    from PIL import Image

    from coder.client import CoderClient
    from coder.deploy.serve_stats import parse_metrics
    from coder.runtime.classifier import Classifier

    def metrics():
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    names = "zebra,lion,okapi,cat,tabby cat"
    before = metrics()
    status, first = _infer(server.http, images[4].read_bytes(), {"classes": names})
    assert status == 200, first
    got = {o["name"]: o["data"] for o in first["outputs"]}
    want = Classifier.load(served_art, backend="cpu", classes=names.split(",")).classify(
        [Image.open(images[4])], 5)[0]
    assert got["name"] == [want.name] and got["label"] == [want.label] and got["top_k"] == list(want.top_k)
    assert max(got["top_k"]) < 5
    status, second = _infer(server.http, images[4].read_bytes(), {"classes": " zebra, lion,okapi ,cat,tabby cat"})
    assert status == 200 and second["outputs"] == first["outputs"]
    after = metrics()
    assert after["misses"] - before.get("misses", 0) == 1 and after["hits"] - before.get("hits", 0) == 1
    assert after["class_lists"] >= 1 and after["bank_cache_bytes"] > 0 and after["limit_bytes"] == 256 * 2**20
    status, bad = _infer(server.http, images[4].read_bytes(), {"classes": "zebra,Zebra,lion,okapi,cat"})
    assert status == 400 and "twice" in bad["error"], bad
    status, plain = _infer(server.http, images[4].read_bytes())
    assert status == 200 and {o["name"]: o["data"] for o in plain["outputs"]}["label"] == \
        [reference[str(images[4])]["label"]]
    assert metrics()["misses"] == after["misses"]  # neither the bad list nor the plain request built a bank
    # The Python client sends the same parameter, over HTTP and gRPC alike (a list or a comma-separated string).
    for protocol, port in (("http", server.http), ("grpc", server.grpc)):
        with CoderClient(f"127.0.0.1:{port}", protocol, timeout=60) as c:
            [r] = c.classify_bytes([images[4].read_bytes()], classes=names.split(","))
            assert (r["error"], r["label"], r["name"]) == (None, want.label, want.name), protocol
            assert "twice" in c.classify_file(images[4], classes="zebra,Zebra")["error"], protocol
    assert metrics()["misses"] == after["misses"]  # the cached list again


def test_sigint_stops_everything(server):
    """Runs last in this module: Ctrl-C to ``coder serve`` stops the server and its Python stubs."""
    import psutil

    assert any("tritonserver" in " ".join(p.cmdline()) for p in server.tree if p.is_running())
    assert any("triton_python_backend_stub" in " ".join(p.cmdline()) for p in server.tree if p.is_running())
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(40) == 0, server.log.read_text()[-2000:]
    gone, alive = psutil.wait_procs(server.tree, timeout=10)
    assert not alive, [p.pid for p in alive]
    log = server.log.read_text()
    assert "stopped" in log
    # the last stats line, printed before stopping: requests and the class-list bank cache
    [last] = [line for line in log.splitlines() if line.startswith("stats:")][-1:]
    assert "requests" in last and "class-list banks:" in last and "MB of 256 MB" in last, last


def test_ensemble_layout_serves_the_same(served_art, images, reference, tmp_path):
    """``--ensemble python``: preprocess -> fused head -> gate as three batched models."""
    from coder.client import CoderClient

    srv = _start_serve(served_art, tmp_path / "serve.log", "--ensemble", "python", "--max-queue-delay-us", "20000")
    try:
        def send(path):
            with CoderClient(f"127.0.0.1:{srv.http}", timeout=30) as c:
                return c.classify_file(path)

        jobs = [*images[:6], tmp_path / "serve.log", *images[6:12]]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(send, jobs))
        assert "not an image" in got[6]["error"]
        assert _raw_infer_status(srv.http, b"not an image") == 400  # the ensemble passes the first step's code on
        for g in got[:6] + got[7:]:
            ref = reference[g["file"]]
            assert (g["label"], g["top_k"], g["reranked"]) == (ref["label"], list(ref["top_k"]), ref["reranked"])
            np.testing.assert_allclose(g["stage1_scores"], ref["stage1_scores"], atol=1e-4, rtol=0)
        stats = _http(srv.http, "/v2/models/coder_head/stats")["model_stats"][0]
        assert int(stats["inference_count"]) == 12  # the corrupt request never reached the head
        # `coder serve` killed outright (no handler runs): the server still goes, and its stubs with it.
        import psutil

        srv.proc.kill()
        srv.proc.wait(10)
        _, alive = psutil.wait_procs(srv.tree, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        _stop(srv)
        log = srv.log.read_text(errors="replace")
        if "server log " in log:  # the killed process could not remove its temporary directory
            shutil.rmtree(Path(log.split("server log ")[1].split(";")[0]).parent, ignore_errors=True)


def _has_cuda() -> bool:
    import onnxruntime

    from coder.doctor import nvidia_gpu_present

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers() and nvidia_gpu_present()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU and onnxruntime-gpu (the [gpu] extra)")
def test_cuda_backend_serves_the_same(served_art, images, reference, tmp_path):
    """``--backend cuda``: the Classifier in the Python model runs on ONNX Runtime's CUDA provider."""
    from coder.client import CoderClient

    srv = _start_serve(served_art, tmp_path / "serve.log", "--backend", "cuda")
    try:
        with CoderClient(f"127.0.0.1:{srv.http}", timeout=60) as c:
            for p in images[:8]:
                g, ref = c.classify_file(p), reference[str(p)]
                assert g["top_k"][0] == ref["top_k"][0]  # GPU kernels differ from the CPU reference in the last bits
                np.testing.assert_allclose(g["stage1_scores"], ref["stage1_scores"], atol=1e-2, rtol=0)
    finally:
        _stop(srv)


def test_openvino_backend_serves_through_the_real_server(served_art, images, tmp_path):
    """``--backend openvino``: the Python model's Classifier runs on OpenVINO; `coder serve` names what runs."""
    pytest.importorskip("openvino")
    from PIL import Image

    from coder.client import CoderClient
    from coder.runtime.classifier import Classifier

    srv = _start_serve(served_art, tmp_path / "serve.log", "--backend", "openvino", "--top-k", "3")
    try:
        want = Classifier.load(served_art, backend="openvino").classify([Image.open(p) for p in images[:2]], 3)
        with CoderClient(f"127.0.0.1:{srv.http}", timeout=60) as c:
            got = [c.classify_file(p) for p in images[:2]]
        for g, w in zip(got, want):
            assert (g["label"], g["top_k"]) == (w.label, list(w.top_k)), g
            np.testing.assert_allclose(g["stage1_scores"], w.stage1_scores, atol=1e-4, rtol=0)
        [line] = [x for x in srv.log.read_text().splitlines() if x.startswith("backend:")]
        assert line == f"backend: {want[0].backend} (1 instance)" and want[0].backend.startswith("openvino")
    finally:
        _stop(srv)


# --- without a server -------------------------------------------------------------------------


def test_triton_repo_backends(served_art, tmp_path):
    """The default layout's Python model takes OpenVINO and auto (its Classifier's options); an ensemble, whose
    head runs on Triton's own backends, refuses them before writing anything."""
    for backend in ("openvino", "openvino:GPU", "auto"):
        res = runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(tmp_path / "r"),
                                  "--backend", backend])
        assert res.exit_code == 0, res.output
        settings = json.loads((tmp_path / "r" / "coder" / "1" / "coder_model.json").read_text())
        assert settings["options"]["backend"] == settings["backend"] == backend
    for ensemble in ("python", "onnxruntime"):
        res = runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(tmp_path / ensemble),
                                  "--backend", "openvino", "--ensemble", ensemble])
        assert res.exit_code == 2 and "--ensemble" in res.output and "cpu, cuda, tensorrt" in res.output, res.output
        assert not (tmp_path / ensemble).exists()
    res = runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(tmp_path / "x"), "--backend", "ov"])
    assert res.exit_code == 2 and "openvino:NPU" in res.output


def test_serve_checks_the_backend_before_starting(served_art, monkeypatch):
    """`coder serve --backend openvino*` probes OpenVINO as `coder doctor` does: a device it lacks is exit 6 and an
    ensemble is exit 2, before any server starts (the server binary is never looked up)."""
    from coder.deploy import triton_server
    from coder.engines import openvino as ov

    monkeypatch.setattr(triton_server, "find_tritonserver", lambda: pytest.fail("a server was started"))
    monkeypatch.setattr(ov, "installed", lambda: True)  # the probe is stubbed: OpenVINO need not be installed
    monkeypatch.setattr(ov, "probe_openvino", lambda: {"openvino": "ok", "openvino:GPU": "no GPU device",
                                                       "openvino:NPU": "no NPU device"})
    res = runner.invoke(app, ["serve", "-a", str(served_art), "--backend", "openvino:NPU", "--http-port", "1"])
    assert res.exit_code == 6 and "OpenVINO cannot use it here (no NPU device)" in res.output, res.output
    res = runner.invoke(app, ["serve", "-a", str(served_art), "--backend", "openvino", "--ensemble", "python"])
    assert res.exit_code == 2 and "drop --ensemble" in res.output, res.output
    monkeypatch.setattr(ov, "installed", lambda: False)
    res = runner.invoke(app, ["serve", "-a", str(served_art), "--backend", "openvino:GPU"])
    assert res.exit_code == 6 and "pip install 'coder[openvino]'" in res.output, res.output


def test_triton_repo_layout(served_art, tmp_path):
    from coder.deploy.triton_repo import REPO_FORMAT_VERSION, read_repo_manifest

    out = tmp_path / "repo"
    res = runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(out), "--max-batch", "16",
                              "--instances", "2", "--top-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    cfg = (out / "coder" / "config.pbtxt").read_text()
    for line in ('name: "coder"', 'backend: "python"', "max_batch_size: 16", "dynamic_batching",
                 '{ name: "image" data_type: TYPE_STRING dims: [ 1 ] }',
                 '{ name: "top_k" data_type: TYPE_INT32 dims: [ 3 ] }',
                 '{ name: "stage1_scores" data_type: TYPE_FP32 dims: [ 3 ] }', '{ name: "reranked" data_type: TYPE_BOOL',
                 "count: 2"):
        assert line in cfg, line
    m = read_repo_manifest(out)
    assert m["format"] == "coder.triton-repo" and m["format_version"] == REPO_FORMAT_VERSION and m["models"] == ["coder"]
    settings = json.loads((out / "coder" / "1" / "coder_model.json").read_text())
    assert settings["sys_path"][0] == str(ROOT) and settings["role"] == "classify"
    # Rewriting our own repository is allowed; a foreign non-empty directory is refused (exit 2).
    assert runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(out)]).exit_code == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    res = runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(tmp_path / "other")])
    assert res.exit_code == 2 and (tmp_path / "other" / "keep.txt").exists()


def test_an_int8_ensemble_for_a_gpu_is_built_from_the_tensorrt_file(served_art, tmp_path):
    """The CPU int8 file's MatMulIntegerToFloat kernels run only on ONNX Runtime's CPU provider: a GPU ensemble's
    fused graph comes from the plain QDQ (TensorRT) file, a CPU one from the CPU file."""
    import onnx

    ops = {}
    for backend in ("cuda", "cpu"):
        out = tmp_path / backend
        res = runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(out), "--ensemble", "onnxruntime",
                                  "--backend", backend, "--precision", "int8"])
        assert res.exit_code == 0, res.output
        ops[backend] = {n.op_type for n in onnx.load(str(out / "coder_head" / "1" / "model.onnx")).graph.node}
    assert "MatMulIntegerToFloat" not in ops["cuda"] and "DequantizeLinear" in ops["cuda"]
    assert "MatMulIntegerToFloat" in ops["cpu"]


def test_native_ensemble_repositories(served_art, tmp_path):
    """The layouts for Triton's ONNX Runtime / TensorRT backends (not runnable on the bundled server)."""
    import onnx

    out = tmp_path / "ort"
    res = runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(out), "--ensemble", "onnxruntime",
                              "--backend", "tensorrt", "--precision", "fp16"])
    assert res.exit_code == 0, res.output
    head = (out / "coder_head" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in head and "KIND_GPU" in head and '"precision_mode" value: "FP16"' in head
    graph = onnx.load(str(out / "coder_head" / "1" / "model.onnx"))
    assert [o.name for o in graph.graph.output] == ["embedding", "stage1", "topk_ids", "gap", "rerank"]
    ens = (out / "coder" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ens and ens.count("model_name:") == 3
    assert json.loads((out / "coder-repo.json").read_text())["models"] == ["coder", "coder_preprocess",
                                                                            "coder_head", "coder_gate"]
    # TensorRT needs the plan `coder build-engine` writes on the serving GPU: exit 3 naming the fix.
    res = runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(tmp_path / "trt"),
                              "--ensemble", "tensorrt"])
    assert res.exit_code == 3 and "coder build-engine" in res.output
    assert not (tmp_path / "trt").exists() and not list(tmp_path.glob(".tmp-*"))  # nothing half-written
    # With the engine there (its name carries TensorRT version and GPU), it becomes coder_head's model.plan.
    from coder.engines.trt import engine_stem
    from coder.manifest import load_artifact
    from coder.runtime.classifier import find_bank
    from coder.text_bank.bank import load_bank

    art = load_artifact(served_art)
    bank = load_bank(find_bank(art.root, None), art)
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / f"{engine_stem(art, 'fp32', bank, bank.k)}.trt10.3.0.sm87.engine").write_bytes(b"plan")
    res = runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(tmp_path / "trt"),
                              "--ensemble", "tensorrt", "--engine-dir", str(engines)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "trt" / "coder_head" / "1" / "model.plan").read_bytes() == b"plan"
    assert 'platform: "tensorrt_plan"' in (tmp_path / "trt" / "coder_head" / "config.pbtxt").read_text()
    assert runner.invoke(app, ["triton-repo", "-a", str(served_art), "--out", str(tmp_path / "x"),
                               "--ensemble", "tvm"]).exit_code == 2


def test_missing_bank_or_artifact_fails_before_starting(tiny_artifact, tmp_path):
    import psutil

    empty = tmp_path / "art"
    shutil.copytree(tiny_artifact, empty, ignore=shutil.ignore_patterns("banks"))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    art = str(tiny_artifact)
    cases = [(["-a", str(empty)], 3), (["-a", str(tmp_path / "nope")], 3), (["-a", art, "--bank", "nope"], 3),
             (["-a", art, "--backend", "gpu"], 2), (["-a", art, "--max-batch", "0"], 2)]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        cases.append((["-a", art, "--backend", "cuda"], 6))  # this ORT cannot run CUDA at all
    for args, code in cases:
        res = subprocess.run([sys.executable, "-m", "coder", "serve", *args, "--http-port", "1"],
                             capture_output=True, text=True, env=_env(), timeout=60)
        assert res.returncode == code and "error:" in res.stderr and "ready" not in res.stdout, (args, res.stderr)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_port_in_use_is_refused_before_starting(served_art):
    """Another process on a port: exit 11, one line naming that port, before any server starts (an HTTP port held
    by another server once gave `ready:` from ITS answers while ours died on the bind)."""
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    for kind in ("http", "grpc"):
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            port = held.getsockname()[1]
            free = iter(_free_ports(2))
            ports = {k: str(port) if k == kind else str(next(free)) for k in ("http", "grpc", "metrics")}
            res = subprocess.run([sys.executable, "-m", "coder", "serve", "-a", str(served_art),
                                  *[a for k, v in ports.items() for a in (f"--{k}-port", v)], "--ready-timeout", "60"],
                                 capture_output=True, text=True, env=_env(), timeout=120)
        assert res.returncode == 11 and "ready" not in res.stdout, res.stderr[-2000:]
        [line] = res.stderr.strip().splitlines()
        assert line.startswith(f"error: {'HTTP' if kind == 'http' else 'gRPC'} port {port} on 127.0.0.1: in use by "
                               f"another process"), line
        assert f"--{kind}-port" in line
    res = runner.invoke(app, ["serve", "-a", str(served_art), "--http-port", "9000", "--grpc-port", "9000"])
    assert res.exit_code == 2 and "three different ports" in res.output
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_a_foreign_server_answering_is_not_taken_for_ours(tmp_path):
    """The readiness probe is answered, but not by the process we started: ServeError (exit 11), never `ready:`."""
    import http.server

    from coder.deploy.triton_server import Ports, ServerBinary, TritonServer, listening_ports
    from coder.errors import ServeError

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    foreign = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    port = foreign.server_address[1]
    try:
        assert port in listening_ports(os.getpid())  # the check itself: this process listens there
        srv = TritonServer(ServerBinary(Path("/bin/sleep"), bundled=False), tmp_path, Ports(port, 1, 2),
                           workdir=tmp_path)
        assert srv.ready()  # the probe alone is fooled ...
        srv.proc = subprocess.Popen(["sleep", "60"], start_new_session=True)  # "our server": holds no port
        with pytest.raises(ServeError, match=f"^HTTP port {port} answers, but not from the tritonserver started here"):
            srv.wait_ready(10)  # ... the confirmation is not
        assert srv.proc.poll() is not None  # and what we started is stopped
        assert port not in (listening_ports(srv.proc.pid) or set())
    finally:
        foreign.shutdown()
        foreign.server_close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_without_a_server_is_one_error_line_per_image(tmp_path, protocol):
    """No server at the URL: each image gets one JSON error record and the exit code is 1, over HTTP as over gRPC
    (HTTP once ended in a traceback)."""
    pytest.importorskip("tritonclient.http")
    pytest.importorskip("tritonclient.grpc")
    img = tmp_path / "x.png"
    img.write_bytes(b"whatever")
    with socket.socket() as closed:  # bound, not listening: connections are refused, deterministically
        closed.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{closed.getsockname()[1]}"
        res = subprocess.run([sys.executable, "-m", "coder.client", str(img), str(img), "--url", url, "--protocol",
                              protocol, "--timeout", "10"], capture_output=True, text=True, env=_env(), timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(img)] * 2 and all("refused" in r["error"].lower() for r in rows), rows
    res = subprocess.run([sys.executable, "-m", "coder.client", str(img), "--url", "127.0.0.1:notaport"],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].endswith("host:port, e.g. 127.0.0.1:8000")


class _FakePb:
    """Just enough of triton_python_backend_utils to run the batching logic in-process."""

    class Tensor:
        def __init__(self, name, arr):
            self.name, self.arr = name, arr

    class TritonError(str):
        INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

        def __new__(cls, msg, code="INTERNAL"):
            self = super().__new__(cls, msg)
            self.code = code
            return self

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.outputs = {t.name: t.arr for t in output_tensors}
            self.error = error

    @staticmethod
    def get_input_tensor_by_name(req, name):
        return SimpleNamespace(as_numpy=lambda: req[name]) if name in req else None


def test_bad_request_in_a_batch_answers_only_itself(served_art, images):
    from coder.deploy.triton_model import ClassifyModel, make_model
    from coder.deploy.triton_repo import RepoOptions, write_repo

    info = write_repo(served_art, None, images[0].parent.parent / "unit-repo", RepoOptions(top_k=4))
    model = make_model(info.settings)()
    assert isinstance(model, ClassifyModel)
    model.pb = _FakePb
    model.setup()
    calls = []
    classify = model.clf.classify
    model.clf = SimpleNamespace(classify=lambda ims, k: calls.append(len(ims)) or classify(ims, k))
    reqs = [{"image": np.array([[images[0].read_bytes()]], object)}, {"image": np.array([[b"\x89PNG junk"]], object)},
            {"image": np.array([[b""]], object)}, {},
            {"image": np.array([[images[1].read_bytes()], [images[2].read_bytes()]], object)}]
    out = model.execute(reqs)
    assert calls == [3]  # one engine call for the whole batch
    assert [r.error is not None for r in out] == [False, True, True, True, False]
    assert "empty file (0 bytes)" in out[2].error
    assert [r.error.code for r in out[1:4]] == ["INVALID_ARG"] * 3  # HTTP 400: a client's bad input, not retried
    model.clf = SimpleNamespace(classify=lambda ims, k: 1 / 0)  # the engine itself fails: INTERNAL (HTTP 500)
    [failed] = model.execute(reqs[:1])
    assert failed.error.code == "INTERNAL" and failed.error.startswith("ZeroDivisionError")
    assert out[4].outputs["top_k"].shape == (2, 4) and out[4].outputs["name"].dtype == object
    assert out[0].outputs["label"].dtype == np.int32 and out[0].outputs["reranked"].dtype == np.bool_


def test_request_decoder_applies_the_runtime_image_limits():
    """A request image gets the same guards as files: a 1x4000 strip is refused before it is resized."""
    import io

    from PIL import Image

    from coder.deploy.triton_model import decode_image
    from coder.errors import InputError

    buf = io.BytesIO()
    Image.new("RGB", (4000, 1)).save(buf, "PNG")
    with pytest.raises(InputError, match="aspect"):
        decode_image(buf.getvalue())
    with pytest.raises(InputError, match="empty"):
        decode_image(b"")


class _Req(dict):
    """A request of the fake backend with KServe v2 request parameters."""

    def __init__(self, tensors, params=None):
        super().__init__(tensors)
        self.params = params or {}

    def parameters(self):
        return json.dumps(self.params)


class _FakePbCodes(_FakePb):
    class TritonError(str):
        INVALID_ARG = 3

        def __new__(cls, msg, code=None):
            obj = str.__new__(cls, msg)
            obj.code = code
            return obj


class _FakeMetricFamily:
    """The Python backend's custom metrics API (``pb_utils.MetricFamily``), recording values per label set."""

    GAUGE, COUNTER = "GAUGE", "COUNTER"
    values: dict = {}

    def __init__(self, name, description, kind):
        self.name, self.kind = name, kind

    def Metric(self, labels=None):  # noqa: N802 - the backend's spelling
        fam, key = self, (self.name, tuple(sorted((labels or {}).items())))

        class _Metric:
            def set(self, v):
                assert fam.kind == "GAUGE"
                _FakeMetricFamily.values[key] = v

            def increment(self, v):
                assert fam.kind == "COUNTER" and v > 0
                _FakeMetricFamily.values[key] = _FakeMetricFamily.values.get(key, 0) + v

        return _Metric()


def test_per_request_classes_lru_and_http_400(served_art, images, tmp_path):
    from coder.deploy.triton_model import make_model
    from coder.deploy.triton_repo import RepoOptions, write_repo
    from coder.runtime.classifier import Classifier

    art = tmp_path / "art"
    shutil.copytree(served_art, art)
    info = write_repo(art, None, tmp_path / "repo", RepoOptions(top_k=2))
    model = make_model(info.settings)()
    model.pb = type("Pb", (_FakePbCodes,), {"MetricFamily": _FakeMetricFamily})
    model.args = {"model_name": "coder", "model_version": "1", "model_instance_name": "coder_0_0"}
    _FakeMetricFamily.values = {}
    model.setup()
    labels = (("instance", "coder_0_0"), ("model", "coder"), ("version", "1"))
    metric = lambda name: _FakeMetricFamily.values.get((name, labels))  # noqa: E731
    assert metric("coder_bank_cache_entries") == 0 and metric("coder_bank_cache_limit_bytes") == 256 * 2**20
    assert _FakeMetricFamily.values[("coder_backend_info", tuple(sorted((*labels, ("backend", "cpu")))))] == 1
    img = lambda i: {"image": np.array([[images[i].read_bytes()]], object)}  # noqa: E731
    reqs = [_Req(img(0), {"classes": "cat,dog,zebra"}), _Req(img(1)), _Req(img(2), {"classes": "cat, dog ,zebra"}),
            _Req(img(3), {"classes": "cat,Cat"}), _Req(img(4), {"classes": "cat"}), _Req(img(5), {"classes": 7})]
    out = model.execute(reqs)
    assert [r.error is None for r in out] == [True, True, True, False, False, False]
    assert all(r.error.code == 3 for r in out[3:])  # INVALID_ARG: HTTP 400
    assert "twice" in out[3].error and "top_k=2" in out[4].error
    want = Classifier.load(art, backend="cpu", classes=["cat", "dog", "zebra"]).classify(
        [__import__("PIL.Image", fromlist=["Image"]).open(images[0])], 2)[0]
    assert out[0].outputs["top_k"][0].tolist() == list(want.top_k)
    assert out[1].outputs["top_k"].max() < 10  # the served cifar10 bank
    assert model.lists.stats()["class_lists"] == 1 and model.lists.stats()["misses"] == 1  # one build, then a hit
    assert model.lists.stats()["hits"] == 1 and model.lists.stats()["bank_cache_mb"] > 0
    # the same numbers on the metrics port (custom metrics), what `coder serve` prints as stats
    assert metric("coder_bank_cache_entries") == 1 and metric("coder_bank_cache_misses_total") == 1
    banks = sum(a.nbytes for a in model.lists.get(("cat", "dog", "zebra")).bank.arrays.values())
    assert metric("coder_bank_cache_hits_total") == 1 and metric("coder_bank_cache_bytes") == banks > 0
    model.lists.limit = 1  # bytes: only the newest list stays
    model.execute([_Req(img(0), {"classes": "lion,tiger"})])
    assert model.lists.stats()["class_lists"] == 1 and list(model.lists._items)[0] == ("lion", "tiger")
    assert metric("coder_bank_cache_entries") == 1 and metric("coder_bank_cache_misses_total") == 2
    assert metric("coder_bank_cache_hits_total") == 2  # (the get above was a hit)
    # `coder bank add` on the served bank is picked up between batches.
    from typer.testing import CliRunner

    from coder.cli import app

    res = CliRunner().invoke(app, ["bank", "add", "-a", str(art), "--bank", "cifar10", "zebra"])
    assert res.exit_code == 0, res.output
    model.execute([_Req(img(1))])
    assert model.clf.class_names[-1] == "zebra" and len(model.clf.class_names) == 11
    # the class-list cache survives the swap of the served bank: the next request with a cached list is a hit
    [again] = model.execute([_Req(img(0), {"classes": "lion,tiger"})])
    assert again.error is None and metric("coder_bank_cache_hits_total") == 3


def test_ensemble_refuses_per_request_classes(served_art, images, tmp_path):
    from coder.deploy.triton_ensemble import PreprocessModel
    from coder.deploy.triton_model import make_model
    from coder.deploy.triton_repo import RepoOptions, write_repo

    info = write_repo(served_art, None, tmp_path / "ens", RepoOptions(ensemble="python"))
    settings = {**info.settings, "role": "preprocess"}
    model = make_model(settings)()
    assert isinstance(model, PreprocessModel)
    model.pb = _FakePbCodes
    model.setup()
    img = {"image": np.array([[images[0].read_bytes()]], object)}
    ok, refused = model.execute([_Req(img), _Req(img, {"classes": "cat,dog"})])
    assert ok.error is None and refused.error.code == 3 and "default layout" in refused.error
