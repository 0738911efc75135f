"""``coder classify --ray``: batch labeling on Ray Data, one machine to a cluster.

Pipeline (streaming; every stage runs where Ray places it, the driver only lists inputs
and appends result parts)::

    from_items(file, size, mtime)                       driver: the listing, no bytes
      -> map_batches(read_stage)        CPU tasks       paths -> bytes (local, s3://, gs://, ...)
      -> map_batches(decode_stage)      CPU tasks       bytes -> (H,W,3) uint8 crops, or an error
      -> map_batches(ClassifierActor,   actor pool      one Classifier per actor, ORT threads =
           compute=ActorPoolStrategy)                   the actor's CPUs; num_gpus for GPU backends
      -> iter_batches -> ParquetOutput  driver          whole parts, atomically (resumable)

That is the pipeline of GPU actors (the CPUs decode while the GPUs classify). CPU actors read and
decode their own batches instead (``decode_in_actor``): the CPUs they hold do all the work, with no
decode tasks competing with them for the same cores, no extra worker processes to start and no
crops copied through the object store; on one 2-core machine that is what lets ``--ray`` keep up
with the single process (``benchmarks/bench_ray.py``).

Between stages only Arrow binary/numbers travel (no PIL objects: Ray's memory estimates
cannot see them). A bad image is an error row, never a failed task. Local inputs reach the
workers as absolute paths (:func:`~coder.deploy.sources.file_key`); on a cluster, a file the
driver listed that a worker cannot find gets no error row (that would block a resume): it is
counted in :attr:`RayStats.unseen` (the CLI reports one line, exit 1) and left for a re-run.
Uses the actor-pool API of Ray >= 2.51 (``compute=ray.data.ActorPoolStrategy``; ``concurrency=``
is deprecated).

>>> opts = RayOptions(actors=(1, 2), cpus_per_actor=1)                          # doctest: +SKIP
>>> stats = run_ray(job, sources, opts, on_table=output.add)
>>> stats.actors, stats.backends
(2, {'cpu'})
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import BackendError, ConfigError, one_line
from ..store import reinstall
from ..runtime.records import error_record
from .batch import ClassifyJob, classify_crops, decode_or_error, read_or_error
from .parquet_out import SCHEMA, row, to_table
from .sources import Source, is_uri

GPU_BACKENDS = ("cuda", "tensorrt", "tensorrt-native")
DECODE_CPUS = 0.25  # logical CPUs per read/decode task (see RayOptions.decode_cpus)


@dataclass(frozen=True)
class RayOptions:
    """``address``: None starts a local Ray on this machine's CPUs; else join that cluster.
    ``actors``: (min, max) of the classifier pool (equal: a fixed pool). ``decode_in_actor``: None
    decodes in the actors for CPU backends and in separate tasks for GPU backends (:meth:`in_actor`).
    ``decode_cpus``: the logical CPUs one read/decode task asks for; below 1 so decode tasks still run
    beside a pool that holds every CPU (decoding a 640x480 JPEG took 12 ms, a one-thread ViT-B/32 160 ms)."""

    address: Optional[str] = None
    actors: tuple[int, Optional[int]] = (1, None)
    cpus_per_actor: int = 1
    gpus_per_actor: Optional[float] = None  # None: 1 for GPU backends, else 0
    batch_size: int = 16
    decode_cpus: float = DECODE_CPUS
    decode_in_actor: Optional[bool] = None

    def num_gpus(self, backend: str) -> float:
        return self.gpus_per_actor if self.gpus_per_actor is not None else (1.0 if backend in GPU_BACKENDS else 0.0)

    def in_actor(self, backend: str) -> bool:
        """Whether the actors read and decode their own inputs: by default, when they use no GPU."""
        return self.decode_in_actor if self.decode_in_actor is not None else self.num_gpus(backend) == 0

    def task_cpus(self, backend: str) -> float:
        """The logical CPUs to keep free of actors for read/decode tasks (none when actors decode)."""
        return 0.0 if self.in_actor(backend) else self.decode_cpus


def parse_actors(text: Optional[str]) -> tuple[int, Optional[int]]:
    """``"2"`` -> (2, 2); ``"1,4"`` -> (1, 4); None -> (1, None): as many as the cluster fits."""
    if text is None:
        return 1, None
    try:
        parts = [int(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or not 1 <= parts[0] <= parts[-1]:
        raise ConfigError(f"--actors {text!r}: N or MIN,MAX with 1 <= MIN <= MAX")
    return parts[0], parts[-1]


@dataclass
class RayStats:
    actors: int = 0
    backends: set = field(default_factory=set)
    cluster_cpus: float = 0.0
    started_local: bool = False
    startup_s: float = 0.0
    pool: tuple = (0, 0)  # (min, max) actors after fitting the cluster
    unseen: list = field(default_factory=list)  # local inputs listed here that the workers could not find


def unseen_message(unseen: list[str]) -> str:
    """The one line for inputs the driver listed but the cluster's workers cannot see."""
    return (f"{len(unseen)} input(s) listed on this machine cannot be read on the Ray workers (first: {unseen[0]}): "
            f"put them on storage every node mounts at the same path, or pass URIs (s3://...); no row was "
            f"written for them, a re-run labels them")


