"""``coder classify`` and ``coder eval``: the CODER runtime on images."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .common import (ADAPTER, ALLOW_FALLBACK, BACKEND, CLASSES, CLASSES_FILE, ENGINE_DIR, FUSED_HEAD, PRECISION,
                     REBUILD_STALE, class_list, classifier_options, exit_code_for, info, out, print_json, progress_bar,
                     say)
from ..errors import ConfigError, InputError

app = typer.Typer()


@app.command()
def classify(
    paths: List[str] = typer.Argument(..., help="Image files, directories (recursive) or quoted globs."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a",
                                             help="Default: $CODER_ARTIFACTS, else the newest ./coder-artifacts/*."),
    bank: Optional[str] = typer.Option(None, help="Bank name under <artifacts>/banks (default: the only one)."),
    classes: Optional[str] = CLASSES,
    classes_file: Optional[Path] = CLASSES_FILE,
    top_k: int = typer.Option(5, "--top-k", min=1, help="Classes shown per image."),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Stage 1 only."),
    tau: Optional[float] = typer.Option(None, help="Rerank gate (default: the bank preset's published value)."),
    explain: bool = typer.Option(False, "--explain", help="Show the texts that matched best."),
    backend: str = BACKEND,
    precision: str = PRECISION,
    engine_dir: Optional[Path] = ENGINE_DIR,
    rebuild_stale: bool = REBUILD_STALE,
    batch_size: int = typer.Option(16, min=1, help="Images per encoder call (bounds memory)."),
    adapter: Optional[Path] = ADAPTER,
    fused_head: bool = FUSED_HEAD,
    allow_fallback: bool = ALLOW_FALLBACK,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image (JSON lines)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write a Parquet dataset (directory) instead; "
                                           "re-running resumes. Also takes text files of paths and URIs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="With --out: start fresh instead of resuming."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="With --out: redo inputs that gave error rows."),
    ray: bool = typer.Option(False, "--ray", help="Run on Ray Data (local Ray, or --ray-address); needs --out."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster (e.g. auto, "
                                              "ray://head:10001)."),
    actors: Optional[str] = typer.Option(None, "--actors", help="Classifier actors: N, or MIN,MAX to autoscale."),
    gpus_per_actor: Optional[float] = typer.Option(None, "--gpus-per-actor",
                                                   help="GPUs per actor (default 1 for cuda/tensorrt, else 0)."),
    cpus_per_actor: int = typer.Option(1, "--cpus-per-actor", min=1, help="CPUs per actor = its ONNX Runtime threads."),
) -> None:
    """Classify images with CODER (stage 1 + gated one-to-one rerank)."""
    options = classifier_options(artifacts, bank, backend, precision, tau, adapter, allow_fallback, fused_head,
                                 engine_dir, rebuild_stale, classes, classes_file)
    if out_dir is not None or ray:
        from .batch import RayArgs, classify_to_parquet
        from ..deploy.batch import ClassifyJob

        if out_dir is None or explain:
            raise ConfigError("--ray needs --out OUT.parquet; --explain does not go to Parquet")
        return classify_to_parquet(paths, ClassifyJob(options, top_k, not no_rerank), out_dir, batch_size,
                                   RayArgs(ray, ray_address, actors, gpus_per_actor, cpus_per_actor), overwrite,
                                   retry_errors, as_json)
    from ..runtime.images import to_pil
    from ..runtime.inputs import batched, iter_image_paths

    clf = options.load()
    rows, failures, empty = [], 0, []
    with clf, progress_bar() as bar:
        task = bar.add_task(f"classifying ({clf.backend})", total=None)
        for chunk in batched(iter_image_paths(paths, empty.append), batch_size):
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
        _print_predictions(rows, clf, paths)
    for message in empty:  # an input that yields no image is an error (exit 1), like an unreadable one
        say("error", message)
    if failures or empty:
        raise typer.Exit(exit_code_for(InputError()))


def _prediction_record(path, pred, explanation) -> dict:
    from ..runtime.records import prediction_record

    record = prediction_record(path, pred)
    if explanation is not None:
        record["explain"] = {k: [{"text": t, "cosine": round(c, 5)} for t, c in v] for k, v in explanation.items()}
    return record


def shown_name(file: str, args: list[str]) -> str:
    """What identifies ``file`` in the table: its path relative to the directory argument it came from.

    ``shown_name("examples/images/a/x.jpg", ["examples/images"]) == "a/x.jpg"``; a file given
    directly (or matched by a glob) is shown as given.
    """
    import os

    for arg in args:
        if os.path.isdir(arg):
            rel = os.path.relpath(file, arg)
            if not rel.startswith(".."):
                return rel
    return file


def _print_predictions(rows: list[dict], clf, args: list[str] | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    dirs = [a for a in (args or []) if Path(a).is_dir()]
    where = f" under {', '.join(dirs)}" if len(dirs) == 1 else ""
    t = Table(title=escape(f"{len(rows)} images{where}, backend {clf.backend}, tau {clf.tau}"))
    t.add_column("file", overflow="fold", min_width=12)  # wrapped, never cut: the name identifies the image
    for col in ("label", "top-k (stage-1 score)", "gap", "reranked"):
        t.add_column(col, overflow="fold")
    for r in rows:
        top = ", ".join(f"{n} {s:.2f}" for n, s in zip(r["top_k_names"], r["stage1_scores"]))
        t.add_row(escape(shown_name(r["file"], dirs)), escape(r["name"]), escape(top), f"{r['gap']:.3f}", "yes" if r["reranked"] else "")
        for cls_name, matches in (r.get("explain") or {}).items():
            t.add_row("", f"  why {escape(cls_name)}", escape("; ".join(f"{m['text']} ({m['cosine']:.3f})"
                                                                       for m in matches)), "", "")
    out.print(t)


@app.command("eval")
def eval_cmd(
    data: str = typer.Argument(..., help="ImageFolder directory, or fashion-mnist[:train|test] (Debian package)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a", help="Default as in `coder classify`."),
    bank: Optional[str] = typer.Option(None, help="Bank name under <artifacts>/banks."),
    classes: Optional[str] = CLASSES,
    classes_file: Optional[Path] = CLASSES_FILE,
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate a reproducible random subset of this many images."),
    seed: int = typer.Option(0, help="Seed of the --limit subset."),
    tau: Optional[float] = typer.Option(None, help="Rerank gate (default: the bank preset)."),
    backend: str = BACKEND,
    confusions_out: Optional[Path] = typer.Option(None, help="Write stage-1 confusion pairs (JSON) here."),
    adapter: Optional[Path] = typer.Option(None, help="Also report this few-shot adapter (`coder fit`)."),
    allow_fallback: bool = ALLOW_FALLBACK,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Top-1/top-5 of plain CLIP, CODER stage 1 and CODER + rerank on labelled images."""
    from dataclasses import asdict, replace

    from ..store import atomic_write_json
    from ..manifest import default_artifact_dir
    from ..runtime.classifier import Classifier
    from ..runtime.datasets import open_dataset, subset
    from ..runtime.evaluate import evaluate

    # eval needs the embeddings for the plain-CLIP row, so the numpy head runs on them.
    clf = Classifier.load(artifacts or default_artifact_dir(), bank, backend, "fp32", tau, adapter=adapter,
                          allow_fallback=allow_fallback, fused_head=False, classes=class_list(classes, classes_file))
    ds = open_dataset(data)
    ds = replace(ds, items=subset(ds.items, limit, seed))
    _clip_weights_with_progress(clf.bank)
    with progress_bar() as bar:
        task = bar.add_task(f"eval {ds.name} ({clf.backend})", total=len(ds.items))
        report = evaluate(clf, ds, lambda n: bar.advance(task, n))
    for name in report.missing_classes:
        say("warning", f"dataset class {name!r} is not in the bank; its images are skipped")
    if confusions_out is not None:
        atomic_write_json(confusions_out, {"format": "coder.confusions", "format_version": 1,
                                           "pairs": [{"true": t, "predicted": p, "count": n}
                                                     for t, p, n in report.confusions]})
    if as_json:
        print_json({"dataset": ds.name, "backend": clf.backend, "tau": clf.tau, **asdict(report)})
        return
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"{ds.name}: {report.n} images, backend {clf.backend}, tau {clf.tau}"))
    for col in ("method", "top-1", "top-5"):
        t.add_column(col)
    for method, acc in report.rows.items():
        t.add_row(escape(method), f"{100 * acc['top1']:.2f}%", f"{100 * acc['top5']:.2f}%")
    out.print(t)
    info(f"reranked {100 * report.reranked_fraction:.1f}% of images: {report.wrong_to_right} wrong->right, "
              f"{report.right_to_wrong} right->wrong; {report.failures} unreadable")
    if report.failures:
        raise typer.Exit(exit_code_for(InputError()))


