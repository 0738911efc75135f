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
from .errors import one_line

_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "pillow", "onnx", "torch", "open_clip_torch", "tensorrt",
             "openvino")


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def gpu_status() -> str:
    """Name of the first NVIDIA GPU via nvidia-smi, a Jetson's integrated GPU, or why there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        jetson = jetson_status()
        if jetson is not None:
            return f"integrated GPU of {jetson['model']} (Jetson, no nvidia-smi needed)"
        return "none (no nvidia-smi)" if not os.path.exists("/proc/driver/nvidia") else "driver present, no nvidia-smi"
    try:
        res = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else "none"


def nvidia_gpu_present(root: str | None = None) -> bool:
    """True on a machine with an NVIDIA GPU: ``nvidia-smi`` on PATH, or a Jetson (which has none).

    The one test for "is there a CUDA GPU here" (``coder doctor``, the ``gpu``-marked tests' gates).
    ``root`` as in :func:`jetson_status`.
    """
    return shutil.which("nvidia-smi") is not None or jetson_status(root) is not None


def tensorrt_status() -> str:
    """Version and WHERE the bindings were found: JetPack's system packages or a pip wheel."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is None:
        return "not installed (pip install 'coder[trt]'; on a Jetson: JetPack's python3-libnvinfer, README \"Jetson\")"
    where = os.path.dirname(spec.origin or "") or "?"
    source = "system site-packages (JetPack/apt)" if where.startswith("/usr/lib/python3") else "pip wheel"
    try:
        import tensorrt as trt

        return f"{trt.__version__} importable from {where} ({source})"
    except Exception as e:  # a broken CUDA install fails here with many error types
        return f"import from {where} failed: {one_line(e, 160)}"


# L4T (Jetson Linux) release -> JetPack release, from NVIDIA's JetPack archive.
JETPACK = {"36.4": "6.1/6.2", "36.3": "6.0", "36.2": "6.0 DP", "35.6": "5.1.4", "35.5": "5.1.3", "35.4": "5.1.2",
           "35.3": "5.1.1", "35.2": "5.1", "35.1": "5.0.2", "32.7": "4.6.x"}


def jetson_status(root: str | None = None) -> dict[str, str] | None:
    """``{"model", "l4t", "jetpack"}`` on an NVIDIA Jetson, else None.

    A Jetson has ``<root>/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.0, ...`` -> L4T 36.4.0),
    or a ``<root>/proc/device-tree/model`` naming a Jetson/Tegra board (``NVIDIA Jetson Orin Nano ...``)
    or a device tree ``compatible`` with ``nvidia,tegra...``; ``root`` (default ``$CODER_SYSROOT`` or
    ``/``) lets tests use fake files.
    """
    import re
    from pathlib import Path

    base = Path(root or os.environ.get("CODER_SYSROOT", "/"))
    release, model = base / "etc" / "nv_tegra_release", base / "proc" / "device-tree" / "model"
    compatible = base / "proc" / "device-tree" / "compatible"
    tegra = compatible.is_file() and b"nvidia,tegra" in compatible.read_bytes().lower()
    if not release.is_file() and not model.is_file():
        return None
    out = {"model": "unknown", "l4t": "unknown", "jetpack": "unknown"}
    if model.is_file():
        out["model"] = model.read_bytes().rstrip(b"\0\n").decode("utf-8", "replace") or "unknown"
        name = out["model"].lower()
        if not release.is_file() and not tegra and "jetson" not in name and "tegra" not in name:
            return None  # a device tree of another board (Raspberry Pi, an NVIDIA DGX/IGX, ...)
    if release.is_file():
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", release.read_text(errors="replace"))
        if m:
            out["l4t"] = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
            out["jetpack"] = JETPACK.get(f"{m.group(1)}.{m.group(2)}", "unknown (newer than this table)")
    return out


def auto_cpu_status(artifacts) -> list[dict]:
    """The CPU engine ``--backend auto`` measured for ``artifacts`` (per precision, this machine or another)."""
    from .manifest import load_artifact
    from .runtime.cpu_choice import cached_choices

    return cached_choices(load_artifact(artifacts))


def collect(artifacts=None) -> dict[str, Any]:
    """Versions, backends that load (ONNX Runtime providers, OpenVINO devices), GPU, TensorRT, Jetson;
    with ``artifacts``, also ``auto_cpu``: the cached ``--backend auto`` CPU choices of that artifact."""
    from .engines.openvino import installed, probe_openvino
    from .engines.ort import probe_providers

    versions = {"python": platform.python_version(), "coder": __version__}
    versions.update({p: _version(p) for p in _PACKAGES})
    backends = {f"ort-{k}": v for k, v in probe_providers().items()}
    backends.update(probe_openvino() if installed() else {"openvino": "not installed (pip install 'coder[openvino]')"})
    report = {"versions": versions, "backends": backends, "gpu": gpu_status(), "tensorrt": tensorrt_status(),
              "machine": platform.machine(), "jetson": jetson_status()}
    if artifacts is not None:
        report["auto_cpu"] = auto_cpu_status(artifacts)
    return report
