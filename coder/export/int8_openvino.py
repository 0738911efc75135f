"""The OpenVINO int8 image encoder: NNCF post-training quantization on the export's calibration images.

OpenVINO runs ONNX Runtime's QDQ file too, but slower than its own bf16 on a CPU with BF16 (README
"OpenVINO"); its own quantizer, NNCF (``nncf.quantize``, the ``[export]`` extra), writes an OpenVINO
IR that runs at its int8 speed. It is calibrated on the same pixels as the QDQ files
(:func:`coder.export.int8.calibration_pixels`) and held to the same gate (per-image cosine to the
fp32 encoder, same top-1 on the validation scenes), measured with OpenVINO itself.

Written as ``image_encoder.int8.openvino.xml`` + ``.bin`` (consumer ``openvino`` in
``manifest["int8"]["files"]``, the ``.bin`` listed as the xml's ``external_data``). Without
``openvino`` and ``nncf`` installed, or when the result misses the gate, no file is written and the
record says why: ``--backend openvino --precision int8`` then runs the plain QDQ file (the TensorRT one).

Depthwise convolutions keep their quantizers only where OpenVINO's CPU plugin runs them in int8
(:func:`depthwise_precisions`, ``record["depthwise"]``). MobileCLIP-S2 on an AVX-512 VNNI + BF16 CPU ran all
90 of them in bf16, each after its quantizer as a separate bf16 FakeQuantize node: without those quantizers
the IR ran 1.06-1.09x faster (paired blocks) at the same cosine to fp32.

>>> rec = quantize_openvino(out / "image_encoder.fp32.onnx", out, pixels, probe, judge, 0.99)  # doctest: +SKIP
>>> rec["file"], rec["gate_passed"]
('image_encoder.int8.openvino.xml', True)
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engines.openvino import OvEncoder, core
from ..errors import ExportError, one_line
from .onnx_files import staged

FILE = "image_encoder.int8.openvino.xml"
FORM_VERSION = 2  # 2: depthwise convolutions quantized only where the CPU plugin runs them int8 (export resume key)
DEPTHWISE = "GroupConvolution"  # OpenVINO's op for depthwise (grouped) convolutions
INT8_PRECISIONS = ("i8", "u8")  # runtime precisions of a layer OpenVINO runs quantized
CONSUMER = {"activations": "uint8/int8 per NNCF (preset MIXED)", "weights": "int8 symmetric per channel",
            "runs_on": "OpenVINO (--backend openvino --precision int8)"}


def weights_name(xml: str) -> str:
    """``weights_name("a.xml") == "a.bin"``: the IR's weights file."""
    return xml[:-len(".xml")] + ".bin"


def available() -> str | None:
    """None if NNCF and OpenVINO are importable here, else why not (one line)."""
    missing = [m for m in ("openvino", "nncf") if importlib.util.find_spec(m) is None]
    return None if not missing else f"{' and '.join(missing)} not installed (pip install 'coder[export,openvino]')"


def model_type(model) -> str | None:
    """``"transformer"`` if the graph has attention (a Softmax), else None: NNCF's ``model_type``."""
    return "transformer" if any(op.get_type_name() == "Softmax" for op in model.get_ops()) else None


def has_depthwise(model) -> bool:
    """Whether the model has grouped (depthwise) convolutions: OpenVINO's ``GroupConvolution``."""
    return any(op.get_type_name() == DEPTHWISE for op in model.get_ops())


def quantize_model(src: Path, pixels: np.ndarray, depthwise: bool = True):
    """``nncf.quantize`` of the fp32 ONNX encoder, one calibration image per sample (scales do not depend on batch);
    ``depthwise=False`` leaves the grouped convolutions' inputs unquantized."""
    import nncf

    model = core().read_model(str(src))
    kind = model_type(model)
    samples = [pixels[i:i + 1] for i in range(len(pixels))]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("nncf").setLevel(logging.ERROR)
        return nncf.quantize(model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                             model_type=nncf.ModelType.TRANSFORMER if kind else None, subset_size=len(samples),
                             ignored_scope=None if depthwise else nncf.IgnoredScope(types=[DEPTHWISE], validate=False))


