"""``coder pack``: a portable copy of an artifact (encoders, tokenizer, banks; no engines, no caches)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import info, print_json, progress_bar

app = typer.Typer()


@app.command()
def pack(
    artifacts: Path = typer.Argument(..., help="Artifact directory from `coder export`."),
    dest: Path = typer.Argument(..., help="New directory for the copy (must not exist or be empty)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Copy an artifact for another machine, checked against its manifest (engines are rebuilt there)."""
    from ..pack import pack_artifact

    with progress_bar() as bar:
        task = bar.add_task("packing", total=None)
        summary = pack_artifact(artifacts, dest, lambda msg: bar.update(task, description=msg))
    if as_json:
        print_json(summary)
    else:
        info(("finished the stopped pack of " if summary.get("finished_stopped_pack") else "packed ") +
             f"{summary['dest']}: {summary['files']} files, banks {', '.join(summary['banks']) or 'none'}, "
             f"{summary['bytes'] / 1e6:.1f} MB; every sha256 checked. On the target: coder doctor, "
             f"coder build-engine {summary['dest']}, coder bench {summary['dest']}")
