"""``coder`` command line. Heavy modules are imported inside commands so that
``coder --help`` and ``coder --version`` stay fast.

Exit codes (one table, also in the README):
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import traceback
import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as _click_exceptions
from rich.console import Console

from . import __version__
from .errors import (ArtifactError, BackendError, CoderError, ConfigError, ExportError, InputError,
                     TextsError, WeightsError)

# The one place errors become exit codes. Order matters: subclasses first.
EXIT_OK = 0
EXIT_CODES: list[tuple[type[CoderError], int, str]] = [
    (InputError, 1, "some inputs could not be read (the others were processed)"),
    (ConfigError, 2, "bad option value or usage"),
    (ArtifactError, 3, "artifact missing, corrupt, of another format version, or a checksum mismatch"),
    (ExportError, 4, "ONNX export failed or a validation gate did not pass"),
    (WeightsError, 5, "pretrained weights unavailable (offline, bad tag, unreadable checkpoint)"),
    (BackendError, 6, "requested backend not available or fell back"),
    (TextsError, 7, "class-texts file malformed (the message names the field)"),
    (CoderError, 9, "other coder error"),
]
EXIT_INTERNAL = 70  # a bug: the traceback is printed

__doc__ += "\n".join(f"    {code}  {what}" for _, code, what in EXIT_CODES) + f"\n    {EXIT_INTERNAL} internal error\n"

# Usage errors, --help exits and aborts are click's own control flow, not crashes.
_CLICK_CONTROL_FLOW = (_click_exceptions.ClickException, typer.Exit, typer.Abort)


class _CoderGroup(TyperGroup):
    """Runs every command; the single place a CoderError becomes one line + exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CoderError as e:
            err.print(f"[red]error[/red]: {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code_for(e)) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/red]: finished files are kept; re-run to resume")
            raise typer.Exit(130) from None
        except _CLICK_CONTROL_FLOW:
            raise
        except Exception:
            traceback.print_exc()
            err.print(f"[red]internal error[/red] (exit {EXIT_INTERNAL}): please report the traceback above")
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(cls=_CoderGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="CODER CLIP classification: export, embed, classify on CPU/GPU.")
out = Console()
err = Console(stderr=True)


def exit_code_for(exc: CoderError) -> int:
    return next(code for cls, code, _ in EXIT_CODES if isinstance(exc, cls))


