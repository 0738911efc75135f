"""Static int8 image encoders: one calibration, two QDQ files (and an OpenVINO IR), the accuracy cost measured.

``coder export --int8`` calibrates activation ranges once (ONNX Runtime ``quantize_static``,
calibration cache reused) on the user's images (``--calibration DIR``, preprocessed by the
runtime's own transform) or on the synthetic scenes of :mod:`coder.samples`, then writes one QDQ
file per consumer, because no single file runs at full speed on both:

* ``image_encoder.int8.onnx`` (consumer ``cpu``): uint8 asymmetric activations (QUInt8), int8
  per-channel symmetric weights: the u8 x s8 operands x86 VNNI kernels of ONNX Runtime need; each
  weight MatMul is then written with its bias, and each self-attention, as the kernels ONNX Runtime runs
  (:mod:`.int8_ort`).
* ``image_encoder.int8.trt.onnx`` (consumer ``tensorrt``): int8 symmetric activations with zero
  point 0 (QInt8) and the same weights: the only form TensorRT explicit quantization accepts
  (``coder build-engine --precision int8``; ONNX Runtime's ``cuda``/``tensorrt`` backends).

With ``openvino`` and ``nncf`` installed, the same calibration also writes OpenVINO's own int8 IR
(:mod:`.int8_openvino`, consumer ``openvino``), held to the same gate.

MatMul and Gemm inputs are quantized, their outputs stay float (ONNX Runtime fuses DQ + MatMul
into ``MatMulIntegerToFloat``; TensorRT fuses the same pattern), convolutions stay float. Scales
are constants: an image's embedding does not depend on the other images of its batch, which
dynamic quantization (scales from each batch) could not promise.

The calibration method (MinMax / Entropy / Percentile) is chosen by measured cosine to the fp32
encoder on held-out scenes (never calibrated on); if the gate still fails, the most sensitive
nodes are left in float (:mod:`.int8_sensitivity`). Everything measured goes to
``manifest["int8"]`` (:func:`quantize_static_int8` returns it).

>>> record = quantize_static_int8(out / "image_encoder.fp32.onnx", out, Int8Options(), cfg)  # doctest: +SKIP
>>> record["calibration"]["method"], record["held_out"]["min_cosine"]
('MinMax', 0.9998)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, ExportError, one_line
from ..manifest import INT8_SCHEME, PreprocessConfig
from .int8_openvino import CONSUMER as OPENVINO
from .int8_openvino import quantize_openvino
from .int8_ort import write_cpu_form
from .onnx_files import staged

SCHEME = INT8_SCHEME
METHODS = ("MinMax", "Entropy", "Percentile")
ENTROPY_BINS = (2048, 128)  # histogram bins, quantized bins (:func:`entropy_ranges`)
INT8_OPS = ("MatMul", "Gemm")
CALIBRATION_SEED = 11  # synthetic calibration scenes
HELD_OUT_SEED = 23  # held-out scenes: never calibrated on
DEFAULT_CALIBRATION_IMAGES = 32
HELD_OUT_IMAGES = 16
MIN_COSINE = 0.99  # the int8 gate (coder.export.validate.INT8_MIN_COS)
CONSUMERS: dict[str, dict[str, str]] = {
    "cpu": {"file": "image_encoder.int8.onnx", "activations": "uint8 asymmetric (QUInt8)",
            "weights": "int8 symmetric per channel", "runs_on": "ONNX Runtime CPU (--backend cpu)",
            "form": "QDQ; each weight MatMul with its bias as ONNX Runtime's MatMulIntegerToFloat, each "
                    "self-attention as its QAttention (com.microsoft)"},
    "tensorrt": {"file": "image_encoder.int8.trt.onnx", "activations": "int8 symmetric, zero point 0 (QInt8)",
                 "weights": "int8 symmetric per channel",
                 "runs_on": "TensorRT explicit quantization (coder build-engine --precision int8; "
                            "ONNX Runtime --backend cuda|tensorrt)"},
}
Reporter = Callable[[str], None]


@dataclass(frozen=True)
class Int8Options:
    """Calibration inputs: ``"synthetic"`` or an image directory, and how many images.

    Example: ``Int8Options("frames/", 64)``.
    """

    calibration: str = "synthetic"
    images: int = DEFAULT_CALIBRATION_IMAGES
    held_out: int = HELD_OUT_IMAGES
    methods: tuple[str, ...] = METHODS
    min_cosine: float = MIN_COSINE


def calibration_pixels(opts: Int8Options, cfg: PreprocessConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """(N,3,H,W) float32 calibration pixels and their record (source, count, sha256 of the pixels)."""
    from ..runtime.preprocess import preprocess_batch
    from ..samples import synthetic_batch

    if opts.images < 1:
        raise ConfigError(f"--calibration-images {opts.images}: must be at least 1")
    if opts.calibration == "synthetic":
        pils, source = synthetic_batch(opts.images, seed=CALIBRATION_SEED, size=(320, 240)), "synthetic"
    else:
        pils, source = _directory_images(Path(opts.calibration), opts.images), str(Path(opts.calibration).resolve())
    pixels = preprocess_batch(pils, cfg)
    return pixels, {"source": source, "images": len(pils), "pixels_sha256": hashlib.sha256(pixels).hexdigest()}


def _directory_images(root: Path, n: int) -> list:
    """The first ``n`` readable images under ``root`` (sorted paths, recursive); ConfigError if none."""
    from ..errors import InputError
    from ..runtime.images import load_image
    from ..runtime.inputs import IMAGE_SUFFIXES

    if not root.is_dir():
        raise ConfigError(f"--calibration {root}: not a directory (give a folder of images, or 'synthetic')")
    images = []
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES):
        try:
            images.append(load_image(p))
        except InputError:
            continue  # an unreadable file is skipped, as classify does
        if len(images) == n:
            break
    if not images:
        raise ConfigError(f"--calibration {root}: no readable images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def held_out_pixels(cfg: PreprocessConfig, n: int = HELD_OUT_IMAGES) -> np.ndarray:
    """Synthetic scenes of another seed than calibration: the images int8 accuracy is reported on."""
    from ..runtime.preprocess import preprocess_batch
    from ..samples import synthetic_batch

    return preprocess_batch(synthetic_batch(n, seed=HELD_OUT_SEED, size=(320, 240)), cfg)


class _Reader:
    """``CalibrationDataReader`` protocol: one image per call (activation ranges do not depend on batch)."""

    def __init__(self, pixels: np.ndarray, input_name: str):
        self.pixels, self.input_name, self.i = pixels, input_name, 0

    def get_next(self):
        if self.i >= len(self.pixels):
            return None
        self.i += 1
        return {self.input_name: self.pixels[self.i - 1:self.i]}

    def __len__(self) -> int:
        return len(self.pixels)

    def rewind(self) -> None:
        self.i = 0


def quantize_file(src: Path, dst: Path, consumer: str, method: str, cache: Path, pixels: np.ndarray,
                  exclude: tuple[str, ...] = (), external: bool = False) -> None:
    """Write the QDQ file of ``consumer`` with ``method``'s ranges: calibrated on ``pixels`` once, then read
    from ``cache`` (where quantize_static has a calibration cache; without one every call calibrates)."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .onnx_export import IMAGE_INPUT

    cached = "calibration_cache_path" in inspect.signature(quantize_static).parameters
    if cached and method == "Entropy" and not cache.is_file():
        entropy_ranges(src, cache, pixels)  # quantize_static's own Entropy run would degenerate to MinMax
    reader = None if cached and cache.is_file() else _Reader(pixels, IMAGE_INPUT)
    # The calibrators print progress to stdout: kept out of `coder export --json`'s one document.
    with staged(dst) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            quantize_static(
                str(src), str(tmp), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPS),
                per_channel=True, weight_type=QuantType.QInt8,
                activation_type=QuantType.QInt8 if consumer == "tensorrt" else QuantType.QUInt8,
                nodes_to_exclude=list(exclude), calibrate_method=getattr(CalibrationMethod, method),
                use_external_data_format=external, calibration_providers=["CPUExecutionProvider"],
                extra_options={"ActivationSymmetric": consumer == "tensorrt", "WeightSymmetric": True,
                               "OpTypesToExcludeOutputQuantization": list(INT8_OPS),
                               # TensorRT dequantizes INT8 only: its biases stay float (fused by the builder)
                               "QuantizeBias": consumer != "tensorrt"},
                **({"calibration_cache_path": str(cache)} if cached else {}))
        except Exception as e:  # onnx / onnxruntime.quantization raise many types
            raise ExportError(f"int8 quantization of {src.name} ({method}, {consumer}) failed: "
                              f"{one_line(e, 300)}; export without --int8") from None



