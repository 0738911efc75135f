"""Shared command line of the benchmark scripts: ``--artifacts DIR``, ``--json``, plus script options."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def script(doc: str, run: Callable[..., dict], render: Callable[[dict], None], **options: Any) -> None:
    """Parse ``--artifacts``, ``--json`` and ``--<option> default`` flags, call ``run(artifacts, **options)``,
    then print JSON or ``render(result)``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--json", action="store_true")
    for name, default in options.items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = vars(ap.parse_args())
    as_json = args.pop("json")
    result = run(args.pop("artifacts"), **args)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        render(result)
