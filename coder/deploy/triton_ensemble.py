"""The ensemble layout of ``coder triton-repo --ensemble HEAD``: three models behind model ``coder``.

::

    coder (ensemble)   image BYTES [1] -> label, name, top_k, stage1_scores, gap, reranked
      coder_preprocess  Python: decode + open_clip transform   image -> pixel_values FP32 [3,H,W]
      coder_head        the fused encoder + CODER head graph    pixel_values -> stage1 [C], topk_ids
                        (coder.runtime.fused) on HEAD:          INT64 [K], gap, rerank [K], embedding
                        onnxruntime (Triton's ONNX Runtime backend, model.onnx), tensorrt (Triton's
                        TensorRT backend, the plan of `coder build-engine`), or python (ONNX Runtime
                        inside a Python model: runs on the Python-only server nvidia-pytriton bundles)
      coder_gate        Python: the rerank gate and the top-k shown (tau stays out of the graph)

Every step batches dynamically; a request whose image does not decode fails in the first
step, alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..store import atomic_write_bytes
from .triton_model import _Base, request_classes, request_images, run_batched
from .triton_repo import (IMAGE_INPUT, MODEL, _config, _tensor, _write_python_model, client_outputs)

PRE, HEAD, GATE = "coder_preprocess", "coder_head", "coder_gate"
_PY = 'backend: "python"'


def _head_io(size, dim: int, n_classes: int, k: int) -> tuple[list[str], list[str]]:
    pixels = [_tensor("pixel_values", "TYPE_FP32", [3, *size])]
    outs = [_tensor("embedding", "TYPE_FP32", [dim]), _tensor("stage1", "TYPE_FP32", [n_classes]),
            _tensor("topk_ids", "TYPE_INT64", [k]), _tensor("gap", "TYPE_FP32", [1], reshape=[]),
            _tensor("rerank", "TYPE_FP32", [k])]
    return pixels, outs


def _native_head(root, art, bank, opts, k: int, inputs, outputs) -> None:
    """coder_head on Triton's ONNX Runtime or TensorRT backend (the model file copied in)."""
    from ..runtime.fused import ensure_fused_onnx, fused_consumer

    gpu = opts.backend in ("cuda", "tensorrt")
    kind = "KIND_GPU" if gpu or opts.ensemble == "tensorrt" else "KIND_CPU"
    target = root / HEAD / "1"
    target.mkdir(parents=True, exist_ok=True)
    if opts.ensemble == "onnxruntime":
        fused = ensure_fused_onnx(art, bank, opts.precision, k, fused_consumer(opts.backend))
        if isinstance(fused, bytes):
            atomic_write_bytes(target / "model.onnx", fused)
        else:
            shutil.copyfile(fused, target / "model.onnx")
        tail = ""
        if opts.backend == "tensorrt":  # ONNX Runtime's TensorRT provider inside Triton's backend
            mode = "FP16" if opts.precision == "fp16" else "FP32"
            tail = ("optimization { execution_accelerators { gpu_execution_accelerator : [ { name : \"tensorrt\"\n"
                    f"  parameters {{ key: \"precision_mode\" value: \"{mode}\" }}\n"
                    "  parameters { key: \"max_workspace_size_bytes\" value: \"4294967296\" }\n"
                    "  parameters { key: \"trt_engine_cache_enable\" value: \"1\" } } ] } }\n")
        runtime = 'platform: "onnxruntime_onnx"'
    else:
        shutil.copyfile(_plan(art, bank, opts, k), target / "model.plan")
        runtime, tail = 'platform: "tensorrt_plan"', ""
    cfg = _config(HEAD, runtime, opts.max_batch, inputs, outputs, opts.instances, kind, opts.max_queue_delay_us, tail)
    atomic_write_bytes(root / HEAD / "config.pbtxt", cfg.encode())


def _plan(art, bank, opts, k: int):
    """The fused engine `coder build-engine` wrote for this artifact, bank and k (its name carries the
    TensorRT version and GPU architecture); with several, the one for this machine's GPU."""
    from ..engines.trt import default_engine_dir, engine_path, engine_stem
    from ..errors import BackendError, ConfigError

    directory = Path(opts.engine_dir) if opts.engine_dir else default_engine_dir(art.root)
    found = sorted(directory.glob(f"{engine_stem(art, opts.precision, bank, k)}.trt*.engine"))
    if not found:
        raise ArtifactError(f"no fused TensorRT engine for this bank in {directory}: run `coder build-engine "
                            f"{art.root} --precision {opts.precision} --max-batch {opts.max_batch}` on the serving "
                            f"GPU first")
    if len(found) == 1:
        return found[0]
    try:
        mine = engine_path(art, opts.precision, opts.engine_dir, bank, k)
    except BackendError as e:
        raise ConfigError(f"several engines ({', '.join(p.name for p in found)}) and no GPU here to choose ({e}); "
                          "pass --engine-dir holding only the serving GPU's engine") from None
    if mine not in found:
        raise ConfigError(f"no engine for this GPU ({mine.name}) among {', '.join(p.name for p in found)}")
    return mine


def _ensemble_config(max_batch: int, top_k: int) -> str:
    def step(model: str, inputs: dict, outputs: dict) -> str:
        ins = " ".join(f'input_map {{ key: "{a}" value: "{b}" }}' for a, b in inputs.items())
        outs = " ".join(f'output_map {{ key: "{a}" value: "{b}" }}' for a, b in outputs.items())
        return f'  {{ model_name: "{model}" model_version: -1 {ins} {outs} }}'

    head_out = {n: f"_{n}" for n in ("stage1", "topk_ids", "gap", "rerank")}
    steps = [step(PRE, {"image": "image"}, {"pixel_values": "_pixels"}),
             step(HEAD, {"pixel_values": "_pixels"}, head_out),
             step(GATE, {n: v for n, v in head_out.items()},
                  {n: n for n in ("label", "name", "top_k", "stage1_scores", "gap", "reranked")})]
    text = _config(MODEL, 'platform: "ensemble"', max_batch, [IMAGE_INPUT], client_outputs(top_k), None, "", None)
    return text + "ensemble_scheduling { step [\n" + ",\n".join(steps) + "\n] }\n"