def entropy_ranges(src: Path, cache: Path, pixels: np.ndarray) -> None:
    """KL-divergence (entropy) activation ranges of ``src`` on ``pixels``, written as a calibration cache.

    ``quantize_static`` cannot pass histogram sizes to its calibrator, whose defaults (128 histogram bins,
    128 quantized bins) leave the threshold search a single candidate, the full range: Entropy became
    MinMax. TensorRT's entropy calibration histograms into 2048 bins and searches thresholds for 128
    quantized ones (Migacz, "8-bit Inference with TensorRT", GTC 2017); so does this, with ONNX
    Runtime's histograms and :func:`~coder.export.int8_entropy.entropy_threshold` (its search, vectorized).
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    from .int8_entropy import entropy_threshold

    ranges = {name: (*entropy_threshold(hist, edges, lowest, highest, ENTROPY_BINS[1]), hist, edges)
              for name, (hist, edges, lowest, highest) in collect_histograms(src, pixels).items()}
    save_tensors_data(TensorsData(CalibrationMethod.Entropy, ranges), cache)


def collect_histograms(src: Path, pixels: np.ndarray) -> dict[str, tuple]:
    """ONNX Runtime's ``ENTROPY_BINS[0]``-bin histograms of every MatMul/Gemm tensor of ``src`` on ``pixels``:
    ``{tensor: (hist, edges, lowest, highest)}``."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from .onnx_export import IMAGE_INPUT

    with tempfile.TemporaryDirectory(prefix=".tmp-entropy-") as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        calibrator = create_calibrator(Path(src), list(INT8_OPS), augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy, providers=["CPUExecutionProvider"],
                                       extra_options={"num_bins": ENTROPY_BINS[0],
                                                      "num_quantized_bins": ENTROPY_BINS[1]})
        calibrator.collect_data(_Reader(pixels, IMAGE_INPUT))
        return {name: tuple(h[:4]) for name, h in calibrator.collector.histogram_dict.items()}


