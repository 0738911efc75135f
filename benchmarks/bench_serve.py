"""What does serving through Triton cost? ``coder serve`` vs in-process ``Classifier.classify``.

    python benchmarks/bench_serve.py --artifacts coder-artifacts/ViT-B-32__none [--max-batch 16] [--json]

The same encoded JPEG scenes go (a) through the in-process Classifier in batches of
``--max-batch`` (decode + preprocess + fused encoder/head + gate, the work the server does),
and (b) to a real tritonserver (the repository of ``coder triton-repo``, one instance by default,
``max_batch_size`` = ``--max-batch``; ``--instances 2``: two, each with half the cores, so one
decodes while the other runs the encoder) from 1, 4 and 16 concurrent HTTP clients, one image per
request, so dynamic batching must form the batches. Reported per row: requests (images) per
second, p50/p99 latency (per request for the server, per batch call in-process), and the
server's mean formed batch size. Goal: at 16 clients >= 0.8x the in-process throughput at the
same batch size. ``--classes "cat,dog,zebra"``: each client count also runs with every request carrying
that class list (KServe v2 request parameter ``classes``; its bank is built once, then cached), reported
as the time of a plain request it costs (goal <= 1.2x once cached). Clients and server share this machine's cores: on a small CPU the clients'
own work counts against the server.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import script  # also puts the repository on sys.path

from coder.client import CoderClient  # noqa: E402
from coder.deploy.triton_model import decode_image  # noqa: E402
from coder.deploy.triton_repo import RepoOptions, write_repo  # noqa: E402
from coder.deploy.triton_server import Ports, TritonServer, find_tritonserver  # noqa: E402
from coder.runtime.classifier import Classifier  # noqa: E402
from coder.samples import synthetic_scene  # noqa: E402


def _jpegs(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        synthetic_scene(1000 + i, (320, 240)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _row(name: str, clients: int, n: int, wall: float, lat_ms: list[float], batch: float | None) -> dict:
    return {"mode": name, "clients": clients, "requests": n, "requests_per_s": n / wall,
            "p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "mean_batch": batch}


def in_process(clf: Classifier, data: list[bytes], batch: int, rounds: int) -> dict:
    clf.classify([decode_image(d) for d in data[:batch]])  # warm-up
    lat, t0 = [], time.perf_counter()
    for _ in range(rounds):
        for i in range(0, len(data), batch):
            t = time.perf_counter()
            clf.classify([decode_image(d) for d in data[i:i + batch]])
            lat.append((time.perf_counter() - t) * 1e3)
    return _row(f"in-process batch {batch}", 0, rounds * len(data), time.perf_counter() - t0, lat, float(batch))


def _batch_stats(port: int) -> tuple[int, int]:
    """(inferences, executions) of model coder so far: their ratio is the mean batch size."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/coder/stats", timeout=5) as r:
        s = json.loads(r.read())["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def served(port: int, data: list[bytes], clients: int, rounds: int, classes: str = "") -> dict:
    """``classes``: every request carries that class list (the warm-up request builds and caches its bank)."""
    local = threading.local()
    jobs = [d for _ in range(rounds) for d in data]

    def send(d: bytes) -> float:
        if not hasattr(local, "c"):
            local.c = CoderClient(f"127.0.0.1:{port}", "http", timeout=60)
        t = time.perf_counter()
        r = local.c.classify_bytes([d], classes=classes or None)[0]
        if r["error"]:
            raise RuntimeError(r["error"])
        return (time.perf_counter() - t) * 1e3

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, data[:clients]))  # connect and warm up
        inf0, exe0 = _batch_stats(port)
        t0 = time.perf_counter()
        lat = list(pool.map(send, jobs))
        wall = time.perf_counter() - t0
    inf1, exe1 = _batch_stats(port)
    return _row("triton http" + (" +classes" if classes else ""), clients, len(jobs), wall, lat,
                (inf1 - inf0) / max(exe1 - exe0, 1))


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run(artifacts: str, bank: str, images: int, max_batch: int, rounds: int, concurrency: str, backend: str,
        instances: int, classes: str) -> dict:
    """Every row measured ``rounds`` times, interleaved (in-process, then each client count, again ...):
    others' load on a shared machine drifts, so each row keeps its fastest round."""
    data = _jpegs(images)
    levels = [int(c) for c in concurrency.split(",")]
    clf = Classifier.load(artifacts, bank or None, backend)
    best: dict[tuple, dict] = {}

    def keep(row: dict) -> None:
        key = (row["mode"], row["clients"])
        if key not in best or row["requests_per_s"] > best[key]["requests_per_s"]:
            best[key] = row

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        repo = write_repo(artifacts, bank or None, Path(tmp) / "repo",
                          RepoOptions(max_batch=max_batch, backend=backend, instances=instances))
        port, grpc, metrics = _free_ports(3)
        with TritonServer(find_tritonserver(), repo.root, Ports(port, grpc, metrics), "127.0.0.1", tmp) as srv:
            srv.wait_ready(180)
            for _ in range(rounds):
                keep(in_process(clf, data, 1, 1))
                keep(in_process(clf, data, max_batch, 1))
                for c in levels:
                    keep(served(port, data, c, 1))
                    if classes:
                        keep(served(port, data, c, 1, classes))
    rows = list(best.values())
    base = best[(f"in-process batch {max_batch}", 0)]["requests_per_s"]
    for r in rows:
        r["vs_in_process"] = r["requests_per_s"] / base
    for r in rows:
        if r["mode"].endswith("+classes"):  # a request with its own (cached) class list vs a plain one
            r["vs_plain_request"] = best[("triton http", r["clients"])]["requests_per_s"] / r["requests_per_s"]
    return {"artifacts": str(artifacts), "backend": backend, "max_batch": max_batch, "instances": instances,
            "rounds": rounds, "classes": classes, "rows": rows}


def render(result: dict) -> None:
    print(f"{result['artifacts']} ({result['backend']}), Triton max_batch_size {result['max_batch']}, "
          f"{result['instances']} instance(s), "
          f"best of {result['rounds']} interleaved rounds")
    print(f"{'mode':24} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6} {'x in-proc':>9}")
    for r in result["rows"]:
        cost = f"  {r['vs_plain_request']:.2f}x the time of a plain request" if "vs_plain_request" in r else ""
        print(f"{r['mode']:24} {r['clients']:7d} {r['requests_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{r['mean_batch']:6.1f} {r['vs_in_process']:9.2f}{cost}")


if __name__ == "__main__":
    script(__doc__, run, render, bank="", images=64, max_batch=16, rounds=3, concurrency="1,4,16", backend="cpu",
           instances=1, classes="")
