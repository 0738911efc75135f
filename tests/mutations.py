"""Deliberate faults in the GPU path, and which tests catch them: ``python -m tests.mutations [ID ...]``.

Each mutation replaces one exact snippet of coder's code in a COPY of the tree (the checkout is never
touched), runs the named test modules there (CPU stand-ins, no GPU) and records the tests that fail.
The result is printed as the Markdown table of ``tests/MUTATIONS.md``. Slow (minutes per mutation): a
tool for whoever changes the GPU path or the stand-ins, not part of the suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRT, ORT = "tests/test_engines_trt.py", "tests/test_engines_ort.py"
SYNC = "        _check(cudart.cudaStreamSynchronize(stream))  # the host arrays are complete only after this\n"
SHAPE = ("        if not self.context.set_input_shape(self.input_name, x.shape):\n"
         "            raise BackendError(f\"engine {self.path.name} rejects input shape {x.shape}\")\n")
X_DTYPE = "x = np.ascontiguousarray(x, dtype=trt.nptype(self.engine.get_tensor_dtype(self.input_name)))"
OUT_DTYPE = "outs = [np.empty(tuple(self.context.get_tensor_shape(n)), trt.nptype(self.engine.get_tensor_dtype(n)))"

# (id, fault, file, exact snippet, replacement, test modules)
MUTATIONS = [
    ("M01", "removed API: `execute_async_v2`", "coder/engines/trt.py", "self.context.execute_async_v3(int(stream))",
     "self.context.execute_async_v2([], int(stream))", [TRT]),
    ("M02", "removed API: `Builder.build_engine`", "coder/engines/trt.py",
     "plan = builder.build_serialized_network(network, config)", "plan = builder.build_engine(network, config)", [TRT]),
    ("M03", "wrong dtype: float16 host input for a float32 engine input", "coder/engines/trt.py", X_DTYPE,
     "x = np.ascontiguousarray(x, dtype=np.float16)", [TRT]),
    ("M04", "wrong dtype: input hard-wired to float32", "coder/engines/trt.py", X_DTYPE,
     "x = np.ascontiguousarray(x, dtype=np.float32)", [TRT]),
    ("M05", "wrong dtype: float16 host outputs", "coder/engines/trt.py", OUT_DTYPE,
     "outs = [np.empty(tuple(self.context.get_tensor_shape(n)), np.float16)", [TRT]),
    ("M06", "missing sync before reading outputs", "coder/engines/trt.py", SYNC, "", [TRT]),
    ("M07", "missing `set_input_shape`", "coder/engines/trt.py", SHAPE, "", [TRT]),
    ("M08", "leaked buffer: old buffer not freed when grown", "coder/engines/trt.py",
     "                del self._buffers[name]\n                _check(cudart.cudaFree(ptr))\n",
     "                del self._buffers[name]\n", [TRT]),
    ("M09", "leaked buffers: `close()` frees none", "coder/engines/trt.py",
     "        for ptr, _ in self._buffers.values():\n            errors.append(int(cudart.cudaFree(ptr)[0]))\n", "",
     [TRT]),
    ("M10", "`stream.getPtr()` passed as the stream handle", "coder/engines/trt.py",
     "self.context.execute_async_v3(int(stream))", "self.context.execute_async_v3(stream.getPtr())", [TRT]),
    ("M11", "`parse(bytes)` without the model path", "coder/engines/trt.py",
     "if not parser.parse_from_file(str(onnx_path)):", "if not parser.parse(Path(onnx_path).read_bytes()):", [TRT]),
    ("M12", "execution context not checked for None", "coder/engines/trt.py", "    if context is None:  # TensorRT",
     "    if False:  # TensorRT", [TRT]),
    ("M13", "timing-cache mismatch ignored", "coder/engines/trt.py",
     "    if not config.set_timing_cache(cache, ignore_mismatch=False):\n        raise",
     "    if not config.set_timing_cache(cache, ignore_mismatch=True):\n        raise", [TRT]),
    ("M14", "typo'd ORT option key", "coder/engines/ort.py", "opts.update({\"trt_engine_cache_enable\": \"True\"",
     "opts.update({\"trt_engine_cache_enabled\": \"True\"", [ORT]),
    ("M15", "ORT bool option written `yes`", "coder/engines/ort.py", "\"trt_timing_cache_enable\": \"True\"",
     "\"trt_timing_cache_enable\": \"yes\"", [ORT]),
    ("M16", "`trt_fp16_enable` turned on", "coder/engines/ort.py", "    opts: dict[str, str] = {}\n",
     "    opts: dict[str, str] = {\"trt_fp16_enable\": \"True\"}\n", [ORT]),
    ("M17", "ORT TensorRT cache folder not created", "coder/engines/ort.py",
     "        path.mkdir(parents=True, exist_ok=True)\n", "        pass\n", [ORT]),
    ("M18", "no user-cache fallback on a read-only artifact", "coder/engines/ort.py",
     "    tried = [Path(path).parent / \"engines\" / \"ort-trt\" / key, user_cache_dir() / \"ort-trt\" / key]",
     "    tried = [Path(path).parent / \"engines\" / \"ort-trt\" / key]", [ORT]),
    ("M19", "near-tie rule gone (exact labels only)", "coder/runtime/engine_build.py",
     "    return (np.abs(gap - tau) <= tol) | (s[:, 0] - s[:, 1] <= 2 * tol) | (fired & (r[:, 0] - r[:, 1] <= 2 * rtol))",
     "    return np.zeros(len(s), bool)", [TRT]),
    ("M20", "GPU check by `nvidia-smi` only (a Jetson is missed)", "coder/doctor.py",
     "    return shutil.which(\"nvidia-smi\") is not None or jetson_status(root) is not None",
     "    return shutil.which(\"nvidia-smi\") is not None", ["tests/test_doctor.py"]),
]


def run(mutation, python: str = sys.executable) -> list[str]:
    """The tests that fail with ``mutation`` applied to a copy of the tree."""
    _, _, path, old, new, tests = mutation
    with tempfile.TemporaryDirectory(prefix="coder-mutation-") as tmp:
        work = Path(tmp) / "tree"
        shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", ".ci", "__pycache__", "gpu-check-*"))
        target = work / path
        text = target.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{mutation[0]}: the snippet occurs {text.count(old)} times in {path}")
        target.write_text(text.replace(old, new))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(work)}
        res = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *tests], cwd=work,
                             env=env, capture_output=True, text=True)
    return sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", res.stdout, re.M)))


if __name__ == "__main__":
    wanted = set(sys.argv[1:])
    print("| id | fault | file | failing tests |\n|---|---|---|---|")
    for m in MUTATIONS:
        if not wanted or m[0] in wanted:
            failed = run(m)
            names = ", ".join(f"`{t.split('::')[-1]}`" for t in failed) or "**none: not caught**"
            print(f"| {m[0]} | {m[1]} | `{m[2]}` | {names} |", flush=True)