def prepare_for_quantization(src: Path, work: Path, external: bool) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference + basic graph optimisation) to a work file.

    It folds initializers the exporter shared through ``Identity`` (a Gemm bias would otherwise stay
    unquantizable). Graphs its passes cannot handle are quantized as exported.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = work / "prepared.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, save_as_external_data=external,
                              all_tensors_to_one_file=True)
        return dst
    except Exception:  # noqa: BLE001 - an optional optimisation: the exported graph is a valid input too
        return src


def embed(model, pixels: np.ndarray, batch: int = 8) -> np.ndarray:
    """Raw embeddings of ``pixels`` from an ONNX file path or serialized model bytes, on the CPU."""
    import onnxruntime as ort

    from ..engines.ort import session_options

    sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), session_options("int8"),
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: pixels[i:i + batch]})[0] for i in range(0, len(pixels), batch)])


def agreement(got: np.ndarray, want: np.ndarray, text: np.ndarray | None) -> dict[str, Any]:
    """Per-image cosine (min / median) and, with class text embeddings, top-1 agreement of ``got`` with ``want``.

    Example: ``{"images": 16, "min_cosine": 0.9991, "median_cosine": 0.9997, "top1_agreement": 1.0}``.
    """
    def unit(x):
        return x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)

    cos = np.sum(unit(got) * unit(want), axis=1)
    top1 = None
    if text is not None:
        t = unit(text)
        top1 = float(np.mean(np.argmax(unit(got) @ t.T, 1) == np.argmax(unit(want) @ t.T, 1)))
    return {"images": int(len(cos)), "min_cosine": float(cos.min()), "median_cosine": float(np.median(cos)),
            "top1_agreement": top1}


