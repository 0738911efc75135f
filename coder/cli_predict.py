"""``coder classify`` and ``coder eval``: the CODER runtime on images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .cli import _print_json, _progress, app, exit_code_for, info, out, say
from .errors import InputError


@app.command()
def classify(
    paths: List[str] = typer.Argument(..., help="Image files, directories (recursive) or quoted globs."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a",
                                             help="Default: $CODER_ARTIFACTS, else the newest ./coder-artifacts/*."),
    bank: Optional[str] = typer.Option(None, help="Bank name under <artifacts>/banks (default: the only one)."),
    top_k: int = typer.Option(5, "--top-k", help="Classes shown per image."),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Stage 1 only."),
    tau: Optional[float] = typer.Option(None, help="Rerank gate (default: the bank preset's published value)."),
    explain: bool = typer.Option(False, "--explain", help="Show the texts that matched best."),
    backend: str = typer.Option("auto", help="auto | cpu | cuda | tensorrt."),
    precision: str = typer.Option("fp32", help="fp32 | fp16."),
    batch_size: int = typer.Option(16, help="Images per encoder call (bounds memory)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image (JSON lines)."),
) -> None:
    """Classify images with CODER (stage 1 + gated one-to-one rerank)."""
    from .manifest import default_artifact_dir
    from .runtime.classifier import Classifier
    from .runtime.images import to_pil
    from .runtime.inputs import batched, iter_image_paths

    clf = Classifier.load(artifacts or default_artifact_dir(), bank, backend, precision, tau)
    rows, failures = [], 0
    with _progress() as bar:
        task = bar.add_task(f"classifying ({clf.backend})", total=None)
        for chunk in batched(iter_image_paths(paths), batch_size):
            ok, pils = [], []
            for p in chunk:
                try:
                    pils.append(to_pil(p))
                    ok.append(p)
                except InputError as e:
                    failures += 1
                    say("error", str(e))
            for p, pred, pil in zip(ok, clf.classify(pils, top_k, not no_rerank) if pils else [], pils):
                record = _prediction_record(p, pred, clf.explain(pil) if explain else None)
                if as_json:
                    sys.stdout.write(json.dumps(record) + "\n")
                else:
                    rows.append(record)
            bar.advance(task, len(chunk))
    if not as_json:
        _print_predictions(rows, clf)
    if failures:
        raise typer.Exit(exit_code_for(InputError()))


def _prediction_record(path, pred, explanation) -> dict:
    from dataclasses import asdict

    record = {"file": str(path), **asdict(pred)}
    if explanation is not None:
        record["explain"] = {k: [{"text": t, "cosine": round(c, 5)} for t, c in v] for k, v in explanation.items()}
    return record


def _print_predictions(rows: list[dict], clf) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"{len(rows)} images, backend {clf.backend}, tau {clf.tau}")
    for col in ("file", "label", "top-k (stage-1 score)", "gap", "reranked"):
        t.add_column(col)
    for r in rows:
        top = ", ".join(f"{n} {s:.2f}" for n, s in zip(r["top_k_names"], r["stage1_scores"]))
        t.add_row(escape(r["file"]), escape(r["name"]), escape(top), f"{r['gap']:.3f}", "yes" if r["reranked"] else "")
        for cls_name, matches in (r.get("explain") or {}).items():
            t.add_row("", f"  why {escape(cls_name)}", escape("; ".join(f"{m['text']} ({m['cosine']:.3f})"
                                                                       for m in matches)), "", "")
    out.print(t)


@app.command("eval")
def eval_cmd(
    data: str = typer.Argument(..., help="ImageFolder directory, or fashion-mnist[:train|test] (Debian package)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a", help="Default as in `coder classify`."),
    bank: Optional[str] = typer.Option(None, help="Bank name under <artifacts>/banks."),
    limit: Optional[int] = typer.Option(None, help="Evaluate a reproducible random subset of this many images."),
    seed: int = typer.Option(0, help="Seed of the --limit subset."),
    tau: Optional[float] = typer.Option(None, help="Rerank gate (default: the bank preset)."),
    backend: str = typer.Option("auto", help="auto | cpu | cuda | tensorrt."),
    confusions_out: Optional[Path] = typer.Option(None, help="Write stage-1 confusion pairs (JSON) here."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Top-1/top-5 of plain CLIP, CODER stage 1 and CODER + rerank on labelled images."""
    from dataclasses import asdict, replace

    from .fsutil import atomic_write_json
    from .manifest import default_artifact_dir
    from .runtime.classifier import Classifier
    from .runtime.datasets import open_dataset, subset
    from .runtime.evaluate import evaluate

    clf = Classifier.load(artifacts or default_artifact_dir(), bank, backend, "fp32", tau)
    ds = open_dataset(data)
    ds = replace(ds, items=subset(ds.items, limit, seed))
    with _progress() as bar:
        task = bar.add_task(f"eval {ds.name} ({clf.backend})", total=len(ds.items))
        report = evaluate(clf, ds, lambda n: bar.advance(task, n))
    for name in report.missing_classes:
        say("warning", f"dataset class {name!r} is not in the bank; its images are skipped")
    if confusions_out is not None:
        atomic_write_json(confusions_out, {"format": "coder.confusions", "format_version": 1,
                                           "pairs": [{"true": t, "predicted": p, "count": n}
                                                     for t, p, n in report.confusions]})
    if as_json:
        _print_json({"dataset": ds.name, "backend": clf.backend, "tau": clf.tau, **asdict(report)})
        return
    from rich.table import Table

    t = Table(title=f"{ds.name}: {report.n} images, backend {clf.backend}, tau {clf.tau}")
    for col in ("method", "top-1", "top-5"):
        t.add_column(col)
    for method, acc in report.rows.items():
        t.add_row(method, f"{100 * acc['top1']:.2f}%", f"{100 * acc['top5']:.2f}%")
    out.print(t)
    info(f"reranked {100 * report.reranked_fraction:.1f}% of images: {report.wrong_to_right} wrong->right, "
              f"{report.right_to_wrong} right->wrong; {report.failures} unreadable")
    if report.failures:
        raise typer.Exit(exit_code_for(InputError()))