def prepare_env(address: Optional[str]) -> None:
    """Environment Ray reads when it is IMPORTED: call before the first ``import ray``. A local
    Ray gets a loopback node IP (with it every Ray server listens on 127.0.0.1 only; Ray's
    switch for that is named after Windows/macOS, where it is the default); no usage stats."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a ``HOST:PORT`` / ``ray://HOST:PORT``
    address (Ray itself keeps retrying). ``auto`` is left to Ray."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise BackendError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): is `ray start --head` "
                           f"running there, and is the port open?") from None


def connect(address: Optional[str], spare_cpus: int = 1) -> tuple[bool, float]:
    """Join ``address``, reuse an already-initialised Ray, or start a local one (loopback, no
    dashboard, this machine's CPUs + ``spare_cpus`` logical ones for light read/decode tasks beside
    a full pool). Returns (started here, the cluster's CPUs)."""
    prepare_env(address)
    if address is not None:
        _check_reachable(address)
    import ray

    started = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                      configure_logging=True)
        try:
            if address is None:  # always a new local instance (a stale `ray start` file must not be joined)
                ray.init(address="local", num_cpus=(os.cpu_count() or 1) + spare_cpus, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise BackendError(f"cannot start or join {where}: {one_line(e)}") from None
        finally:
            reinstall()  # ray.init replaces the SIGTERM handler: the one signal policy comes back
        started = True
    return started, float(ray.cluster_resources().get("CPU", 0.0))


def fit_pool(opts: RayOptions, cluster_cpus: float, cluster_gpus: float, backend: str) -> RayOptions:
    """Cap the pool so actors never hold the CPUs the read/decode tasks need (Ray would wait
    forever) nor more GPUs than exist; a minimum that cannot fit is a :class:`ConfigError`."""
    lo, hi = opts.actors
    fits = int((cluster_cpus - opts.task_cpus(backend)) // opts.cpus_per_actor)
    gpus = opts.num_gpus(backend)
    if gpus > 0:
        fits = min(fits, int(cluster_gpus // gpus))
    if lo > fits:
        raise ConfigError(f"--actors {lo} do not fit a Ray cluster of {cluster_cpus:g} CPUs, {cluster_gpus:g} GPUs "
                          f"(each actor {opts.cpus_per_actor} CPU + {gpus:g} GPU, reading/decoding "
                          f"{opts.task_cpus(backend):g} CPU): at most {max(fits, 0)}")
    return replace(opts, actors=(lo, fits if hi is None else min(hi, fits)))


def read_stage(batch: pa.Table, cluster: bool = False) -> pa.Table:
    """``file`` column -> adds ``data`` (bytes; empty on failure), ``error`` (null or why) and
    ``_unseen``: on a ``cluster``, a local file the driver listed (size >= 0) that is not here."""
    data, errors, unseen = [], [], []
    for f, size in zip(batch.column("file").to_pylist(), batch.column("file_size").to_pylist()):
        got, why = read_or_error(f)
        data.append(got or b"")
        errors.append(why)
        unseen.append(bool(cluster and why is not None and size >= 0 and not is_uri(f) and not os.path.exists(f)))
    return batch.append_column("data", pa.array(data, pa.large_binary())) \
        .append_column("error", pa.array(errors, pa.string())).append_column("_unseen", pa.array(unseen, pa.bool_()))


def decode_stage(batch: pa.Table, cfg) -> pa.Table:
    """``data`` -> ``pixels``: the (H,W,3) uint8 crop as bytes (empty on error); ``error`` filled."""
    pixels, errors = [], batch.column("error").to_pylist()
    for i, (f, data) in enumerate(zip(batch.column("file").to_pylist(), batch.column("data").to_pylist())):
        crop = None
        if errors[i] is None:
            crop, errors[i] = decode_or_error(data, f, cfg)
        pixels.append(crop.tobytes() if crop is not None else b"")
    keep = [c for c in batch.column_names if c not in ("data", "error")]
    return batch.select(keep).append_column("pixels", pa.array(pixels, pa.large_binary())) \
        .append_column("error", pa.array(errors, pa.string()))


class ClassifierActor:
    """The actor-pool stage: the Classifier is loaded once per actor (intra-op threads =
    ``threads``, the actor's CPUs); each call turns a batch of crops into result rows. With
    ``decode`` it first reads and decodes the batch itself (:func:`read_stage`, :func:`decode_stage`)."""

    def __init__(self, job: ClassifyJob, threads: int, decode: bool = False, cluster: bool = False):
        import ray

        self.job, self.clf = job, job.load(threads)
        self.cfg = self.clf.encoder.preprocess_config
        self.shape = (*self.cfg.size, 3)
        self.decode, self.cluster = decode, cluster
        self.actor_id = ray.get_runtime_context().get_actor_id() or "driver"

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.decode:
            batch = decode_stage(read_stage(batch, self.cluster), self.cfg)
        cols = {c: batch.column(c).to_pylist() for c in ("file", "file_size", "file_mtime_ns", "error")}
        ok = [i for i, e in enumerate(cols["error"]) if e is None]
        crops = np.stack([np.frombuffer(batch.column("pixels")[i].as_py(), np.uint8).reshape(self.shape)
                          for i in ok]) if ok else None
        recs = dict(zip(ok, classify_crops(self.clf, self.job, [cols["file"][i] for i in ok], crops))) if ok else {}
        rows = [row(recs[i] if i in recs else error_record(f, cols["error"][i]), Source(f, s, m))
                for i, (f, s, m) in enumerate(zip(cols["file"], cols["file_size"], cols["file_mtime_ns"]))]
        return to_table(rows).append_column("_actor", pa.array([self.actor_id] * len(rows), pa.string())) \
            .append_column("_unseen", batch.column("_unseen"))


def _coder_error_in(exc: BaseException):
    """The :class:`~coder.errors.CoderError` a Ray task or actor raised (Ray wraps it in
    RayTaskError / ActorDiedError / Ray Data's exceptions), or None: walks cause and context."""
    from ..errors import CoderError

    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CoderError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return _coder_error_in_text(exc)


def _coder_error_in_text(exc: BaseException):
    """An actor that died in ``__init__`` reaches the driver as text only (the remote traceback):
    rebuild the typed error from its last ``coder.errors.Name: message`` line."""
    import re

    from .. import errors

    found = re.findall(r"coder\.errors\.(\w+): ([^\n]*)", str(exc))
    if not found:
        return None
    name, msg = found[-1]
    cls = getattr(errors, name, None)
    return cls(re.sub(r"\x1b\[[0-9;]*m", "", msg)) if isinstance(cls, type) and issubclass(cls, errors.CoderError) \
        else None


def build_dataset(job: ClassifyJob, sources: list[Source], opts: RayOptions, backend: str, cfg):
    """The lazy Ray Dataset of result rows (plus an ``_actor`` column) for ``sources``."""
    import ray

    items = [{"file": s.file, "file_size": s.size, "file_mtime_ns": s.mtime_ns} for s in sources]
    blocks = max(1, min(len(items) // opts.batch_size, 2000))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    cluster, in_actor = opts.address is not None, opts.in_actor(backend)
    if not in_actor:
        ds = ds.map_batches(read_stage, fn_kwargs={"cluster": cluster}, batch_format="pyarrow",
                            batch_size=opts.batch_size, num_cpus=opts.decode_cpus)
        ds = ds.map_batches(decode_stage, fn_kwargs={"cfg": cfg}, batch_format="pyarrow",
                            batch_size=opts.batch_size, num_cpus=opts.decode_cpus)
    lo, hi = opts.actors
    pool = ray.data.ActorPoolStrategy(size=lo) if lo == hi else ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
    return ds.map_batches(ClassifierActor, fn_constructor_kwargs={"job": job, "threads": opts.cpus_per_actor,
                                                                  "decode": in_actor, "cluster": cluster},
                          compute=pool, batch_format="pyarrow", batch_size=opts.batch_size,
                          num_cpus=opts.cpus_per_actor, num_gpus=opts.num_gpus(backend))


DATA_THREADS = ("StreamingExecutor-", "Prefetcher", "map_tp_", "iter_threaded")  # Ray Data's worker threads
STOP_TIMEOUT_S = 10.0


def stop_iteration(batches, before: set, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Close the dataset iterator ``batches`` (Ray Data shuts its executor down on this thread) and wait, at
    most ``timeout`` s in all, for the Ray Data threads started since ``before`` (a ``threading.enumerate()``
    snapshot). A thread still calling into Ray after ``ray.shutdown()`` makes Ray end the whole process with
    status 1 ("The core worker has already been shutdown"), which turned a SIGTERM's exit 143 into 1 before
    the finished rows were committed. Returns the names of threads still alive at the deadline."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    deadline = time.monotonic() + timeout
    left = []
    for t in threading.enumerate():
        if t in before or t is threading.current_thread() or not t.name.startswith(DATA_THREADS):
            continue
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            left.append(t.name)
    return left


def run_ray(job: ClassifyJob, sources: list[Source], opts: RayOptions, on_table: Callable[[pa.Table], None],
            stats: Optional[RayStats] = None) -> RayStats:
    """Run the pipeline over ``sources``; ``on_table`` gets each finished :data:`SCHEMA` batch on
    the driver (as it streams). Ray is shut down afterwards only if it was started here."""
    import ray

    stats = stats or RayStats()
    t0 = time.perf_counter()
    stats.started_local, stats.cluster_cpus = connect(opts.address, 0 if opts.in_actor(job.options.backend) else 1)
    stats.startup_s = time.perf_counter() - t0
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours (rows/s, ETA) runs on the driver
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # failures are re-raised here, once
        opts = fit_pool(opts, stats.cluster_cpus, float(ray.cluster_resources().get("GPU", 0.0)), job.options.backend)
        stats.pool = opts.actors
        from ..manifest import load_artifact

        cfg = load_artifact(job.options.artifacts).preprocess
        actors: set[str] = set()
        before = set(threading.enumerate())
        batches = iter(build_dataset(job, sources, opts, job.options.backend, cfg).iter_batches(
            batch_size=None, batch_format="pyarrow") if sources else ())
        try:
            for batch in batches:
                actors.update(batch.column("_actor").to_pylist())
                stats.backends.update(b for b in batch.column("backend").to_pylist() if b)
                mask = batch.column("_unseen")
                stats.unseen += batch.filter(mask).column("file").to_pylist()
                on_table(batch.filter(pc.invert(mask)).drop_columns(["_actor", "_unseen"]).cast(SCHEMA))
        except Exception as e:  # a worker's CoderError (bad artifact, backend) arrives wrapped by Ray
            raise _coder_error_in(e) or e
        finally:
            stats.actors = len(actors)
            stop_iteration(batches, before)  # also on SIGTERM: nothing may call into Ray after its shutdown
        return stats
    finally:
        if stats.started_local:
            ray.shutdown()