def passes(result: dict[str, Any], min_cosine: float) -> bool:
    return result["min_cosine"] >= min_cosine and result["top1_agreement"] in (None, 1.0)


def gate_judge(want: np.ndarray, text: np.ndarray | None, n_gate: int) -> Callable[[np.ndarray], dict[str, Any]]:
    """``judge(got)``: cosine over every probe image, top-1 on the last ``n_gate`` (the validation scenes).

    The gate is the export's (per-image cosine and the same top-1 on its validation scenes); the
    held-out scenes' top-1 agreement is reported, not gated (random towers have near-tied classes).
    """
    def judge(got: np.ndarray) -> dict[str, Any]:
        result = agreement(got, want, None)
        if text is not None and n_gate:
            result["top1_agreement"] = agreement(got[-n_gate:], want[-n_gate:], text)["top1_agreement"]
        return result

    return judge


def choose_method(src: Path, work: Path, opts: Int8Options, pixels: np.ndarray, probe: np.ndarray,
                  judge: Callable, external: bool, report: Reporter) -> tuple[str, dict]:
    """Quantize the CPU file with every method; the best by (gate passed, min cosine, median cosine) wins."""
    scores = {}
    for method in opts.methods:
        report(f"int8 calibration: {method} on {len(pixels)} images")
        trial = work / f"trial.{method}.onnx"
        quantize_file(src, trial, "cpu", method, work / f"ranges.{method}.json", pixels, external=external)
        scores[method] = judge(embed(trial, probe))
        trial.unlink()
    best = max(scores, key=lambda m: (passes(scores[m], opts.min_cosine), scores[m]["min_cosine"],
                                      scores[m]["median_cosine"]))
    return best, scores


def write_consumers(prepared: Path, files: dict[str, Path], method: str, cache: Path, pixels: np.ndarray,
                    probe: np.ndarray, judge: Callable, min_cosine: float, external: bool,
                    report: Reporter) -> tuple[tuple[str, ...], dict[str, float]]:
    """Write every consumer's file with ONE excluded-node set that passes the gate for all of them.

    TensorRT's symmetric activations can flip a near-tie the CPU file kept: a failing file adds its
    own most sensitive nodes (:func:`~coder.export.int8_sensitivity.exclude_until_pass`) and every
    file is written again with the union. Returns (excluded nodes, {node: min cosine with it in float}).
    """
    from .int8_sensitivity import exclude_until_pass

    excluded: tuple[str, ...] = ()
    sensitivity: dict[str, float] = {}
    while True:
        failing = None
        for consumer, path in files.items():
            report(f"writing the int8 file for {consumer}")
            quantize_file(prepared, path, consumer, method, cache, pixels, excluded, external)
            if not passes(judge(embed(path, probe)), min_cosine):
                failing = (consumer, path)
                break
        if failing is None:
            return excluded, sensitivity
        report(f"int8 ({failing[0]}) misses the gate: measuring each quantized node's effect")
        more, effect = exclude_until_pass(failing[1], prepared, probe, judge, min_cosine, report)
        excluded = tuple(dict.fromkeys(excluded + more))
        sensitivity.update(effect)


