"""``coder export --int8 --eval-set DIR``: top-1 of the CODER classifier, fp32 vs int8, on labelled images.

Both precisions run on ONNX Runtime's CPU with the artifact's bank (its classes must name the
ImageFolder's folders); the label is the CODER classifier's final one (stage 1 + the gated
rerank, the bank's tau and k). The record is added to ``manifest["int8"]["eval_set"]``.

>>> record_eval_set(Path("coder-artifacts/ViT-B-32__openai"), Path("val/"))   # doctest: +SKIP
{'dir': '/data/val', 'images': 500, 'classes': 10, 'top1_fp32': 0.912, 'top1_int8': 0.908, ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError


def coder_top1(artifact_dir: Path, dataset_dir: Path, bank: str | None = None,
               on_batch: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Top-1 accuracy of the CODER classifier with the fp32 and the int8 image encoder on ``dataset_dir``."""
    from ..runtime.classifier import Classifier
    from ..runtime.datasets import image_folder, match_classes
    from ..runtime.evaluate import embed_dataset
    from ..runtime.head import rerank, stage1_scores

    ds = image_folder(dataset_dir)
    result: dict[str, Any] = {"dir": str(Path(dataset_dir).resolve()), "backend": "cpu",
                              "classifier": "coder (stage 1 + rerank)"}
    for precision in ("fp32", "int8"):
        clf = Classifier.load(artifact_dir, bank, "cpu", precision, fused_head=False)
        mapping, missing = match_classes(ds.classes, clf.class_names)
        f, y, failures = embed_dataset(clf, ds, mapping, on_batch=on_batch)
        if len(y) == 0:
            raise InputError(f"--eval-set {dataset_dir}: none of its classes is in the bank "
                             f"({', '.join(missing[:5])}); export with --classes naming its folders")
        labels = rerank(f, stage1_scores(f, clf.bank), clf.bank, clf.tau, clf.k).labels
        result.update({"images": int(len(y)), "classes": len(ds.classes) - len(missing), "unreadable": failures,
                       f"top1_{precision}": float(np.mean(labels == y))})
    return result


def record_eval_set(artifact_dir: Path, dataset_dir: Path, bank: str | None = None,
                    on_batch: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Measure :func:`coder_top1` and store it as ``manifest["int8"]["eval_set"]`` (atomic rewrite)."""
    from ..manifest import load_artifact, write_manifest

    record = coder_top1(artifact_dir, dataset_dir, bank, on_batch)
    art = load_artifact(artifact_dir)
    manifest = dict(art.manifest)
    manifest["int8"] = {**manifest["int8"], "eval_set": record}
    write_manifest(art.root, manifest)
    return record
