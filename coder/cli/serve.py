"""``coder triton-repo`` and ``coder serve``: CODER behind NVIDIA Triton Inference Server (KServe v2)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import info, print_json
from ..errors import ServeError

app = typer.Typer()

ARTIFACTS = typer.Option(..., "--artifacts", "-a", help="Artifact directory from `coder export`.")
BANK = typer.Option(None, "--bank", help="Bank name under <artifacts>/banks, or a bank directory "
                                         "(default: the only one).")
MAX_BATCH = typer.Option(32, "--max-batch", help="Triton max_batch_size: the largest batch dynamic batching forms.")
INSTANCES = typer.Option(1, "--instances", help="Model instances (one Classifier each).")
BACKEND = typer.Option("cpu", "--backend", help="What runs the encoder inside the model: cpu | cuda | tensorrt "
                       "(ONNX Runtime) | openvino | openvino:GPU | openvino:NPU | auto (the default layout only; "
                       "--ensemble: cpu | cuda | tensorrt).")
PRECISION = typer.Option("fp32", "--precision", help="Image encoder precision: fp32 | fp16 | int8 (as exported).")
TOP_K = typer.Option(5, "--top-k", help="Classes returned per image (top_k, stage1_scores).")
THREADS = typer.Option(None, "--threads", help="ONNX Runtime threads per instance (default: cores / instances).")
QUEUE_DELAY = typer.Option(0, "--max-queue-delay-us", help="How long Triton may hold a request to grow a batch "
                                                            "(microseconds; 0: batch what queued while busy).")
BANK_CACHE = typer.Option(256.0, "--bank-cache-mb", help="Memory for the banks of per-request `classes` lists "
                          "(least recently used dropped; entries, MB and hits in the `stats:` lines).")
ENSEMBLE = typer.Option(None, "--ensemble", help="Write the ensemble layout with the fused head on onnxruntime | "
                                                 "tensorrt (Triton's native backends) | python.")


def _options(max_batch, instances, backend, precision, top_k, threads, queue_delay, ensemble, engine_dir=None,
             bank_cache_mb=256.0):
    from ..deploy.triton_repo import RepoOptions

    return RepoOptions(max_batch=max_batch, instances=instances, backend=backend, precision=precision, top_k=top_k,
                       threads=threads, max_queue_delay_us=queue_delay, ensemble=ensemble,
                       bank_cache_mb=bank_cache_mb, engine_dir=str(engine_dir) if engine_dir else None)


@app.command("triton-repo")
def triton_repo(
    artifacts: Path = ARTIFACTS, bank: Optional[str] = BANK,
    out: Path = typer.Option(..., "--out", help="Repository directory to write (empty, or one written before)."),
    max_batch: int = MAX_BATCH, instances: int = INSTANCES, backend: str = BACKEND, precision: str = PRECISION,
    top_k: int = TOP_K, threads: Optional[int] = THREADS, queue_delay: int = QUEUE_DELAY,
    ensemble: Optional[str] = ENSEMBLE,
    engine_dir: Optional[Path] = typer.Option(None, help="--ensemble tensorrt: where `coder build-engine` wrote the "
                                                         "fused engine (default <artifacts>/engines)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write a Triton model repository serving model `coder` (image bytes in, CODER label out)."""
    from ..deploy.triton_repo import write_repo

    repo = write_repo(artifacts, bank, out, _options(max_batch, instances, backend, precision, top_k, threads,
                                                     queue_delay, ensemble, engine_dir))
    if as_json:
        print_json({"repo": str(repo.root), "models": list(repo.models), "top_k": repo.top_k, "k": repo.k,
                    "n_classes": repo.n_classes})
        return
    info(f"wrote {repo.root}: models {', '.join(repo.models)} ({repo.n_classes} classes, top_k {repo.top_k}); "
         f"serve it with `coder serve --repo {repo.root}` or tritonserver --model-repository {repo.root}")