def cpu_form(prepared: Path, path: Path, method: str, cache: Path, pixels: np.ndarray, probe: np.ndarray,
             judge: Callable, min_cosine: float, excluded: tuple[str, ...], external: bool,
             report: Reporter) -> tuple[dict[str, Any], np.ndarray]:
    """The gated CPU QDQ file at ``path`` in ONNX Runtime's kernels (:func:`~.int8_ort.write_cpu_form`); returns
    (kernel counts, its embeddings of ``probe``).

    Same integers and scales, but ``+ bias`` rounds differently and attention runs in float: on a random tower
    whose class prompts nearly tie, that can flip a top-1 the QDQ file kept. The gate is measured on the file
    shipped, and if QAttention misses it the attention is written back as QDQ (``skipped`` says so).
    """
    kernels = write_cpu_form(path, external)
    got = embed(path, probe)
    if kernels["attention_kernels"] and not passes(judge(got), min_cosine):
        report("int8 (cpu) misses the gate with attention as QAttention: keeping its attention as QDQ")
        quantize_file(prepared, path, "cpu", method, cache, pixels, excluded, external)
        kernels = {**write_cpu_form(path, external, attention=False), "skipped": "missed the gate"}
        got = embed(path, probe)
    return kernels, got


def quantize_static_int8(src: Path, out: Path, opts: Int8Options, cfg: PreprocessConfig,
                         gate_pixels: np.ndarray | None = None, text: np.ndarray | None = None,
                         external: bool = False, report: Reporter = lambda s: None) -> dict[str, Any]:
    """Calibrate, choose the method, exclude sensitive nodes until the gate passes, write both files.

    ``gate_pixels`` (the export's validation scenes) join the held-out scenes in the gate; ``text``
    (class prompt embeddings) adds the top-1 check. Returns the ``manifest["int8"]`` record.
    """
    pixels, calibration = calibration_pixels(opts, cfg)
    held = held_out_pixels(cfg, opts.held_out)
    probe = held if gate_pixels is None else np.concatenate([held, gate_pixels])
    with tempfile.TemporaryDirectory(prefix=".tmp-int8-", dir=out) as tmp:
        work = Path(tmp)
        prepared = prepare_for_quantization(src, work, external)
        want = embed(src, probe)
        judge = gate_judge(want, text, 0 if gate_pixels is None else len(gate_pixels))
        method, scores = choose_method(prepared, work, opts, pixels, probe, judge, external, report)
        files = {c: out / v["file"] for c, v in CONSUMERS.items()}
        excluded, sensitivity = write_consumers(prepared, files, method, work / f"ranges.{method}.json", pixels,
                                                probe, judge, opts.min_cosine, external, report)
        kernels, got = cpu_form(prepared, files["cpu"], method, work / f"ranges.{method}.json", pixels, probe, judge,
                                opts.min_cosine, excluded, external, report)
        openvino = quantize_openvino(src, out, pixels, probe, judge, opts.min_cosine, report)
    consumers = {**CONSUMERS, **({"openvino": {"file": openvino["file"], **OPENVINO}} if openvino["file"] else {})}
    return {
        "scheme": SCHEME,
        "files": {c: v["file"] for c, v in consumers.items()},
        "consumers": {v["file"]: {k: x for k, x in v.items() if k != "file"} for v in consumers.values()},
        "quantized_op_types": list(INT8_OPS),
        "cpu_matmul_kernels": kernels["matmul_kernels"],  # weight MatMuls (+ bias) as MatMulIntegerToFloat
        "cpu_attention_kernels": kernels["attention_kernels"],  # self-attention blocks as QAttention
        **({"cpu_attention_skipped": kernels["skipped"]} if "skipped" in kernels else {}),
        "calibration": {**calibration, "method": method, "methods_tried": scores},
        "excluded_nodes": list(excluded),
        "sensitivity": sensitivity,
        "held_out": {**agreement(got[:len(held)], want[:len(held)], text), "source": "synthetic",
                     "seed": HELD_OUT_SEED},
        "held_out_tensorrt_file": agreement(embed(files["tensorrt"], held), want[:len(held)], text),
        "openvino": {k: v for k, v in openvino.items() if k != "file"},
        "gate": {"min_cosine": opts.min_cosine, "same_top1": text is not None,
                 "passed": passes(judge(got), opts.min_cosine)},
    }