def embed(model, pixels: np.ndarray, batch: int = 8) -> np.ndarray:
    """Raw embeddings of ``pixels`` from an OpenVINO model on the CPU at the f32 hint (int8 layers stay int8),
    compiled at static batch sizes as the runtime runs it (:class:`coder.engines.openvino.OvEncoder`)."""
    enc = OvEncoder(Path(FILE), "openvino-int8", ["openvino:CPU"], model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"},
                    static=True)
    return np.concatenate([enc.run(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def save(model, out: Path) -> tuple[str, str]:
    """Write the IR (xml + bin) atomically; returns their names."""
    import openvino as ov

    with staged(out / FILE) as tmp_xml:  # the weights move into place first, then the xml that reads them
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        with staged(out / weights_name(FILE)) as tmp_bin:
            Path(tmp_xml).with_suffix(".bin").replace(tmp_bin)
    return FILE, weights_name(FILE)


def quantize_openvino(src: Path, out: Path, pixels: np.ndarray, probe: np.ndarray,
                      judge: Callable[[np.ndarray], dict[str, Any]], min_cosine: float,
                      report: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Quantize with NNCF, gate on ``probe`` with ``judge``, write the IR if it passes; returns the record.

    The record: ``{"file": ..., "gate_passed": True, "model_type": "transformer", "probe": {...}}``,
    or ``{"file": None, "skipped": "<why>"}``. Raises ExportError only if NNCF itself fails.
    """
    why = available()
    if why is not None:
        return {"file": None, "skipped": why}
    from .int8 import passes

    report(f"int8 for OpenVINO: NNCF on {len(pixels)} calibration images")
    try:
        import nncf  # a broken install fails here, named below, not as an internal error

        model = quantize_model(src, pixels)
        depthwise = None
        if has_depthwise(model):
            ran = depthwise_precisions(model)
            depthwise = {"runtime_precisions": ran, "quantized": any(p in INT8_PRECISIONS for p in ran)}
            if not depthwise["quantized"]:
                report(f"int8 for OpenVINO: its depthwise convolutions run {', '.join(ran)}: quantizing without them")
                model = quantize_model(src, pixels, depthwise=False)
    except Exception as e:  # nncf / openvino raise many types
        raise ExportError(f"NNCF int8 quantization of {src.name} failed: {one_line(e, 300)}; "
                          "export without --int8, or uninstall nncf to skip the OpenVINO int8 file") from None
    result = judge(embed(model, probe))
    record = {"nncf": nncf.__version__, "model_type": model_type(model), "preset": "mixed", "probe": result,
              "gate_passed": passes(result, min_cosine), **({"depthwise": depthwise} if depthwise else {})}
    if not record["gate_passed"]:
        report(f"the OpenVINO int8 encoder misses the gate (min cosine {result['min_cosine']:.5f}): not written")
        return {"file": None, "skipped": "missed the gate", **record}
    save(model, out)
    return {"file": FILE, **record}


def depthwise_precisions(model) -> dict[str, int]:
    """How OpenVINO's CPU plugin runs ``model``'s depthwise convolutions, compiled as the runtime compiles an
    int8 IR (static batch 1, latency hint): ``{runtime precision: count}``, e.g. ``{"bf16": 90}``."""
    names = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == DEPTHWISE}
    enc = OvEncoder(Path(FILE), "openvino-int8", ["openvino:CPU"], model, "CPU", {"PERFORMANCE_HINT": "LATENCY"},
                    static=True)
    counts: dict[str, int] = {}
    for op in enc.compiled(1)[1].get_runtime_model().get_ops():
        info = op.get_rt_info()
        if names & set(info["originalLayersNames"].astype(str).split(",")) and \
                info["layerType"].astype(str) == "Convolution":
            precision = info["runtimePrecision"].astype(str)
            counts[precision] = counts.get(precision, 0) + 1
    return counts
