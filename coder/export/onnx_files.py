"""Writing ONNX files atomically, inline or in the external-data format.

A protobuf message cannot exceed 2 GiB, so models over that (ViT-bigG, ViT-H,
SO400M) keep their weights in ``<name>.onnx.data`` next to ``<name>.onnx``
(ONNX external data: one file, all tensors). Both are staged in a temporary
directory of the artifact and renamed into place, data first: the ``.onnx``
file only exists once its data does. The manifest hashes both
(:func:`coder.manifest.file_entry` + ``external_data``), and ONNX Runtime finds the
data file next to the model when it opens the path.

>>> with staged(out / "image_encoder.fp32.onnx") as tmp:      # doctest: +SKIP
...     save_model(proto, tmp, external=needs_external(proto))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Stay well below protobuf's 2 GiB limit: graph structure and attributes add to the weights.
EXTERNAL_THRESHOLD_BYTES = 1_800_000_000


def data_name(name: str) -> str:
    """``data_name("image_encoder.fp32.onnx") == "image_encoder.fp32.onnx.data"``."""
    return f"{name}.data"


def weight_bytes(model) -> int:
    """Bytes of the initializers of a loaded ``onnx.ModelProto`` (raw and typed fields)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) or (4 * (len(t.float_data) + len(t.int32_data)) + 8 * len(t.int64_data))
    return total


def needs_external(model, force: bool = False) -> bool:
    return force or weight_bytes(model) > EXTERNAL_THRESHOLD_BYTES


def save_model(model, path: Path, external: bool) -> None:
    """Save a ModelProto to ``path``; with ``external`` every tensor >= 1 KiB goes to ``path.name + '.data'``."""
    import onnx

    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name(path.name), size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


@contextmanager
def staged(final: Path) -> Iterator[Path]:
    """Yield a path with ``final``'s file name inside a temporary directory next to it.

    On success the file (and its ``.data`` companion, if written) replace ``final``;
    a stale companion from an earlier inline export is removed. On failure nothing
    under ``final``'s names changes.
    """
    final = Path(final)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        tmp = tmpdir / final.name
        yield tmp
        data, final_data = tmpdir / data_name(final.name), final.parent / data_name(final.name)
        if data.exists():
            os.chmod(data, 0o644)
            os.replace(data, final_data)
        else:
            final_data.unlink(missing_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def companions(path: Path) -> list[str]:
    """Names of the external-data files an ONNX file on disk refers to (empty when inline)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            names.update(e.value for e in t.external_data if e.key == "location")
    return sorted(names)
