"""``coder classify --out OUT.parquet`` (one process) and ``--ray`` (Ray Data): the CLI side —
options to a job, a progress bar with images/s and ETA, the summary line, exit codes.
The work itself lives in :mod:`coder.deploy`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from .common import exit_code_for, info, print_json, progress_bar, say
from ..errors import BackendError, ConfigError, InputError


@dataclass(frozen=True)
class RayArgs:
    """The ``--ray*`` / ``--actors`` / ``--*-per-actor`` options as given."""

    enabled: bool = False
    address: Optional[str] = None
    actors: Optional[str] = None
    gpus_per_actor: Optional[float] = None
    cpus_per_actor: int = 1


def _require(module: str, why: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise BackendError(f"{why} needs {module} ({e}): pip install 'coder[ray]'") from None


def classify_to_parquet(paths: list[str], job, out: Path, batch_size: int, ray_args: RayArgs, overwrite: bool,
                        retry_errors: bool, as_json: bool) -> None:
    """List inputs, skip those already in ``out``, label the rest, report one summary line."""
    _require("pyarrow", "--out")
    if ray_args.enabled:
        from ..deploy.ray_batch import prepare_env

        prepare_env(ray_args.address)
        _require("ray.data", "--ray")
    import pyarrow as pa

    from ..deploy.batch import job_settings, run_local
    from ..deploy.parquet_out import row, to_table, writing
    from ..deploy.sources import expand_sources

    if batch_size < 1 or ray_args.cpus_per_actor < 1 or (ray_args.gpus_per_actor or 0) < 0:
        raise ConfigError("--batch-size and --cpus-per-actor must be >= 1, --gpus-per-actor >= 0")
    empty: list[str] = []
    sources = list(expand_sources(paths, empty.append))
    for message in empty:  # an input that yields no image is an error (exit 1), as in plain classify
        say("error", message)
    if not sources:
        raise InputError(f"no images found in {', '.join(paths)}")
    settings = job_settings(job)
    t0 = time.perf_counter()
    where, actors, backends, startup, unseen = "this process", 1, set(), 0.0, []
    # the dataset's lock is held from here to the last part; closing commits every finished row,
    # also on Ctrl-C, SIGTERM (exit 130 / 143) or a failure
    with writing(out, settings, overwrite) as output, progress_bar("img") as bar:
        plan = output.plan(sources, retry_errors)
        task = bar.add_task("labeling" + (" (ray)" if ray_args.enabled else ""), total=len(plan.todo))

        def on_table(table: pa.Table) -> None:
            output.add(table)
            bar.advance(task, table.num_rows)

        if ray_args.enabled:
            where, actors, backends, startup, unseen = _run_ray(job, plan.todo, batch_size, ray_args, on_table)
        elif plan.todo:
            backends = {run_local(job, plan.todo, lambda pairs: on_table(to_table([row(r, s) for r, s in pairs])),
                                  batch_size)}
    _summary(output, plan, time.perf_counter() - t0, startup, where, actors, backends, out, as_json)
    if unseen:
        from ..deploy.ray_batch import unseen_message

        say("error", unseen_message(unseen))
    if output.errors_written or empty or unseen:
        raise typer.Exit(exit_code_for(InputError()))


def _run_ray(job, todo, batch_size, a: RayArgs, on_table):
    from ..deploy.ray_batch import RayOptions, parse_actors, run_ray

    opts = RayOptions(a.address, parse_actors(a.actors), a.cpus_per_actor,
                      a.gpus_per_actor, batch_size)
    stats = run_ray(job, todo, opts, on_table)
    lo, hi = stats.pool
    where = (f"Ray cluster {a.address}" if a.address else "local Ray") + \
        f" ({stats.cluster_cpus:g} CPUs, pool {lo}{'' if lo == hi else f'-{hi}'} actors, " \
        f"started in {stats.startup_s:.1f} s)"
    return where, stats.actors, stats.backends, stats.startup_s, stats.unseen


def _summary(output, plan, seconds: float, startup: float, where: str, actors: int, backends: set, out: Path,
             as_json: bool) -> None:
    n, errors = output.rows_written, output.errors_written
    rate = n / seconds if seconds > 0 else 0.0
    if as_json:
        print_json({"out": str(out), "images": n, "errors": errors, "seconds": round(seconds, 3),
                    "images_per_s": round(rate, 2), "ray_startup_s": round(startup, 3), "actors": actors,
                    "backends": sorted(backends),
                    "skipped_existing": plan.done, "redone": plan.redo, "where": where})
        return
    info(f"labeled {n} images ({errors} errors) in {seconds:.1f} s: {rate:.1f} images/s, {actors} actor(s) used, "
         f"backend {', '.join(sorted(backends)) or '-'}, {where}; {plan.done} already in {out} skipped"
         + (f", {plan.redo} redone" if plan.redo else ""))
