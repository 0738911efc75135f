"""Execution backends for the ONNX encoders.

Every backend is an object with ``.backend`` (the name of what actually runs),
``.providers``, ``.run(x) -> np.ndarray`` (first output) and ``.run_all(x)`` (all
outputs, for graphs with the CODER head fused: :mod:`coder.engines.head_graph`) and
``.close()`` (native TensorRT: frees its CUDA stream and device buffers).
ONNX Runtime: ``cpu``, ``cuda``, ``tensorrt`` (:mod:`.ort`); native TensorRT engines:
``tensorrt-native`` (:mod:`.trt`; built and validated by :mod:`coder.runtime.engine_build`,
which sits above this layer); OpenVINO's own runtime: ``openvino``, ``openvino:GPU``,
``openvino:NPU`` (:mod:`.openvino`; the precision hint is gated by :mod:`coder.runtime.openvino_precision`). This package imports nothing from ``coder.runtime``.
Backends are chosen by name and never fall back silently: a backend that cannot
load raises :class:`~coder.errors.BackendError`.
"""

from .ort import BACKENDS, OrtEncoder, load_ort, probe_providers

__all__ = ["BACKENDS", "OrtEncoder", "load_ort", "probe_providers"]