def _clip_weights_with_progress(bank) -> None:
    """The plain-CLIP weights eval and fit need: encoded on first use (80 templates per class),
    with a bar, so a first ImageNet eval does not sit silent for minutes."""
    with progress_bar() as bar:
        task = bar.add_task("plain-CLIP weights (once per bank)", total=None)
        bank.load_clip_weights(lambda done, total: bar.update(task, completed=done, total=total))
        bar.update(task, visible=bool(bar.tasks[task].total))  # cached: leave no empty bar behind


@app.command()
def fit(
    train: str = typer.Argument(..., help="ImageFolder directory or fashion-mnist[:train]."),
    shots: int = typer.Option(..., "--shots", min=1, help="K images per class for the cache."),
    out_file: Path = typer.Option(..., "--out", help="Adapter file to write (.npz)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a", help="Default as in `coder classify`."),
    bank: Optional[str] = typer.Option(None, help="Bank name under <artifacts>/banks."),
    val: Optional[str] = typer.Option(None, help="Validation set (ImageFolder or fashion-mnist:...)."),
    val_fraction: float = typer.Option(0.1, help="Else: this share of each class's non-support images."),
    val_limit: int = typer.Option(1000, min=1, help="At most this many validation images."),
    augment_epochs: int = typer.Option(1, min=0, help="Augmented views averaged per support image (0: none)."),
    seed: int = typer.Option(0, help="Seed for shot sampling and augmentation."),
    kind: str = typer.Option("coder", help="coder (CODER-Adapter) | tip (plain Tip-Adapter, CLIP-feature keys)."),
) -> None:
    """Fit a training-free few-shot cache adapter; alpha/beta searched on validation only."""
    from ..manifest import default_artifact_dir
    from ..runtime.adapter import KINDS, save_adapter
    from ..runtime.classifier import Classifier
    from ..runtime.datasets import open_dataset
    from ..runtime.fewshot import fit as fit_adapter

    if kind not in KINDS or shots < 1 or not 0 < val_fraction < 1:
        raise ConfigError(f"need --kind in {KINDS}, --shots >= 1 and 0 < --val-fraction < 1")
    clf = Classifier.load(artifacts or default_artifact_dir(), bank, "auto", fused_head=False)
    ds = open_dataset("fashion-mnist:train" if train == "fashion-mnist" else train)  # fit: the training split
    val_ds = open_dataset(val) if val else None
    n_classes = len(ds.classes)
    total = n_classes * shots * max(augment_epochs, 1) + (val_limit if val_ds is None else min(val_limit, len(val_ds.items)))
    _clip_weights_with_progress(clf.bank)
    with progress_bar() as bar:
        task = bar.add_task(f"fit {kind} {shots}-shot ({clf.backend})", total=total)
        res = fit_adapter(clf, ds, shots, val_ds, val_fraction, augment_epochs, seed, kind, val_limit,
                          lambda n: bar.advance(task, n))
        bar.update(task, completed=total)
    for name, count in res.short_classes:
        say("warning", f"class {name!r} has only {count} images (< {shots} shots); all of them were used")
    save_adapter(out_file, res.adapter)
    info(f"wrote {out_file}: {res.n_support} support images, alpha {res.adapter.alpha:.3g}, "
         f"beta {res.adapter.beta:.3g}, validation top-1 {100 * res.val_accuracy:.2f}% on {res.n_val} images "
         f"(encode {res.seconds_encode:.1f} s, search {res.seconds_search:.2f} s)")


