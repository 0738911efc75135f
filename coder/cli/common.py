"""What every ``coder`` sub-command module shares: the consoles, one-line messages, the
exit-code table, progress bars and JSON output. It imports no command module, so the
root app (:mod:`coder.cli`) and the sub-apps all import it from below.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from ..errors import (EXIT_BROKEN_PIPE, EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK,  # noqa: F401 (re-exported)
                      EXIT_TERMINATED, ConfigError, exit_code_for, one_line)

# emoji=False: a class named "frog" in "att:frog:" must not become an emoji.
out = Console(emoji=False, highlight=False)
err = Console(stderr=True, emoji=False, highlight=False)

ALLOW_FALLBACK = typer.Option(False, "--allow-fallback",
                              help="If ONNX Runtime falls back to another provider, warn and go on (else exit 6).")


def say(level: str, msg: str) -> None:
    """One line on stderr, ``error: ...`` / ``warning: ...``; ``msg`` is data, never markup."""
    from rich.markup import escape

    style = "yellow" if level == "warning" else "red"
    err.print(f"[{style}]{level}[/{style}]: " + escape(str(msg)), soft_wrap=True)


def info(msg: str) -> None:
    from rich.markup import escape

    out.print(escape(str(msg)), soft_wrap=True)


def progress_bar(unit: str | None = None):
    """The one Rich progress bar, on stderr (stdout stays clean for ``--json``).

    With ``unit`` (``"img"``, ``"frames"``) it also shows the rate (``12.3 img/s``) and the time left.
    Task descriptions are plain text, never markup (``export ViT-B-16 [x]`` shows as given): do not escape them.
    Example: ``with progress_bar("img") as bar: task = bar.add_task("labeling", total=n)``.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.1f} {unit}/s" if task.speed else f"- {unit}/s")

    rate = [Rate(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()] if unit else [TimeElapsedColumn()]
    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    *rate, console=err, transient=False)


def escape_help(command) -> None:
    """Escape Rich markup in every help text of a click command tree, in place.

    Typer renders help through Rich markup, so "needs the [trt] extra" would print as "needs the  extra"
    and "{class name: [text, ...]}" as "{class name: }". Help strings here are literal text.
    """
    from rich.markup import escape

    for attr in ("help", "short_help", "epilog"):
        if isinstance(getattr(command, attr, None), str):
            setattr(command, attr, escape(getattr(command, attr)))
    for param in getattr(command, "params", []):
        if isinstance(getattr(param, "help", None), str):
            param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        escape_help(sub)


def some(names: list[str], n: int = 10) -> str:
    return ", ".join(names[:n]) + (" …" if len(names) > n else "")


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


# The options every command that loads a Classifier shares (classify, eval, bag), and the one place they become
# a ClassifierOptions.
BACKEND = typer.Option("auto", help="auto | cpu | cuda | tensorrt | tensorrt-native | openvino | "
                                    "openvino:GPU | openvino:NPU (auto: the CPU engine measured fastest here).")
PRECISION = typer.Option("fp32", help="Image encoder: fp32 | fp16 | int8 (as exported).")
ENGINE_DIR = typer.Option(None, help="Native TensorRT engines (default $CODER_ENGINE_DIR, else <artifacts>/engines).")
REBUILD_STALE = typer.Option(False, "--rebuild-stale",
                             help="Rebuild (and validate) a stale native TensorRT engine instead of exiting 10.")
ADAPTER = typer.Option(None, help="Few-shot adapter from `coder fit`.")
FUSED_HEAD = typer.Option(True, "--fused-head/--no-fused-head",
                          help="Run the CODER head as an ONNX graph after the encoder (else numpy).")


def classifier_options(artifacts, bank, backend: str, precision: str, tau, adapter, allow_fallback: bool,
                       fused_head: bool, engine_dir, rebuild_stale: bool, classes, classes_file):
    """The :class:`~coder.runtime.classifier.ClassifierOptions` a command's options give (default artifact:
    :func:`~coder.manifest.default_artifact_dir`), so no command can drop one of them."""
    from ..manifest import default_artifact_dir
    from ..runtime.classifier import ClassifierOptions, EngineOptions

    return ClassifierOptions(str(artifacts or default_artifact_dir()), bank, backend, precision, tau,
                             adapter=str(adapter) if adapter else None, allow_fallback=allow_fallback,
                             fused_head=fused_head,
                             engines=EngineOptions(str(engine_dir) if engine_dir else None, rebuild_stale),
                             classes=class_list(classes, classes_file))


CLASSES = typer.Option(None, "--classes", help="Comma list of class names: use (and cache) the names + WordNet "
                                               "synonyms bank of these classes instead of --bank.")
CLASSES_FILE = typer.Option(None, "--classes-file", help="As --classes, one class name per line.")


def class_list(classes: "str | None", classes_file: "Path | None") -> "tuple[str, ...] | None":
    """``--classes "cat,dog"`` / ``--classes-file FILE`` -> names (None when neither); ConfigError if both,
    or if a name is empty or repeated."""
    from ..text_bank.live import check_change

    if classes is None and classes_file is None:
        return None
    if classes is not None and classes_file is not None:
        raise ConfigError("--classes and --classes-file: choose one")
    if classes is not None:
        names = [n.strip() for n in classes.split(",")]
    else:
        try:
            text = Path(classes_file).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--classes-file {classes_file}: cannot read it ({e})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise ConfigError(f"--classes-file {classes_file}: no class names in it")
    check_change([], names, [])
    return tuple(names)
