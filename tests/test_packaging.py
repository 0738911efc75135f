"""Each documented install line resolves to exactly ONE ONNX Runtime (both wheels own `onnxruntime`)."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORTS = {"onnxruntime", "onnxruntime-gpu"}
# The install lines the README documents, and the ONNX Runtime each must bring.
LINES = {("cpu",): "onnxruntime", ("gpu",): "onnxruntime-gpu", ("cpu", "export"): "onnxruntime",
         ("gpu", "export"): "onnxruntime-gpu", ("gpu", "trt"): "onnxruntime-gpu",
         ("cpu", "export", "dev"): "onnxruntime", (): None}  # (): Jetson, NVIDIA's wheel on top


def _requirements() -> list[str]:
    """``Requires-Dist`` lines: from the checkout's pyproject.toml where readable, else the installed metadata."""
    if sys.version_info >= (3, 11) and (ROOT / "pyproject.toml").is_file():
        import tomllib

        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        reqs = list(project["dependencies"])
        for extra, items in project["optional-dependencies"].items():
            reqs += [f'{r}; extra == "{extra}"' for r in items]
        return reqs
    try:
        return md.requires("coder") or []
    except md.PackageNotFoundError:
        pytest.skip("coder is not installed and this Python has no tomllib")


def _name(req: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower().replace("_", "-")


def resolved(reqs: list[str], extras: tuple[str, ...]) -> set[str]:
    """Distribution names a plain ``pip install coder[extras]`` asks for directly."""
    out = set()
    for r in reqs:
        m = re.search(r"""extra\s*==\s*["']([^"']+)["']""", r)
        if m is None or m.group(1) in extras:
            out.add(_name(r))
    return out


def test_every_documented_line_brings_exactly_one_onnx_runtime():
    reqs = _requirements()
    for extras, want in LINES.items():
        got = resolved(reqs, extras) & ORTS
        assert got == ({want} if want else set()), (extras, got)


def test_no_other_extra_brings_an_onnx_runtime():
    reqs = _requirements()
    extras = {m.group(1) for r in reqs if (m := re.search(r"""extra\s*==\s*["']([^"']+)["']""", r))}
    for extra in extras - {"cpu", "gpu"}:
        direct = resolved(reqs, (extra,)) - resolved(reqs, ())
        assert not direct & ORTS, extra
        for dist in direct:  # one level down, for the dependencies installed here
            try:
                below = {_name(r) for r in md.requires(dist) or [] if "extra ==" not in r}
            except md.PackageNotFoundError:
                continue
            assert not below & ORTS, f"[{extra}] -> {dist} pulls in {below & ORTS}"


def test_this_environment_has_one_onnx_runtime():
    have = set()
    for dist in ORTS:
        try:
            md.version(dist)
            have.add(dist)
        except md.PackageNotFoundError:
            pass
    assert len(have) <= 1, f"both {sorted(have)} installed: they overwrite each other's `onnxruntime` module"


def test_missing_onnx_runtime_is_a_clear_backend_error(monkeypatch):
    from coder.engines import ort as ort_mod
    from coder.errors import BackendError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(BackendError, match=r"pip install 'coder\[cpu\]'"):
        ort_mod.import_ort()
    assert all("coder[cpu]" in v for v in ort_mod.probe_providers().values())


def _python310():
    import glob
    import shutil
    import subprocess

    for c in [shutil.which("python3.10"), *sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.10.*/bin/python3.10")))]:
        if c and subprocess.run([c, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"]).returncode == 0:
            return c
    return None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the oracle is tomllib")
def test_ci_lowest_versions_run_on_python_310():
    """.ci/run reads the lower bounds where python3 is 3.10 (Ubuntu 22.04, JetPack 6): no tomllib there."""
    import subprocess
    import tomllib

    py = _python310()
    if py is None:
        pytest.skip("no Python 3.10 here")
    res = subprocess.run([py, str(ROOT / ".ci" / "lowest.py"), str(ROOT / "pyproject.toml")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = [re.sub(r"\s*>=\s*", "==", r.split(";")[0].strip())
            for r in project["dependencies"] + project["optional-dependencies"]["cpu"]]
    assert res.stdout.split() == want


def test_trt_extra_pins_cuda_12_bindings_and_tensorrt_10():
    """cuda-python 13 needs a CUDA 13 driver (JetPack 6 is CUDA 12.6); TensorRT 11 is an untested major."""
    from packaging.requirements import Requirement

    trt = {Requirement(r.split(";")[0]).name: Requirement(r.split(";")[0]).specifier
           for r in _requirements() if 'extra == "trt"' in r}
    assert set(trt) == {"tensorrt", "cuda-python"}
    assert "12.6" in trt["cuda-python"] and "12.5" not in trt["cuda-python"] and "13.0" not in trt["cuda-python"]
    assert "10.3" in trt["tensorrt"] and "11.0" not in trt["tensorrt"]
    readme = (ROOT / "README.md").read_text()
    assert "pip install cuda-python " not in readme and '"cuda-python>=12.6,<13"' in readme
    assert '"cuda-python>=13,<14"' in readme  # how to choose the CUDA 13 pair