@app.command()
def bench(
    artifacts: Optional[Path] = typer.Argument(None, help="Artifact directory (default as in `coder classify`)."),
    batches: str = typer.Option("1,8,32", help="Comma list of batch sizes."),
    repeats: int = typer.Option(20, min=1, help="Timed repeats per row."),
    no_torch: bool = typer.Option(False, "--no-torch", help="Skip the torch eager reference rows."),
    bank: Optional[str] = typer.Option(None, help="Bank for the head rows (default: the only one)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Latency p50/p90/p99 per stage and throughput, per backend that loads; CPU rows: % of the CPU matmul peak."""
    from ..bench import run_bench
    from ..manifest import default_artifact_dir

    try:
        sizes = tuple(int(b) for b in batches.split(","))
    except ValueError:
        raise ConfigError(f"--batches {batches!r}: a comma list of integers") from None
    with progress_bar() as bar:
        task = bar.add_task("benchmarking", total=None)
        result = run_bench(artifacts or default_artifact_dir(), sizes, repeats, with_torch=not no_torch,
                           report=lambda msg: bar.update(task, description=msg), bank_name=bank)
    if as_json:
        print_json(result)
        return
    _print_bench(result)
    for name, why in result["skipped"].items():
        info(f"skipped {name}: {why}")
    if "bf16" in result.get("matmul_peak_gflops_by_precision", {}):
        info(f"%CPU of openvino-bf16 rows: of OpenVINO's bf16 matmul peak, "
             f"{result['matmul_peak_gflops_by_precision']['bf16']:.0f} GFLOPS")
    if result.get("auto_cpu"):
        info(f"--backend auto on this CPU (fp32): {result['auto_cpu']['describe']}")


def _ms(x: float) -> str:
    """Milliseconds in at most 7 characters: ``_ms(0.2213) == "0.221"``, ``_ms(1767.04) == "1767.0"``."""
    return f"{x:.3f}" if x < 10 else f"{x:.2f}" if x < 100 else f"{x:.1f}"


def _print_bench(result: dict) -> None:
    """One row per (backend, stage, batch), readable at 80 columns: the backend wraps, numbers never do."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    int8_peak = result.get("int8_matmul_peak_gops")
    t = Table(title=escape(f"coder bench {result['architecture']}: CPU matmul peak "
                           f"{result['matmul_peak_gflops']:.0f} GFLOPS fp32"
                           + (f", {int8_peak:.0f} GOPS int8 (int8 rows: % of that)" if int8_peak else "")), box=box.SIMPLE_HEAD, pad_edge=False,
              padding=(0, 1), collapse_padding=True)
    t.add_column("backend", overflow="fold", ratio=1, min_width=12)
    t.add_column("stage", overflow="fold", min_width=12)
    for col in ("b", "p50 ms", "p90 ms", "p99 ms", "img/s", "%CPU"):  # of the CPU matmul peak; GPU rows: none
        t.add_column(col, justify="right", no_wrap=True)
    for r in result["rows"]:
        pct = f"{r['pct_of_matmul_peak']:.0f}%" if r["pct_of_matmul_peak"] is not None else ""
        t.add_row(escape(r["backend"]), escape(r["stage"]), str(r["batch"]), _ms(r["p50_ms"]), _ms(r["p90_ms"]),
                  _ms(r["p99_ms"]), f"{r['images_per_s']:.1f}", pct)
    out.print(t)


@app.command("build-engine")
def build_engine(
    artifacts: Path = typer.Argument(..., help="Artifact directory from `coder export`."),
    precision: str = typer.Option("fp16", help="fp16 | fp32 | int8 (taken from that ONNX graph; strongly typed; "
                                               "int8: the export's TensorRT QDQ file, `coder export --int8`)."),
    max_batch: int = typer.Option(32, min=1, help="Largest batch of the optimization profile."),
    opt_batch: int = typer.Option(8, min=1, help="Batch TensorRT tunes for."),
    workspace: int = typer.Option(4096, min=1, help="Workspace limit in MB."),
    timing_cache: Optional[Path] = typer.Option(None, help="Timing cache file, reused across builds."),
    engine_dir: Optional[Path] = typer.Option(None, help="Where engines live (default $CODER_ENGINE_DIR, else "
                                                         "<artifacts>/engines)."),
    bank: Optional[str] = typer.Option(None, help="Fuse this bank's CODER head into the engine ('none': plain "
                                                  "encoder; default: the only bank, if there is one)."),
    k: Optional[int] = typer.Option(None, min=1, help="Rerank candidates in the fused head (default: the bank preset)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Build a native TensorRT engine (needs a CUDA GPU and the [trt] extra), validate it, record it."""
    from ..engines.trt import BuildOptions

    if precision not in ("fp16", "fp32", "int8") or not 1 <= opt_batch <= max_batch:
        raise ConfigError("--precision fp16|fp32|int8 and 1 <= --opt-batch <= --max-batch")
    opts = BuildOptions(precision, 1, opt_batch, max_batch, workspace, timing_cache)
    build_engine_with_progress(artifacts, opts, engine_dir, bank, k, as_json)


def build_engine_with_progress(artifacts: Path, opts, engine_dir: Optional[Path], bank_name: Optional[str],
                               k: Optional[int], as_json: bool = False, quiet: bool = False) -> dict:
    """Shared by `coder build-engine` and `coder export --engine tensorrt`; returns the JSON record.

    ``quiet`` prints nothing (the caller puts the record into its own single JSON document).
    """
    from dataclasses import asdict

    from ..runtime.engine_build import build_image_engine
    from ..engines.trt import require_trt
    from ..manifest import load_artifact
    from ..runtime.classifier import find_bank
    from ..text_bank.bank import load_bank

    require_trt()
    art = load_artifact(artifacts)
    bank = None
    if bank_name != "none" and (bank_name or list(art.root.glob("banks/*/bank.json"))):
        bank = load_bank(find_bank(art.root, bank_name), art)
    with progress_bar() as bar:
        task = bar.add_task("building TensorRT engine", total=None)

        def report(msg: str) -> bool:
            bar.update(task, description=msg)
            return True

        built = build_image_engine(art.root, opts, engine_dir, bank, k or (bank.k if bank else 5), report)
    record = {"engine": str(built.path), "key": built.key, "validation": asdict(built.validation)}
    if quiet or as_json:
        if as_json and not quiet:
            print_json(record)
        return record
    v, key = built.validation, built.key
    info(f"wrote {built.path} (TensorRT {key['tensorrt']}, {key['gpu']} sm {key['compute_capability']}); "
         f"vs fp32 ONNX Runtime on {v.images} scenes: min cosine {v.min_cosine:.5f}"
         + (f", top-1 agreement {100 * v.top1_agreement:.0f}%" if v.top1_agreement is not None else "")
         + (f", labels equal {100 * v.label_agreement:.0f}% (every head output checked)"
            if v.label_agreement is not None else ""))
    return record