@app.command()
def serve(
    artifacts: Path = ARTIFACTS, bank: Optional[str] = BANK,
    http_port: int = typer.Option(8000, "--http-port", min=1, max=65535),
    grpc_port: int = typer.Option(8001, "--grpc-port", min=1, max=65535),
    metrics_port: int = typer.Option(8002, "--metrics-port", min=1, max=65535),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: every interface)."),
    repo: Optional[Path] = typer.Option(None, "--repo", help="Write the repository here (default: a temporary "
                                                             "directory, removed on exit)."),
    max_batch: int = MAX_BATCH, instances: int = INSTANCES, backend: str = BACKEND, precision: str = PRECISION,
    top_k: int = TOP_K, threads: Optional[int] = THREADS, queue_delay: int = QUEUE_DELAY,
    ensemble: Optional[str] = typer.Option(None, "--ensemble", help="python (the bundled server has no native "
                                                                    "backends) | onnxruntime | tensorrt."),
    ready_timeout: float = typer.Option(180.0, "--ready-timeout", help="Seconds to wait for /v2/health/ready."),
    bank_cache_mb: float = BANK_CACHE,
    stats_interval: float = typer.Option(60.0, "--stats-interval", min=0.0,
                                         help="Seconds between `stats:` lines (requests, batches, class-list bank "
                                              "cache), printed when they changed; 0: only the last one, on exit."),
) -> None:
    """Start a real tritonserver (HTTP + gRPC, KServe v2) serving CODER; Ctrl-C stops it."""
    import shutil
    import tempfile

    from ..deploy.triton_repo import check_options, write_repo
    from ..deploy.triton_server import Ports, TritonServer, check_ports, find_tritonserver

    # Everything that can be checked is checked before a server starts: options, backend, artifact + bank
    # (write_repo loads and verifies them first), free ports, then the server binary.
    opts = _options(max_batch, instances, backend, precision, top_k, threads, queue_delay, ensemble,
                    bank_cache_mb=bank_cache_mb)
    check_options(opts)
    _check_backend(backend, ensemble)
    ports = Ports(http_port, grpc_port, metrics_port)
    workdir = Path(tempfile.mkdtemp(prefix="coder-triton-"))
    try:
        written = write_repo(artifacts, bank, repo or workdir / "repo", opts)
        check_ports(host, ports)
        server = TritonServer(find_tritonserver(), written.root, ports, host, workdir)
        _run(server, ready_timeout, stats_interval)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check_backend(backend: str, ensemble: Optional[str]) -> None:
    """A backend that cannot load here cannot load in the server's stubs either (same machine, same Python):
    exit 6 before starting. ``auto`` loads whatever works (the CPU at least). (Native ensemble heads run on
    Triton's own backends, which only the server can check.)"""
    if backend in ("cpu", "auto") or ensemble in ("onnxruntime", "tensorrt"):
        return
    from ..engines import openvino as ov
    from ..errors import BackendError

    if ov.is_openvino(backend):
        if not ov.installed():
            raise BackendError(f"--backend {backend}: {ov.NO_OV}")
        why = ov.probe_openvino().get(backend, f"unknown backend {backend!r}")
        if not why.startswith("ok"):
            raise BackendError(f"--backend {backend}: OpenVINO cannot use it here ({why}); "
                               "`coder doctor` shows what loads")
        return
    from ..engines.ort import probe_providers

    why = probe_providers().get(backend, f"unknown backend {backend!r}")
    if why != "ok":
        raise BackendError(f"--backend {backend}: ONNX Runtime cannot use it here ({why}); "
                           "`coder doctor` shows what loads")


def _run(server, ready_timeout: float, stats_interval: float = 0.0) -> None:
    """Start, wait until ready (and confirmed ours), print the URLs, then wait, printing a ``stats:`` line every
    ``stats_interval`` seconds when the numbers changed; SIGINT/SIGTERM (the CLI's one signal policy raises
    Interrupted) print the last stats, stop the server and exit 0. A second signal during the shutdown is held
    until the server and its stubs are gone."""
    from ..store import critical

    interrupted, ready, shown = False, False, [None]
    try:
        server.start()
        server.wait_ready(ready_timeout)
        ready = True
        info(f"ready: model coder at {server.url('http')} (HTTP) and {server.url('grpc')} (gRPC), "
             f"metrics {server.url('metrics')}; server log {server.log_path}; Ctrl-C stops")
        _print_backends(server)
        while (code := server.wait(stats_interval or None)) is None:
            _print_stats(server, shown)
        raise ServeError(f"tritonserver exited by itself (code {code}); log tail:\n{server.log_tail()}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        with critical():
            if interrupted:
                if ready:
                    _print_stats(server, shown, final=True)
                info("stopping tritonserver ...")
            server.stop()
    info("stopped")


def _print_backends(server) -> None:
    """``backend: openvino-f32 (1 instance)``: what the model's instances really run (no line for an ensemble)."""
    from ..deploy.serve_stats import backends_line, read_backends

    line = backends_line(read_backends(server.url("metrics", local=True)))
    if line is not None:
        info(line)


def _print_stats(server, shown: list, final: bool = False) -> None:
    """A ``stats:`` line from the server's metrics (:mod:`coder.deploy.serve_stats`) if they changed since the
    last one shown (``shown[0]``), or always when ``final``; nothing when the metrics cannot be read."""
    from ..deploy.serve_stats import read_stats, stats_line

    stats = read_stats(server.url("metrics", local=True))
    if stats is None or (stats == shown[0] and not final):
        return
    shown[0] = stats
    info(stats_line(stats))
