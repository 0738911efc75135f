"""One result record per input, shared by every output format: ``coder classify --json``
lines, Parquet rows, Triton responses and ROS messages are all built from these dicts, so
a field means the same thing everywhere.

>>> prediction_record("a.jpg", pred)["name"]          # doctest: +SKIP
'tabby cat'
>>> error_record("bad.jpg", "not an image")["error"]  # doctest: +SKIP
'not an image'
"""

from __future__ import annotations

from dataclasses import asdict

from .classifier import Prediction


def prediction_record(file, pred: Prediction) -> dict:
    """``{"file", "label", "name", "top_k", "top_k_names", "stage1_scores", "gap", "reranked",
    "rerank_candidates", "rerank_scores", "backend", "timings_ms", "few_shot", "bank_sha256", "error": None}``.

    ``bank_sha256`` is the version of the bank that made the prediction (its content sha256, as
    ``coder bank versions`` lists it), so rows of runs with different classes can be told apart."""
    return {"file": str(file), **asdict(pred), "error": None}


def error_record(file, reason: str) -> dict:
    """The record of an input that produced no prediction: ``file`` and the one-line ``error``."""
    return {"file": str(file), "error": str(reason)}