def _version(value: bool) -> None:
    if value:
        print(f"coder {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """CODER CLIP classification: export, embed, classify on CPU/GPU."""


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@app.command()
def export(
    backbone: str = typer.Option("ViT-B-32", "--backbone", "-b", help="open_clip architecture, e.g. ViT-B/16."),
    pretrained: str = typer.Option("openai", help="open_clip tag, checkpoint path, or 'none' (random init)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Default ./coder-artifacts/<arch>__<tag>."),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | both."),
    opset: int = typer.Option(17, help="ONNX opset (>= 17 for LayerNormalization)."),
    max_batch: int = typer.Option(64, help="Largest batch the runtime sends in one call."),
    seed: int = typer.Option(0, help="Seed for --pretrained none."),
    model_config: Optional[Path] = typer.Option(None, help="Extra open_clip model config .json (custom arch)."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the torch parity gates (not advised)."),
    force: bool = typer.Option(False, help="Replace an existing artifact."),
    classes: str = typer.Option("imagenet1k", help="Built-in class list or class file for the bank ('none': skip)."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="Build the bank from this texts file instead."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export an open_clip model to validated ONNX encoders + manifest, then build the class bank."""
    from .export.pipeline import ExportOptions, default_out_dir, export_artifacts
    from .export.registry import normalize_backbone, parse_pretrained, register_model_config

    precisions = {"fp32": ("fp32",), "fp16": ("fp32", "fp16"), "both": ("fp32", "fp16")}.get(precision)
    if precisions is None:
        raise ConfigError(f"--precision {precision!r}: choose fp32, fp16 or both")
    if opset < 17:
        raise ConfigError(f"--opset {opset}: needs >= 17 (LayerNormalization; decomposed LN overflows in fp16)")
    if model_config is not None:
        register_model_config(model_config)
    arch = normalize_backbone(backbone)
    spec = parse_pretrained(pretrained, arch, seed)
    opts = ExportOptions(arch, spec, out_dir or default_out_dir(arch, spec), precisions, opset, max_batch,
                         force, not no_validate)
    steps = 3 + 2 * len(precisions) * (2 if opts.validate else 1)
    with _progress() as bar:
        task = bar.add_task(f"export {arch}", total=steps)

        def report(step: str) -> None:
            bar.update(task, description=step, advance=0 if step == "done" else 1)

        result = export_artifacts(opts, report)
        bar.update(task, completed=steps)
    if as_json:
        _print_json(result.manifest)
    else:
        _print_export_summary(result)
    if texts is None and classes != "none":
        from .text_bank.texts import init_texts, save_texts

        texts = result.out_dir / f"texts-{Path(classes).stem}.json"
        save_texts(texts, init_texts(classes))
    if texts is not None:
        _build_bank(result.out_dir, texts, "fp32", None, False, quiet=as_json)


def _print_export_summary(result) -> None:
    from rich.table import Table

    t = Table(title=f"exported {result.manifest['architecture']} -> {result.out_dir}")
    for col in ("file", "MB", "validation"):
        t.add_column(col)
    for name, entry in result.manifest["files"].items():
        v = result.manifest["validation"].get(name)
        t.add_row(name, f"{entry['bytes'] / 1e6:.1f}", _validation_text(v) + (" (resumed)" if name in result.resumed_files else ""))
    out.print(t)


def _validation_text(v) -> str:
    if not v:
        return "-"
    if "max_abs_diff" in v:
        return f"max|diff| {v['max_abs_diff']:.2e} (gate {v['gate']:.0e})"
    return f"min cos {v['min_cosine']:.7f}, same top-1 {v['same_top1']}"


@app.command()
def embed(
    images: List[Path] = typer.Argument(..., help="Image files, embedded in the order given."),
    artifacts: Path = typer.Option(..., "--artifacts", "-a", help="Artifact directory from `coder export`."),
    precision: str = typer.Option("fp32", help="fp32 | fp16 (must have been exported)."),
    backend: str = typer.Option("cpu", help="cpu | cuda | tensorrt (ONNX Runtime providers)."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Save embeddings as .npy (rows of files that loaded)."),
    batch_size: int = typer.Option(16, help="Images per encoder call."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON with every embedding."),
) -> None:
    """L2-normalised image embeddings computed with ONNX Runtime."""
    from .runtime.encoder import ImageEncoder, embed_files

    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"--precision {precision!r}: choose fp32 or fp16")
    enc = ImageEncoder.load(artifacts, precision, backend)
    with _progress() as bar:
        task = bar.add_task("embedding", total=len(images))
        res = embed_files(enc, [str(p) for p in images], batch_size, lambda n: bar.advance(task, n))
    for path, why in res.failures:
        err.print(f"[red]error[/red]: {why}", highlight=False, soft_wrap=True)
    if out_file is not None:
        _save_npy(out_file, res.embeddings)
    if as_json:
        _print_json({"backend": res.backend, "precision": res.precision, "dim": int(res.embeddings.shape[1]),
                     "items": [{"file": f, "embedding": [round(float(v), 7) for v in row]}
                               for f, row in zip(res.paths, res.embeddings)],
                     "failures": [{"file": f, "error": why} for f, why in res.failures]})
    else:
        _print_embed_table(res, out_file)
    if res.failures:
        raise typer.Exit(exit_code_for(InputError()))


def _save_npy(path: Path, arr) -> None:
    import numpy as np

    from .fsutil import atomic_path

    if path.suffix != ".npy":
        raise ConfigError(f"--out {path}: must end in .npy")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)


def _print_embed_table(res, out_file) -> None:
    from rich.table import Table

    t = Table(title=f"{len(res.paths)} embeddings, dim {res.embeddings.shape[1]}, backend {res.backend} "
                    f"({res.precision})" + (f" -> {out_file}" if out_file else ""))
    for col in ("file", "norm", "first values"):
        t.add_column(col)
    for f, row in zip(res.paths, res.embeddings):
        t.add_row(f, f"{float((row ** 2).sum() ** 0.5):.4f}", " ".join(f"{v:+.4f}" for v in row[:4]) + " …")
    out.print(t)


texts_app = typer.Typer(help="Class-texts files: init, inspect.", no_args_is_help=True)
bank_app = typer.Typer(help="Build the folded CODER bank for a texts file.", no_args_is_help=True)
app.add_typer(texts_app, name="texts")
app.add_typer(bank_app, name="bank")


@texts_app.command("init")
def texts_init(
    classes: str = typer.Option(..., help="Built-in list name (cifar10, imagenet1k, ...) or a class file."),
    out_file: Path = typer.Option(..., "--out", help="texts.json to write."),
    preset: Optional[str] = typer.Option(None, help="Template preset (default, eurosat, food, pets, dtd, ...)."),
    force: bool = typer.Option(False, help="Overwrite an existing file."),
) -> None:
    """Write a names-only class-texts file (the documented baseline)."""
    from .text_bank.texts import init_texts, save_texts

    if out_file.exists() and not force:
        raise ConfigError(f"{out_file} exists; pass --force to overwrite")
    t = init_texts(classes, preset)
    save_texts(out_file, t)
    out.print(f"wrote {out_file}: {len(t.classes)} classes, preset {t.preset}")


@texts_app.command("synonyms")
def texts_synonyms(
    texts: Path = typer.Argument(..., help="Class-texts file to update in place (atomically)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a",
                                             help="Pick ambiguous synsets with this text encoder (else: most frequent sense)."),
    wordnet_dir: Optional[Path] = typer.Option(None, help="WordNet 3.0 dict dir (default /usr/share/wordnet)."),
) -> None:
    """Add WordNet 3.0 synonyms (exact for classes with a WordNet id)."""
    from .runtime.text_encoder import TextEncoder
    from .text_bank.texts import load_texts, save_texts
    from .text_bank.wordnet import WordNet, add_synonyms

    t = load_texts(texts)
    wn = WordNet(wordnet_dir) if wordnet_dir else WordNet()
    enc = TextEncoder.load(artifacts) if artifacts else None
    new, unmatched = add_synonyms(t, wn, enc)
    save_texts(texts, new)
    added = sum(len(b.syn) - len(a.syn) for a, b in zip(t.classes, new.classes))
    out.print(f"{texts}: {added} synonyms added; {len(unmatched)} classes without a WordNet noun"
              + (f": {', '.join(unmatched[:10])}{' …' if len(unmatched) > 10 else ''}" if unmatched else ""))


@texts_app.command("import")
def texts_import(
    texts: Path = typer.Argument(..., help="Class-texts file to update in place (atomically)."),
    source: Path = typer.Argument(..., help="Descriptor JSON: {class name: [text, ...]}."),
    kind: str = typer.Option("att", help="att | ana."),
    fmt: str = typer.Option("vcd", "--format", help="vcd (descriptor JSON) | cupl (CuPL prompt file)."),
) -> None:
    """Import existing LLM descriptions, matching class names tolerantly."""
    from .text_bank.importers import import_descriptions, read_descriptions
    from .text_bank.texts import load_texts, save_texts

    t = load_texts(texts)
    new, missing, extra = import_descriptions(t, read_descriptions(source, fmt), kind)
    save_texts(texts, new)
    out.print(f"{texts}: imported {kind} for {len(t.classes) - len(missing)}/{len(t.classes)} classes")
    if missing:
        err.print(f"[yellow]warning[/yellow]: no descriptions for {len(missing)} classes: "
                  f"{', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}", highlight=False, soft_wrap=True)
    if extra:
        err.print(f"[yellow]warning[/yellow]: {len(extra)} entries of {source} match no class: "
                  f"{', '.join(extra[:10])}{' …' if len(extra) > 10 else ''}", highlight=False, soft_wrap=True)


@texts_app.command("list")
def texts_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """The built-in class lists and their sources."""
    from .text_bank.texts import builtin_lists

    lists = builtin_lists()
    if as_json:
        _print_json({k: {"classes": len(v["classes"]), "preset": v["preset"], "source": v["source"]}
                     for k, v in lists.items()})
        return
    from rich.table import Table

    t = Table(title="built-in class lists")
    for col in ("name", "classes", "preset", "source"):
        t.add_column(col)
    for k, v in lists.items():
        t.add_row(k, str(len(v["classes"])), v["preset"], v["source"])
    out.print(t)


@bank_app.command("build")
def bank_build(
    artifacts: Path = typer.Option(..., "--artifacts", "-a", help="Artifact directory from `coder export`."),
    texts: Path = typer.Option(..., "--texts", help="Class-texts file (`coder texts init`)."),
    precision: str = typer.Option("fp32", help="Text encoder precision: fp32 | fp16."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Default <artifacts>/banks/<texts name>."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Encode every text (cached, length-grouped) and write the folded bank."""
    _build_bank(artifacts, texts, precision, out_dir, as_json)


def _build_bank(artifacts: Path, texts_path: Path, precision: str, out_dir, as_json: bool, quiet: bool = False) -> None:
    from .text_bank.bank import build_bank
    from .text_bank.texts import load_texts

    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"--precision {precision!r}: choose fp32 or fp16")
    texts = load_texts(texts_path)
    with _progress() as bar:
        task = bar.add_task("encoding texts", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        path, meta = build_bank(artifacts, texts, precision, out_dir, progress)
    summary = {"bank": str(path), **meta["counts"], "classes": len(meta["classes"]), "settings": meta["settings"]}
    if quiet:
        return
    if as_json:
        _print_json(summary)
    else:
        out.print(f"bank {path}: {meta['counts']['texts']} texts ({meta['counts']['newly_encoded']} newly encoded), "
                  f"{len(meta['classes'])} classes, {meta['counts']['pairs']} pairs, tau {meta['settings']['tau']}")


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
                    err.print(f"[red]error[/red]: {e}", highlight=False, soft_wrap=True)
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
        err.print(f"[yellow]warning[/yellow]: dataset class {name!r} is not in the bank; its images are skipped",
                  highlight=False, soft_wrap=True)
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
    out.print(f"reranked {100 * report.reranked_fraction:.1f}% of images: {report.wrong_to_right} wrong->right, "
              f"{report.right_to_wrong} right->wrong; {report.failures} unreadable")
    if report.failures:
        raise typer.Exit(exit_code_for(InputError()))


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Versions, which backends actually load here, GPU and TensorRT presence."""
    from .doctor import collect

    report = collect()
    if as_json:
        _print_json(report)
        return
    from rich.table import Table

    t = Table(title="coder doctor")
    t.add_column("item")
    t.add_column("status")
    from rich.markup import escape

    rows = [*report["versions"].items(), *((f"backend {k}", v) for k, v in report["backends"].items()),
            ("gpu", report["gpu"]), ("tensorrt", report["tensorrt"])]
    for k, v in rows:
        t.add_row(k, escape(v))
    out.print(t)


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point; exit codes come from :class:`_CoderGroup`."""
    try:
        app(args=argv, prog_name="coder")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
