"""``coder`` command line: the root app. One module per command group (``artifacts``, ``texts``,
``predict``, ``batch``, ``bag``, ``serve``, ``pack``) defines its own Typer app; this module imports
and mounts them, and they import shared helpers from :mod:`coder.cli.common`, never from here. Heavy modules
are imported inside commands so that ``coder --help`` and ``coder --version`` stay fast.

Exit codes (one table, :data:`coder.cli.common.EXIT_CODES`, also in the README):
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as _click_exceptions

from .. import __version__
from . import artifacts as cli_artifacts, bag as cli_bag, pack as cli_pack, predict as cli_predict, serve as cli_serve, texts as cli_texts
from ..store import Interrupted, stop_on_signals
from .common import (EXIT_BROKEN_PIPE, EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, err,
                     escape_help, exit_code_for, say)
from ..errors import CoderError

__doc__ += "\n".join(f"    {code}  {what}" for _, code, what in EXIT_CODES) + \
    f"\n    {EXIT_BROKEN_PIPE}  the reader of stdout closed the pipe (e.g. `| head`): output stopped quietly" + \
    f"\n    {EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGINT): finished work is kept" + \
    f"\n    {EXIT_TERMINATED}  terminated (SIGTERM): finished work is kept\n    {EXIT_INTERNAL}  internal error\n"
__all__ = ["EXIT_CODES", "app", "main"]

# Usage errors, --help exits and aborts are click's own control flow, not crashes.
_CLICK_CONTROL_FLOW = (_click_exceptions.ClickException, typer.Exit, typer.Abort)


class _CoderGroup(TyperGroup):
    """Runs every command; the single place a CoderError becomes one line + exit code."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.rich_markup_mode == "rich":  # help texts are literal: "[trt]" must not vanish as markup
            escape_help(self)

    def invoke(self, ctx):
        import warnings

        # A backend fallback the user allowed (--allow-fallback) is reported as one loud line.
        shown = warnings.showwarning
        warnings.showwarning = lambda msg, cat, *a, **k: say("warning", str(msg)) if issubclass(cat, RuntimeWarning) \
            else shown(msg, cat, *a, **k)
        try:
            with stop_on_signals():
                return super().invoke(ctx)
        except CoderError as e:
            say("error", str(e))
            raise typer.Exit(exit_code_for(e)) from None
        except KeyboardInterrupt as e:  # SIGINT or SIGTERM (store.signals): what was finished is committed
            code = e.exit_code if isinstance(e, Interrupted) else EXIT_INTERRUPTED
            name = "terminated" if code == EXIT_TERMINATED else "interrupted"
            err.print(f"[red]{name}[/red]: finished files are kept; re-run to resume")
            raise typer.Exit(code) from None
        except BrokenPipeError:
            # The reader went away (`coder ... --json | head`): stop quietly, like a Unix tool
            # killed by SIGPIPE. stdout is pointed at /dev/null so the exit flush cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except _CLICK_CONTROL_FLOW:
            raise
        except Exception:
            traceback.print_exc()
            err.print(f"[red]internal error[/red] (exit {EXIT_INTERNAL}): please report the traceback above")
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(cls=_CoderGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="CODER CLIP classification: export, embed, classify on CPU/GPU.")


def _version(value: bool) -> None:
    if value:
        print(f"coder {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """CODER CLIP classification: export, embed, classify on CPU/GPU."""


# Top-level commands (export, embed, doctor, classify, eval, fit, bench, build-engine) and groups.
app.add_typer(cli_artifacts.app)
app.add_typer(cli_predict.app)
app.add_typer(cli_texts.texts_app, name="texts")
app.add_typer(cli_texts.bank_app, name="bank")
app.add_typer(cli_bag.app)
app.add_typer(cli_pack.app)
app.add_typer(cli_serve.app)


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point; exit codes come from :class:`_CoderGroup`."""
    try:
        app(args=argv, prog_name="coder")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
