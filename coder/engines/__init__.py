"""Execution backends for the ONNX encoders.

Every backend is an object with ``.backend`` (the name of what actually runs),
``.providers`` and ``.run(x) -> np.ndarray``. Backends are chosen by name and
never fall back silently: a backend that cannot load raises
:class:`~coder.errors.BackendError`.
"""

from .ort import BACKENDS, OrtEncoder, load_ort, probe_providers

__all__ = ["BACKENDS", "OrtEncoder", "load_ort", "probe_providers"]
