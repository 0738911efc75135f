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
                     LLMError, StaleEngineError, TextsError, WeightsError)

# The one place errors become exit codes. Order matters: subclasses first.
EXIT_OK = 0
EXIT_CODES: list[tuple[type[CoderError], int, str]] = [
    (InputError, 1, "some inputs could not be read (the others were processed)"),
    (ConfigError, 2, "bad option value or usage"),
    (ArtifactError, 3, "artifact missing, corrupt, of another format version, or a checksum mismatch"),
    (ExportError, 4, "ONNX export failed or a validation gate did not pass"),
    (WeightsError, 5, "pretrained weights unavailable (offline, bad tag, unreadable checkpoint)"),
    (StaleEngineError, 10, "TensorRT engine is stale (other ONNX, TensorRT version or GPU): rebuild it"),
    (BackendError, 6, "requested backend not available or fell back"),
    (TextsError, 7, "class-texts file malformed (the message names the field)"),
    (LLMError, 8, "LLM generation failed for some texts (recorded; re-run resumes from the cache)"),
    (CoderError, 9, "other coder error"),
]
EXIT_INTERNAL = 70  # a bug: the traceback is printed

__doc__ += "\n".join(f"    {code}  {what}" for _, code, what in EXIT_CODES) + f"\n    {EXIT_INTERNAL} internal error\n"

# Usage errors, --help exits and aborts are click's own control flow, not crashes.
_CLICK_CONTROL_FLOW = (_click_exceptions.ClickException, typer.Exit, typer.Abort)


class _CoderGroup(TyperGroup):
    """Runs every command; the single place a CoderError becomes one line + exit code."""

    def invoke(self, ctx):
        import warnings

        # A backend fallback the user allowed (--allow-fallback) is reported as one loud line.
        shown = warnings.showwarning
        warnings.showwarning = lambda msg, cat, *a, **k: say("warning", str(msg)) if issubclass(cat, RuntimeWarning) \
            else shown(msg, cat, *a, **k)
        try:
            return super().invoke(ctx)
        except CoderError as e:
            say("error", str(e))
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
# emoji=False: a class named "frog" in "att:frog:" must not become an emoji.
out = Console(emoji=False, highlight=False)
err = Console(stderr=True, emoji=False, highlight=False)


def say(level: str, msg: str) -> None:
    """One line on stderr, ``error: ...`` / ``warning: ...``; ``msg`` is data, never markup."""
    from rich.markup import escape

    style = "yellow" if level == "warning" else "red"
    err.print(f"[{style}]{level}[/{style}]: " + escape(str(msg)), soft_wrap=True)


def info(msg: str) -> None:
    from rich.markup import escape

    out.print(escape(str(msg)), soft_wrap=True)


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


ALLOW_FALLBACK = typer.Option(False, "--allow-fallback",
                              help="If ONNX Runtime falls back to another provider, warn and go on (else exit 6).")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


def _some(names: list[str], n: int = 10) -> str:
    return ", ".join(names[:n]) + (" …" if len(names) > n else "")


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
    int8: bool = typer.Option(False, "--int8", help="Also an int8 (dynamic quantization) image encoder for CPUs."),
    classes: str = typer.Option("imagenet1k", help="Built-in class list or class file for the bank ('none': skip)."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="Build the bank from this texts file instead."),
    engine: str = typer.Option("none", help="none | tensorrt: also build a validated fp16 TensorRT engine "
                                            "(with the bank's head fused) on this machine's GPU."),
    engine_dir: Optional[Path] = typer.Option(None, help="Where the engine goes (default <out>/engines)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export an open_clip model to validated ONNX encoders + manifest, then build the class bank."""
    from .export.pipeline import ExportOptions, default_out_dir, export_artifacts
    from .export.registry import normalize_backbone, parse_pretrained, register_model_config

    precisions = {"fp32": ("fp32",), "fp16": ("fp32", "fp16"), "both": ("fp32", "fp16")}.get(precision)
    if precisions is None or engine not in ("none", "tensorrt"):
        raise ConfigError(f"--precision {precision!r} / --engine {engine!r}: choose fp32|fp16|both, none|tensorrt")
    if engine == "tensorrt":
        from .engines.trt import require_trt

        require_trt()  # fail now, not after minutes of export
        precisions = ("fp32", "fp16")  # the engine is built from the fp16 graph (strongly typed)
    if opset < 17:
        raise ConfigError(f"--opset {opset}: needs >= 17 (LayerNormalization; decomposed LN overflows in fp16)")
    if model_config is not None:
        register_model_config(model_config)
    arch = normalize_backbone(backbone)
    spec = parse_pretrained(pretrained, arch, seed)
    opts = ExportOptions(arch, spec, out_dir or default_out_dir(arch, spec), precisions, opset, max_batch,
                         force, not no_validate, int8)
    steps = 3 + (2 * len(precisions) + int8) * (2 if opts.validate else 1)
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
        texts = _default_texts(result.out_dir, classes)
    if texts is not None:
        from .cli_texts import build_bank_with_progress

        build_bank_with_progress(result.out_dir, texts, "fp32", None, False, quiet=as_json)
    if engine == "tensorrt":
        from .cli_predict import build_engine_with_progress
        from .engines.trt import BuildOptions

        mb = min(32, max_batch)
        build_engine_with_progress(result.out_dir, BuildOptions("fp16", opt_batch=min(8, mb), max_batch=mb),
                                   engine_dir, None if texts is not None else "none", None, as_json)


def _default_texts(out_dir: Path, classes: str) -> Path:
    """Names + WordNet synonyms (when WordNet is installed) for a class list, saved in the artifact."""
    from .runtime.text_encoder import TextEncoder
    from .text_bank.texts import init_texts, save_texts
    from .text_bank.wordnet import WordNet, add_synonyms

    texts = init_texts(classes)
    try:
        wordnet = WordNet()
    except ConfigError as e:
        say("warning", f"no synonyms: {e}")
    else:
        texts, _ = add_synonyms(texts, wordnet, TextEncoder.load(out_dir))
    path = out_dir / f"texts-{Path(classes).stem}.json"
    save_texts(path, texts)
    return path


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
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8 (must have been exported)."),
    backend: str = typer.Option("cpu", help="cpu | cuda | tensorrt (ONNX Runtime providers)."),
    allow_fallback: bool = ALLOW_FALLBACK,
    out_file: Optional[Path] = typer.Option(None, "--out", help="Save embeddings as .npy (rows of files that loaded)."),
    batch_size: int = typer.Option(16, help="Images per encoder call."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON with every embedding."),
) -> None:
    """L2-normalised image embeddings computed with ONNX Runtime."""
    from .runtime.encoder import ImageEncoder, embed_files

    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"--precision {precision!r}: choose fp32, fp16 or int8")
    enc = ImageEncoder.load(artifacts, precision, backend, allow_fallback)
    with _progress() as bar:
        task = bar.add_task("embedding", total=len(images))
        res = embed_files(enc, [str(p) for p in images], batch_size, lambda n: bar.advance(task, n))
    for path, why in res.failures:
        say("error", why)
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


# Sub-command modules register themselves on `app` (they import it from here).
from . import cli_predict, cli_texts  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
