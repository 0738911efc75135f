"""Inputs and outputs keyed by their resolved absolute path, so one file spelled three ways is one key.

Example: ``resolved("imgs/../imgs/a.jpg") == resolved("/abs/imgs/a.jpg")`` when cwd is ``/abs``.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolved(path: str | os.PathLike) -> Path:
    """Absolute path with ``..``, ``.`` and symlinks resolved (``os.path.realpath``); need not exist."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` is ``root`` or inside it, after resolving both."""
    p, r = resolved(path), resolved(root)
    return p == r or r in p.parents


def same_or_nested(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` are the same path or one contains the other (resolved)."""
    return is_within(a, b) or is_within(b, a)
