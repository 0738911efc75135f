"""``coder export``: one function per stage, resumable, atomic.

Stages: prepare the directory -> load the model -> write each ONNX file and
validate it -> write ``manifest.json`` last. Progress of finished files lives
in ``.coder-export.json`` (written before the first file) so an interrupted
export resumes where it stopped; a file counts as done only once written under
its final name AND validated, and only for the same inputs (:func:`resume_key`).
Reused files are validated again: whatever the manifest lists was checked by
this run. ``--force`` builds beside the old artifact (:mod:`.workdir`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..errors import ConfigError, WeightsError
from ..store import atomic_write_json, output_lock, resolved, sha256_file
from ..manifest import FORMAT, FORMAT_VERSION, PreprocessConfig, encoder_filename, file_entry, write_manifest
from . import onnx_export, validate, workdir
from . import int8_openvino
from .int8 import CONSUMERS, Int8Options, quantize_static_int8
from .int8_ort import FORM_VERSION as CPU_FORM
from .registry import PretrainedSpec
from .workdir import STATE_NAME

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    """Everything that decides the bytes of an export.

    Example: ``ExportOptions("ViT-B-32", PretrainedSpec("random", "none"), Path("out"), ("fp32", "fp16"))``.
    """

    architecture: str
    pretrained: PretrainedSpec
    out_dir: Path
    precisions: tuple[str, ...] = ("fp32",)
    opset: int = 17
    max_batch: int = 64
    force: bool = False
    validate: bool = True
    int8: bool = False  # also statically calibrated QDQ int8 image encoders (CPU and TensorRT files)
    external_data: bool = False  # force the ONNX external-data format (automatic above 2 GB)
    int8_options: Int8Options = field(default_factory=Int8Options)  # calibration source and count

    def variants(self, tower: str) -> tuple[str, ...]:
        return self.precisions + (("int8",) if self.int8 and tower == "image" else ())


def resume_key(opts: ExportOptions) -> dict[str, Any]:
    """Every input that changes an exported file or its validation; a resumed file must match all of them.

    Example: ``{"architecture": "ViT-B-32", "checkpoint_sha256": "9f…", "validate": True, "opset": 17, …}``.
    """
    import open_clip

    spec = opts.pretrained
    config = json.dumps(open_clip.get_model_config(opts.architecture), sort_keys=True).encode()
    return {"architecture": opts.architecture, "open_clip_config_sha256": hashlib.sha256(config).hexdigest(),
            "pretrained": [spec.kind, None if spec.kind == "file" else spec.value, spec.seed],
            "checkpoint_sha256": _checkpoint_sha256(spec.value) if spec.kind == "file" else None,
            "opset": opts.opset, "validate": opts.validate, "versions": versions(),
            **({"external_data": True} if opts.external_data else {})}


def _checkpoint_sha256(path: str) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise WeightsError(f"cannot read checkpoint {path}: {e.strerror or e}") from None


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict[str, Any]
    resumed_files: tuple[str, ...] = field(default_factory=tuple)


def default_out_dir(architecture: str, spec: PretrainedSpec, base: Path = Path("coder-artifacts")) -> Path:
    return base / f"{architecture}__{spec.slug}"


def _done(state: dict[str, Any], out: Path, name: str) -> bool:
    entry = state["files"].get(name)
    return bool(entry) and (out / name).is_file() and sha256_file(out / name) == entry["sha256"]


def _record(state: dict[str, Any], out: Path, name: str, validation: dict[str, Any] | None) -> None:
    state["files"][name] = {**file_entry(out / name), "validation": validation}
    atomic_write_json(out / STATE_NAME, state)


def write_encoders(opts: ExportOptions, model, state: dict[str, Any], info: dict[str, Any],
                   ref: dict[str, Any] | None, report: Reporter) -> list[str]:
    """Export + validate every encoder file not already done; returns the names resumed.

    ``model`` is an :class:`~coder.export.families.ExportModel` (or a plain open_clip model).
    """
    out, resumed = opts.out_dir, []
    if state.get("text_dynamic_seq") is False:  # an earlier run of this export fell back to full context
        info["text"]["dynamic_seq"] = False
    for tower in ("image", "text"):
        for precision in opts.variants(tower):
            if precision == "int8":
                resumed += write_int8(opts, state, info, ref, report)
                continue
            name = encoder_filename(tower, precision)
            if _done(state, out, name):
                resumed.append(name)
                if ref is not None:  # validate what the manifest will list, resumed or not
                    report(f"validating {name} (resumed)")
                    result = _validate_one(out / name, tower, precision, ref, info)
                    validate.require(name, result)
                    _record(state, out, name, result)
                continue
            result = _export_and_validate(opts, model, tower, precision, info, ref, report)
            if _needs_full_context(tower, precision, info, result):
                report("text tower output depends on padding: re-exporting at full context")
                info["text"]["dynamic_seq"] = state["text_dynamic_seq"] = False
                result = _export_and_validate(opts, model, tower, precision, info, ref, report)
            if result is not None:
                validate.require(name, result)
            _record(state, out, name, result)
    return resumed


def int8_key(opts: ExportOptions, info: dict[str, Any]) -> dict[str, Any]:
    """What decides the int8 files beyond :func:`resume_key`: the calibration inputs."""
    from .int8 import calibration_pixels

    o = opts.int8_options
    _, record = calibration_pixels(o, PreprocessConfig.from_dict(info["preprocess"]))
    return {"calibration": record, "held_out": o.held_out, "methods": list(o.methods), "min_cosine": o.min_cosine,
            "openvino_ir": int8_openvino.available() is None, "cpu_form": CPU_FORM,
            "openvino_form": int8_openvino.FORM_VERSION}


def write_int8(opts: ExportOptions, state: dict[str, Any], info: dict[str, Any], ref: dict[str, Any] | None,
               report: Reporter) -> list[str]:
    """Both static int8 files (:mod:`.int8`), validated like any encoder; returns the names resumed.

    Resumed only when the calibration inputs (the pixels' sha256 included) are the same.
    """
    out = opts.out_dir
    names = [v["file"] for v in CONSUMERS.values()]
    key = int8_key(opts, info)
    done = (state.get("int8") or {}).get("key") == key and all(_done(state, out, n) for n in names + ir_files(state))
    if not done:
        report("quantizing the image encoder to int8 (static calibration)")
        external = opts.external_data or bool(state["files"].get(encoder_filename("image", "fp32"), {})
                                              .get("external_data"))
        state["int8"] = {"key": key, "record": quantize_static_int8(
            out / encoder_filename("image", "fp32"), out, opts.int8_options, PreprocessConfig.from_dict(
                info["preprocess"]), None if ref is None else ref["pixels"], None if ref is None else ref["text"],
            external or _over_limit(out / encoder_filename("image", "fp32")), report)}
    for name in names:
        result = None
        if ref is not None:
            report(f"validating {name}" + (" (resumed)" if done else ""))
            result = _validate_one(out / name, "image", "int8", ref, info)
            validate.require(name, result)
        _record(state, out, name, result)
    ir = state["int8"]["record"].get("openvino", {})
    for name in ir_files(state):  # the OpenVINO IR (xml + bin, one model): gated with OpenVINO in quantize_static_int8
        _record(state, out, name, {"min_cosine": ir["probe"]["min_cosine"], "engine": "openvino",
                                   "same_top1": ir["probe"]["top1_agreement"] in (None, 1.0), "passed": ir["gate_passed"]})
    return names if done else []


def ir_files(state: dict[str, Any]) -> list[str]:
    """The OpenVINO int8 IR's two files, if the int8 step wrote one."""
    xml = ((state.get("int8") or {}).get("record") or {}).get("files", {}).get("openvino")
    return [] if xml is None else [xml, int8_openvino.weights_name(xml)]


def _over_limit(fp32: Path) -> bool:
    """int8 weights are a quarter of fp32: external data only when even that passes the 2 GB limit."""
    from .onnx_files import EXTERNAL_THRESHOLD_BYTES, data_name

    data = fp32.parent / data_name(fp32.name)
    return (fp32.stat().st_size + (data.stat().st_size if data.exists() else 0)) // 4 > EXTERNAL_THRESHOLD_BYTES


def _needs_full_context(tower: str, precision: str, info: dict[str, Any], result) -> bool:
    """A sequence-sliced text tower that does not match its full-context output (a non-causal tower)."""
    return (tower == "text" and precision == "fp32" and info["text"]["dynamic_seq"] and result is not None
            and result["sliced_vs_full_max_abs"] > validate.DYNAMIC_SEQ_MAX_ABS)


def _export_and_validate(opts: ExportOptions, model, tower: str, precision: str, info: dict[str, Any],
                         ref: dict[str, Any] | None, report: Reporter):
    name = encoder_filename(tower, precision)
    report(f"exporting {name}")
    _write_one(opts, model, tower, precision, info)
    if ref is None:
        return None
    report(f"validating {name}")
    return _validate_one(opts.out_dir / name, tower, precision, ref, info)


def _write_one(opts: ExportOptions, model, tower: str, precision: str, info: dict[str, Any]) -> None:
    from .families import export_visual, torch_model

    path = opts.out_dir / encoder_filename(tower, precision)
    ext = {"external": True} if opts.external_data else {}
    if precision == "fp16":
        onnx_export.convert_fp16(opts.out_dir / encoder_filename(tower, "fp32"), path, **ext)
    elif tower == "image":
        onnx_export.export_image_encoder(export_visual(model), path, tuple(info["preprocess"]["size"]), opts.opset,
                                         **ext)
    else:
        onnx_export.export_text_encoder(torch_model(model), path, info["text"]["context_length"], opts.opset,
                                        info["text"]["dynamic_seq"], **ext)


def _validate_one(path: Path, tower: str, precision: str, ref: dict[str, Any], info: dict[str, Any]):
    if tower == "image":
        return validate.check_image(path, precision, ref)
    return validate.check_text(path, precision, ref, info["text"]["dynamic_seq"])


def image_gflop(model, size: tuple[int, int]) -> float:
    """FLOPs of one image through the image tower (matmuls + convs), for GFLOPS figures in `coder bench`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # Grad mode on purpose: under no_grad nn.MultiheadAttention takes a fused kernel the counter cannot see.
    with FlopCounterMode(display=False) as counter:
        model.visual(torch.zeros(1, 3, *size))
    return counter.get_total_flops() / 1e9


def model_info(model, architecture: str, tokenizer_record: dict[str, Any],
               preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest fields that describe the model itself (from the model, not constants).

    ``preprocess`` (from :func:`coder.export.families.preprocess_record`) overrides the model's
    ``preprocess_cfg``; it carries a ``source`` saying where the values came from.
    """
    from .families import embed_dim
    from .towers import supports_dynamic_text, text_pool_type

    pre = preprocess or {**PreprocessConfig.from_dict(dict(model.visual.preprocess_cfg)).to_dict(),
                         "source": "model"}
    import open_clip

    return {
        "open_clip_config": open_clip.get_model_config(architecture),
        "image_gflop": image_gflop(model, tuple(pre["size"])),
        "embed_dim": embed_dim(model),
        "preprocess": pre,
        "text": {"context_length": int(model.context_length), "vocab_size": int(model.vocab_size),
                 "pool": text_pool_type(model), "dynamic_seq": supports_dynamic_text(model),
                 "tokenizer": tokenizer_record},
    }


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import open_clip
    import torch

    return {"coder": __version__, "open_clip": open_clip.__version__, "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def build_manifest(opts: ExportOptions, pretrained: dict[str, Any], info: dict[str, Any],
                   state: dict[str, Any]) -> dict[str, Any]:
    out = opts.out_dir
    files = {name: {k: v for k, v in e.items() if k != "validation"} for name, e in state["files"].items()}
    vocab = info["text"]["tokenizer"]["file"]
    files[vocab] = file_entry(out / vocab)
    info["text"]["tokenizer"]["sha256"] = files[vocab]["sha256"]
    from .families import add_external_data

    add_external_data(out, files)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "architecture": opts.architecture,
        "pretrained": pretrained,
        "versions": versions(),
        "exporter": {"tool": "torch.onnx.export", "dynamo": False, "opset": opts.opset,
                     "export_batch": onnx_export.EXPORT_BATCH, "max_batch": opts.max_batch},
        **info,
        "precisions": list(opts.precisions),
        "encoders": {tower: list(opts.variants(tower)) for tower in ("image", "text")},
        "io": {"image": [onnx_export.IMAGE_INPUT, onnx_export.IMAGE_OUTPUT],
               "text": [onnx_export.TEXT_INPUT, onnx_export.TEXT_OUTPUT]},
        "files": files,
        "validation": {name: e["validation"] for name, e in state["files"].items()},
        **({"int8": state["int8"]["record"]} if opts.int8 and state.get("int8") else {}),
    }


