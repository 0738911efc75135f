"""Expanding command-line inputs (files, directories, globs) into image paths, lazily."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}


def iter_image_paths(items: Iterable[str | os.PathLike],
                     on_empty: Callable[[str], None] = lambda message: None) -> Iterator[Path]:
    """Files as given (any suffix: a bad one is reported later), directories recursively
    (image suffixes only, sorted), and glob patterns that the shell did not expand.

    A directory or glob that yields no image calls ``on_empty("DIR: no image files (...)")``.
    """
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = (q for q in sorted(p.rglob("*")) if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            what = f"{item}: directory holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        elif not p.exists() and any(ch in str(item) for ch in "*?["):
            found = (Path(m) for m in sorted(glob.glob(str(item), recursive=True)) if Path(m).is_file())
            what = f"{item}: pattern matches no file"
        else:
            yield p
            continue
        empty = True
        for q in found:
            empty = False
            yield q
        if empty:
            on_empty(what)


def batched(it: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for x in it:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