def write_ensemble(root, art, bank, opts, settings: dict, top_k: int, k: int) -> tuple[str, ...]:
    """Write the four models; returns their names (the ensemble ``coder`` first)."""
    size = tuple(art.preprocess.size)
    n_classes = len(bank.class_names)
    pixels, head_outs = _head_io(size, art.embed_dim, n_classes, k)
    n, delay = opts.instances, opts.max_queue_delay_us
    _write_python_model(root, PRE, _config(PRE, _PY, opts.max_batch, [IMAGE_INPUT], pixels, n, "KIND_CPU", delay),
                        {**settings, "role": "preprocess"})
    if opts.ensemble == "python":
        cfg = _config(HEAD, _PY, opts.max_batch, pixels, head_outs, n, "KIND_CPU", delay)
        _write_python_model(root, HEAD, cfg, {**settings, "role": "head"})
    else:
        _native_head(root, art, bank, opts, k, pixels, head_outs)
    gate_in = [t for t in head_outs if '"embedding"' not in t]
    _write_python_model(root, GATE, _config(GATE, _PY, opts.max_batch, gate_in, client_outputs(top_k), n,
                                            "KIND_CPU", delay), {**settings, "role": "gate"})
    atomic_write_bytes(root / MODEL / "config.pbtxt", _ensemble_config(opts.max_batch, top_k).encode())
    (root / MODEL / "1").mkdir(parents=True, exist_ok=True)  # an ensemble's version directory stays empty
    return MODEL, PRE, HEAD, GATE


# --- the Python steps (inside the stub) ------------------------------------------------------


class PreprocessModel(_Base):
    def setup(self) -> None:
        from ..manifest import load_artifact

        self.cfg = load_artifact(self.settings["artifacts"]).preprocess

    def execute(self, requests):
        from ..runtime.preprocess import preprocess_batch

        return run_batched(self.pb, requests, lambda r: _no_classes(r) or request_images(self.pb, r),
                           lambda ims: preprocess_batch(ims, self.cfg),
                           lambda x, a, b: [self.pb.Tensor("pixel_values", x[a:b])])


def _no_classes(request) -> None:
    """The ensemble serves the bank it was written with: a per-request ``classes`` list is refused (HTTP 400),
    never silently ignored."""
    from ..errors import ConfigError

    if request_classes(request) is not None:
        raise ConfigError("request parameter 'classes' needs the default layout (coder serve without --ensemble)")


def _inputs(pb, request, names) -> list[np.ndarray]:
    return [pb.get_input_tensor_by_name(request, n).as_numpy() for n in names]


class HeadModel(_Base):
    """The fused graph through ONNX Runtime in a Python model (the ``--ensemble python`` head)."""

    def setup(self) -> None:
        self.encoder = self.options().load().encoder

    def execute(self, requests):
        def encode(out, a, b):
            return [self.pb.Tensor(n, np.ascontiguousarray(getattr(out, f)[a:b])) for n, f in
                    (("embedding", "embedding"), ("stage1", "stage1"), ("topk_ids", "topk_ids"), ("gap", "gap"),
                     ("rerank", "rerank"))]

        return run_batched(self.pb, requests, lambda r: list(_inputs(self.pb, r, ["pixel_values"])[0]),
                           lambda xs: self.encoder.run_head(np.stack(xs)), encode)


class GateModel(_Base):
    def setup(self) -> None:
        from ..manifest import load_artifact
        from ..runtime.classifier import find_bank
        from ..text_bank.bank import load_bank

        o = self.options()
        art = load_artifact(o.artifacts)
        bank = load_bank(find_bank(art.root, o.bank), art)
        self.names = bank.class_names
        self.tau = bank.tau if o.tau is None else float(o.tau)
        self.top_k = min(int(self.settings["top_k"]), len(self.names))

    def execute(self, requests):
        from ..runtime.classifier import finish
        from ..runtime.head import gate

        names = ["stage1", "topk_ids", "gap", "rerank"]

        def decode(r):
            s1, top, gap, rr = _inputs(self.pb, r, names)
            return list(zip(s1, top, gap.reshape(-1), rr))

        def infer(rows):
            s1, top, gap, rr = (np.stack([row[i] for row in rows]) for i in range(4))
            res, shown = finish(s1, gate(top, gap, rr, self.tau), self.top_k)
            return s1, res, shown

        def encode(out, a, b):
            s1, res, shown = out
            labels = res.labels[a:b]
            return [self.pb.Tensor("label", labels.astype(np.int32)[:, None]),
                    self.pb.Tensor("name", np.array([[self.names[int(c)].encode("utf-8")] for c in labels], np.object_)),
                    self.pb.Tensor("top_k", shown[a:b].astype(np.int32)),
                    self.pb.Tensor("stage1_scores", np.take_along_axis(s1[a:b], shown[a:b], axis=1).astype(np.float32)),
                    self.pb.Tensor("gap", res.gap[a:b].astype(np.float32)[:, None]),
                    self.pb.Tensor("reranked", res.fired[a:b].astype(np.bool_)[:, None])]

        return run_batched(self.pb, requests, decode, infer, encode)


ROLES = {"preprocess": PreprocessModel, "head": HeadModel, "gate": GateModel}