def export_artifacts(opts: ExportOptions, report: Reporter = lambda s: None) -> ExportResult:
    """Run every stage; returns the written manifest. Raises CoderError subclasses only."""
    if opts.max_batch < 3:
        raise ConfigError(f"--max-batch {opts.max_batch}: must be at least 3 (validation runs batch 3)")
    shown, final = Path(os.path.abspath(opts.out_dir)), resolved(opts.out_dir)  # a symlink is kept, its target written
    with output_lock(final):  # a second export of the same artifact exits 3 naming this one
        return _export_into(opts, shown, final, report)


def _export_into(opts: ExportOptions, shown: Path, final: Path, report: Reporter) -> ExportResult:
    from .families import guarded, load_tokenizer, prepare_model
    from .weights import load_model

    work = workdir.plan(final, opts.force)
    key = resume_key(opts)
    state = workdir.open_state(work, key, fresh=opts.force and work == final)
    opts = replace(opts, out_dir=work)
    report(f"loading {opts.architecture} ({opts.pretrained.kind}: {opts.pretrained.value})")
    with guarded(opts.architecture, "loading the tokenizer"):
        tokenizer = load_tokenizer(opts.architecture)
    with guarded(opts.architecture, "building the model"):
        model, pretrained = load_model(opts.architecture, opts.pretrained)
    if opts.pretrained.kind == "file" and pretrained.get("sha256") != key["checkpoint_sha256"]:
        raise WeightsError(f"{opts.pretrained.value} changed while it was being loaded; run the export again")
    with guarded(opts.architecture, "preparing the model"):
        exportable, info = prepare_model(model, tokenizer, opts, report)
    ref = None
    if opts.validate:
        report("computing torch reference embeddings")
        with guarded(opts.architecture, "computing the torch reference"):
            ref = validate.reference_inputs(model, tokenizer, PreprocessConfig.from_dict(info["preprocess"]))
    with guarded(opts.architecture, "exporting", final):
        resumed = write_encoders(opts, exportable, state, info, ref, report)
    manifest = build_manifest(opts, pretrained, info, state)
    write_manifest(work, manifest)
    workdir.swap_in(work, final)
    report("done")
    return ExportResult(shown, manifest, tuple(resumed))

