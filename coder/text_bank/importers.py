"""Import LLM descriptions users already have, as ``att`` or ``ana`` texts.

Formats (both map a class name to a list of strings):

* ``vcd`` — the descriptor JSON published with "Visual Classification via
  Description from Large Language Models" (``{"tench": ["a long body", ...]}``);
* ``cupl`` — CuPL's prompt files (``{"tench": ["A tench is a ...", ...]}``).

Class names match tolerantly (case, ``_`` and runs of spaces ignored).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError, TextsError
from .texts import Texts, to_json, validate

FORMATS = ("vcd", "cupl")


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _clean(text: str, fmt: str) -> str:
    """The stored form of one description: stripped; vcd also loses trailing full stops."""
    return text.strip().rstrip(".").strip() if fmt == "vcd" else text.strip()


def read_descriptions(path: str | os.PathLike, fmt: str, dropped: list[str] | None = None) -> dict[str, list[str]]:
    """``{class name: [description, ...]}`` of a vcd/cupl file, each cleaned as it will be stored.

    A description that is empty once cleaned ("", "  ", "..." in vcd) carries nothing: it is dropped and
    reported in ``dropped`` as ``"class[index]: '...'"`` so nothing unloadable is ever saved.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TextsError(f"{path}: cannot read {fmt} JSON ({e})") from None
    if not isinstance(data, dict):
        raise TextsError(f"{path}: expected an object mapping class names to lists of strings")
    out = {}
    for name, texts in data.items():
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise TextsError(f"{path}: {name!r}: expected a list of strings")
        out[name] = [_clean(t, fmt) for t in texts if _clean(t, fmt)]
        if dropped is not None:
            dropped += [f"{name}[{i}]: {t!r}" for i, t in enumerate(texts) if not _clean(t, fmt)]
    return out


def import_descriptions(texts: Texts, descriptions: dict[str, list[str]], kind: str) -> tuple[Texts, list[str], list[str]]:
    """Add descriptions to ``kind`` (att|ana). Returns (texts, bank classes unmatched, file classes unmatched)."""
    if kind not in ("att", "ana"):
        raise ConfigError(f"--kind {kind!r}: choose att or ana")
    by_key = {_key(k): v for k, v in descriptions.items()}
    classes, missing = [], []
    used = set()
    for c in texts.classes:
        found = by_key.get(_key(c.name))
        if found is None:
            missing.append(c.name)
            classes.append(c)
            continue
        used.add(_key(c.name))
        classes.append(replace(c, **{kind: tuple(dict.fromkeys([*getattr(c, kind), *found]))}))
    extra = [k for k in descriptions if _key(k) not in used]
    new = texts.with_classes(classes)
    validate(to_json(new))  # refuse here rather than save a file no later command can load
    return new, missing, extra
