"""The ``stats:`` lines of ``coder serve``, read from the server's own Prometheus metrics (``--metrics-port``).

Triton counts requests, images (inferences) and batches (executions) per model (``nv_inference_*``); the
default layout's model adds its bank cache of per-request ``classes`` lists as custom metrics
(:class:`~coder.deploy.triton_model.CacheMetrics`: ``coder_bank_cache_*``, one series per instance,
summed here). Reading them over HTTP is what any monitoring system does too, so the numbers ``coder serve``
prints are the ones a Prometheus scrape sees.

>>> s = parse_metrics(urlopen("http://127.0.0.1:8002/metrics").read().decode())   # doctest: +SKIP
>>> stats_line(s)
'stats: 12 requests (1 failed), 14 images in 9 batches; class-list banks: 2 lists, 0.118 MB of 256 MB, 5 hits, 2 misses'
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

MODEL = "coder"
# Prometheus metric -> key of the stats dict (summed over the label sets of model ``coder``)
TRITON = {"nv_inference_request_success": "requests", "nv_inference_request_failure": "failed",
          "nv_inference_count": "images", "nv_inference_exec_count": "batches"}
CACHE = {"coder_bank_cache_entries": "class_lists", "coder_bank_cache_bytes": "bank_cache_bytes",
         "coder_bank_cache_limit_bytes": "limit_bytes", "coder_bank_cache_hits_total": "hits",
         "coder_bank_cache_misses_total": "misses"}
_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _series(text: str, model: str):
    """(metric name, labels, value text) of every Prometheus sample line of ``model``."""
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        if labels.get("model") == model:
            yield m.group(1), labels, m.group(4)


def parse_metrics(text: str, model: str = MODEL) -> dict[str, float]:
    """Prometheus text exposition -> ``{"requests": 12.0, "failed": 1.0, ..., "class_lists": 2.0, ...}``:
    the series of ``model`` summed over versions and instances; a key is absent when no series had it
    (``class_lists`` etc. are absent for an ensemble, which caches no class lists)."""
    out: dict[str, float] = {}
    for name, _, text_value in _series(text, model):
        key = TRITON.get(name) or CACHE.get(name)
        if key is None:
            continue
        try:
            value = float(text_value)
        except ValueError:
            continue
        out[key] = out.get(key, 0.0) + value
    return out


def parse_backends(text: str, model: str = MODEL) -> dict[str, str]:
    """``{instance: backend}`` from the ``coder_backend_info`` series of ``model`` (the backend each instance
    really runs), e.g. ``{"coder_0_0": "openvino-f32"}``; empty for a model that publishes none."""
    return {labels.get("instance", ""): labels["backend"] for name, labels, _ in _series(text, model)
            if name == "coder_backend_info" and "backend" in labels}


def _get(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def read_stats(url: str, timeout: float = 2.0) -> dict[str, float] | None:
    """:func:`parse_metrics` of ``url`` (``http://host:port/metrics``); None when it cannot be read."""
    text = _get(url, timeout)
    return None if text is None else parse_metrics(text)


def read_backends(url: str, timeout: float = 2.0) -> dict[str, str]:
    """:func:`parse_backends` of ``url``; empty when it cannot be read."""
    text = _get(url, timeout)
    return {} if text is None else parse_backends(text)


def backends_line(found: dict[str, str]) -> str | None:
    """``"backend: openvino-f32 (2 instances)"``; None when no instance reported one."""
    if not found:
        return None
    names = sorted(set(found.values()))
    return f"backend: {', '.join(names)} ({_n(len(found), 'instance')})"


def _n(value: float, one: str, many: str | None = None) -> str:
    n = int(value)
    return f"{n} {one if n == 1 else (many or one + 's')}"


def stats_line(s: dict[str, float]) -> str:
    """One line for the terminal: requests, images and batches, then the bank cache where the model has one."""
    line = f"stats: {_n(s.get('requests', 0), 'request')}"
    if s.get("failed"):
        line += f" ({int(s['failed'])} failed)"
    line += f", {_n(s.get('images', 0), 'image')} in {_n(s.get('batches', 0), 'batch', 'batches')}"
    if "class_lists" in s:
        mb, limit = s.get("bank_cache_bytes", 0.0) / 2**20, s.get("limit_bytes", 0.0) / 2**20
        line += (f"; class-list banks: {_n(s['class_lists'], 'list')}, {mb:.3f} MB of {limit:g} MB, "
                 f"{_n(s.get('hits', 0), 'hit')}, {_n(s.get('misses', 0), 'miss', 'misses')}")
    return line
