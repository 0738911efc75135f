"""``coder doctor``: what this machine can run, found by trying, not by listing."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import shutil
import subprocess
from typing import Any

from . import __version__

_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "pillow", "onnx", "torch", "open_clip_torch", "tensorrt")


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def gpu_status() -> str:
    """Name of the first NVIDIA GPU via nvidia-smi, or why there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "none (no nvidia-smi)" if not os.path.exists("/proc/driver/nvidia") else "driver present, no nvidia-smi"
    try:
        res = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else "none"


def tensorrt_status() -> str:
    if importlib.util.find_spec("tensorrt") is None:
        return "not installed (pip install 'coder[trt]')"
    try:
        import tensorrt as trt

        return f"{trt.__version__} importable"
    except Exception as e:  # a broken CUDA install fails here with many error types
        return f"import failed: {str(e).splitlines()[0][:160]}"


def collect() -> dict[str, Any]:
    from .engines.ort import probe_providers

    versions = {"python": platform.python_version(), "coder": __version__}
    versions.update({p: _version(p) for p in _PACKAGES})
    return {"versions": versions, "backends": {f"ort-{k}": v for k, v in probe_providers().items()},
            "gpu": gpu_status(), "tensorrt": tensorrt_status(), "machine": platform.machine()}
