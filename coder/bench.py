"""``coder bench DIR``: per-stage latency and throughput for every backend that loads here.

Stages: ``decode+pre`` (640x480 JPEG file -> pixels), ``encoder``, the CODER head's ``stage 1`` and
``rerank`` (forced on, the worst case), and with a bank ``encoder+head`` (pixels -> labels) both ways:
the encoder + the numpy head, and the encoder + the head graph (:mod:`coder.runtime.fused`). Native TensorRT engines get rows
where ``coder build-engine`` built them. Latencies are p50/p90/p99 over repeats at batch 1, 8 and 32; the
achieved GFLOPS of CPU encoder rows is compared with this machine's matmul peak measured in the
same run: fp32 rows with numpy's fp32 GEMM, int8 rows with ONNX Runtime's uint8 x int8 GEMM
(``MatMulInteger``, the kernel family the int8 encoder's ``MatMulIntegerToFloat`` runs on). GPU rows
(CUDA, TensorRT) get no percentage: a CPU GEMM is no reference for them, and no GPU peak is measured. With the [export] extra, torch eager rows run in the same process
for reference. With the [openvino] extra, OpenVINO rows for every device and precision hint (CPU rows
``openvino-f32``/``openvino-bf16`` get a percentage: bf16 rows of OpenVINO's own bf16 GEMM peak,
measured in the same run), and ``auto_cpu``: the CPU engine ``--backend auto``
measured fastest here.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from .errors import ArtifactError, BackendError, StaleEngineError, WeightsError
from .manifest import load_artifact
from .timing import timings_ms


@dataclass(frozen=True)
class BenchRow:
    backend: str  # what actually ran, e.g. "ort-cpu fp32" or "torch-eager fp32"
    stage: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float
    pct_of_matmul_peak: float | None = None


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of fp32 GEMM throughput of numpy's BLAS on this machine."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    best = min(timings_ms(lambda: a @ b, repeats, warmup=1)) / 1e3
    return 2 * n**3 / best / 1e9


def int8_matmul_peak_gops(n: int = 1024, repeats: int = 10) -> float | None:
    """Best-of uint8 x int8 -> int32 GEMM throughput (GOPS) of ONNX Runtime's CPU ``MatMulInteger``;
    None without ONNX Runtime. Example: ``int8_matmul_peak_gops()`` -> 410.0 on a 2-core VNNI CPU."""
    gemm = ort_gemm("int8", (n, n, n))
    if gemm is None:
        return None
    call, ops = gemm
    return ops / (min(timings_ms(call, repeats, warmup=2)) / 1e3) / 1e9


def ort_gemm(kind: str, shape: tuple[int, int, int] = (1024, 1024, 1024)):
    """``(call, ops)``: one (m x k) @ (k x n) GEMM on ONNX Runtime's CPU, ``kind`` ``"int8"`` (``MatMulInteger``,
    uint8 x int8 -> int32) or ``"fp32"`` (``MatMul``), and its 2mkn operations; None without ONNX Runtime.
    Example: ``call, ops = ort_gemm("int8"); ops / (median_ms(call, 10) / 1e3) / 1e9`` -> GOPS."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    int8, (m, k, n) = kind == "int8", shape
    b = rng.integers(-127, 128, (k, n), dtype=np.int8) if int8 else rng.random((k, n), dtype=np.float32)
    op, a_type, y_type = ("MatMulInteger", TensorProto.UINT8, TensorProto.INT32) if int8 else \
        ("MatMul", TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], f"{kind}_peak",
                              [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", y_type, [m, n])], [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (m, k), dtype=np.uint8) if int8 else rng.random((m, k), dtype=np.float32)
    return (lambda: sess.run(None, {"a": a})), 2 * m * k * n


def _row(backend: str, stage: str, batch: int, t: np.ndarray) -> BenchRow:
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return BenchRow(backend, stage, batch, float(p50), float(p90), float(p99), 1e3 * batch / float(p50))


def _pct(gflop_per_image: float | None, row: BenchRow, peak: float | None) -> float | None:
    """Achieved GFLOPS (GFLOP/image x images/s) as a percentage of the GEMM peak."""
    return 100 * gflop_per_image * row.images_per_s / peak if gflop_per_image and peak else None


def _on_cpu(row: BenchRow) -> bool:
    """Rows measured on the CPU, the only ones the numpy GEMM peak is a fair reference for."""
    return row.backend.startswith(("ort-cpu", "torch-eager", "pil+numpy", "numpy", "openvino-"))


def _images(tmp: Path, n: int) -> list[Path]:
    from .samples import synthetic_scene

    paths = []
    for i in range(n):
        p = tmp / f"{i}.jpg"
        synthetic_scene(i, (640, 480)).save(p, quality=90)
        paths.append(p)
    return paths


def run_bench(artifact_dir, batches=(1, 8, 32), repeats: int = 20, backends=("cpu", "cuda", "tensorrt"),
              with_torch: bool = True, report=lambda msg: None, bank_name: str | None = None,
              openvino: bool = True) -> dict:
    """Every row; ``bank_name`` picks the bank for the head rows (default: the only one, if exactly one).
    ``openvino``: rows for every OpenVINO device and precision hint (:func:`_openvino_candidates`), and
    ``auto_cpu``: the CPU engine ``--backend auto`` chose for the fp32 encoder here (measured if not cached)."""
    from .runtime.images import load_image
    from .runtime.preprocess import preprocess_batch

    art = load_artifact(artifact_dir)
    flops = art.manifest.get("image_gflop")
    rows: list[BenchRow] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as d:
        paths = _images(Path(d), max(batches))
        cfg = art.preprocess
        for b in batches:
            rows.append(_row("pil+numpy", "decode+pre", b,
                             timings_ms(lambda: preprocess_batch([load_image(p) for p in paths[:b]], cfg),
                                        max(3, repeats // 4))))
    bank = _bank_or_none(art, bank_name)
    candidates = list(_candidates(artifact_dir, art, backends, bank))
    candidates += list(_openvino_candidates(artifact_dir, art, bank)) if openvino else []
    for name, load in candidates:
        try:
            enc = load()
        except (BackendError, ArtifactError, StaleEngineError) as e:
            skipped[name.format(ran="openvino")] = str(e)
            continue
        name = name.format(ran=enc.backend)  # OpenVINO rows: the precision the compiled model reports
        report(f"benchmarking {name}")
        try:
            rows += _encoder_rows(name, enc, bank, batches, repeats, cfg.size)
        finally:
            enc.close()  # native TensorRT: free the stream and device buffers before the next engine
    if not any(r.stage == "encoder" for r in rows):  # e.g. no ONNX Runtime installed: nothing was measured
        raise BackendError("no backend could run the image encoder: "
                           + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    rows += _head_rows(art, bank, batches, repeats, report)
    if with_torch:
        rows += _torch_rows(art, batches, max(3, repeats // 2), skipped, report)
    # The GEMM peak is measured LAST: OpenBLAS threads keep spinning after it and slowed the
    # ONNX Runtime int8 encoder by 25 % when it ran first.
    peak = matmul_peak_gflops()
    peaks = {"f32": peak, **_reduced_peaks(rows)}
    if any(_peak_kind(r) == "int8" for r in rows) and (int8_peak := int8_matmul_peak_gops()):
        peaks["int8"] = int8_peak
    rows = [replace(r, pct_of_matmul_peak=_pct(flops, r, peaks[_peak_kind(r)])) if r.stage == "encoder" and _on_cpu(r)
            and _peak_kind(r) in peaks else r for r in rows]
    return {"architecture": art.architecture, "matmul_peak_gflops": peak, "int8_matmul_peak_gops": peaks.get("int8"),
            "image_gflop": flops,
            "matmul_peak_gflops_by_precision": peaks, "rows": [asdict(r) for r in rows], "skipped": skipped,
            "auto_cpu": _auto_cpu(artifact_dir, art, skipped) if openvino else None}


def _peak_kind(row: BenchRow) -> str:
    """The arithmetic a CPU row ran: ``"bf16"`` for ``openvino-bf16 ...`` rows, ``"int8"`` for int8 encoders
    (compared with the int8 GEMM peak, not the fp32 one), else ``"f32"``."""
    if row.backend.startswith("openvino-bf16"):
        return "bf16"
    return "int8" if " int8" in row.backend else "f32"


def _reduced_peaks(rows: list[BenchRow]) -> dict[str, float]:
    """``{"bf16": GFLOPS}`` when bf16 rows ran: an fp32 GEMM is no reference for bf16 arithmetic."""
    if not any(_peak_kind(r) == "bf16" for r in rows):
        return {}
    return {"bf16": openvino_matmul_peak_gflops("bf16")}


def openvino_matmul_peak_gflops(hint: str, n: int = 2048, repeats: int = 10) -> float:
    """Best-of GEMM throughput of OpenVINO's CPU plugin at precision ``hint`` (the bf16 rows' peak)."""
    import openvino.opset13 as ops

    from .engines.openvino import core, import_ov

    a = ops.parameter([n, n], np.float32, name="a")
    b = ops.constant(np.random.default_rng(1).random((n, n), dtype=np.float32))
    model = import_ov().Model([ops.matmul(a, b, False, False)], [a], "gemm")
    request = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                  "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
    x = np.random.default_rng(0).random((n, n), dtype=np.float32)
    best = min(timings_ms(lambda: request.infer({0: x}), repeats, warmup=1)) / 1e3
    return 2 * n**3 / best / 1e9


def _auto_cpu(artifact_dir, art, skipped) -> dict | None:
    """The CPU engine ``--backend auto`` runs for the fp32 encoder here (cached, else measured now)."""
    from .runtime.cpu_choice import choose_cpu_engine
    from .runtime.encoder import ImageEncoder

    try:
        choice = choose_cpu_engine(art, "fp32", None, partial(ImageEncoder.load, artifact_dir, "fp32"))
    except (BackendError, ArtifactError) as e:
        skipped["auto cpu"] = str(e)
        return None
    return {**asdict(choice), "describe": choice.describe()}


def _openvino_candidates(artifact_dir, art, bank):
    """OpenVINO rows: each device OpenVINO reports x each precision hint it runs (``f32``, and ``bf16`` on a
    CPU with BF16 / ``f16`` on a GPU) for the fp32 encoder, the gated default with the bank's head, and the
    other exported precisions at ``f32``. Without OpenVINO: one skipped row saying how to install it."""
    from .engines import openvino as ov
    from .runtime.encoder import ImageEncoder

    if not ov.installed():
        yield "openvino", partial(ov.import_ov)
        return
    devices = [b for b in ov.BACKENDS if ov.device_of(b) in ov.core().available_devices]
    for backend in devices:
        dev = ov.device_of(backend)
        for precision in art.variants("image"):
            hints = ["f32", *([ov.reduced_hint(dev)] if precision == "fp32" and ov.reduced_hint(dev) else [])]
            for hint in hints:
                yield "{ran} " + precision, partial(_openvino_encoder, art, precision, backend, hint)
        if bank is not None and "fp32" in art.variants("image"):
            yield ("{ran} fp32 fused head",
                   partial(ImageEncoder.load_fused, artifact_dir, bank, bank.k, "fp32", backend))


def _openvino_encoder(art, precision: str, backend: str, hint: str):
    """An OpenVINO encoder at exactly ``hint`` (bench rows measure every precision, gated or not)."""
    from .engines.openvino import load_openvino
    from .runtime.encoder import ImageEncoder
    from .runtime.openvino_precision import model_sha256

    path = art.encoder("image", precision, "openvino")  # int8: the NNCF IR where the export wrote one
    engine = load_openvino(path, backend, hint, None, model_sha256(art, path.name), int8=precision == "int8",
                           max_batch=art.max_batch)
    return ImageEncoder(art, engine, precision, art.max_batch)


def _bank_or_none(art, name: str | None = None):
    """The named bank (errors propagate: the user asked for it), else the only one or None."""
    from .runtime.classifier import find_bank
    from .text_bank.bank import load_bank

    if name is not None:
        return load_bank(find_bank(art.root, name), art)
    try:
        return load_bank(find_bank(art.root, None), art)
    except ArtifactError:
        return None


def _candidates(artifact_dir, art, backends, bank):
    """(row name, loader) for every ONNX Runtime backend x exported precision, plain and fused with the
    bank's head, then native TensorRT engines (which exist only where `coder build-engine` ran)."""
    from .runtime.encoder import ImageEncoder

    for backend in backends:
        for precision in art.variants("image"):
            yield f"ort-{backend} {precision}", partial(ImageEncoder.load, artifact_dir, precision, backend)
            if bank is not None:
                yield (f"ort-{backend} {precision} fused head",
                       partial(ImageEncoder.load_fused, artifact_dir, bank, bank.k, precision, backend))
    for precision in ("fp16", "fp32"):
        yield f"tensorrt-native {precision}", partial(ImageEncoder.load_trt, artifact_dir, precision)
        if bank is not None:
            yield (f"tensorrt-native {precision} fused head",
                   partial(ImageEncoder.load_trt, artifact_dir, precision, None, False, bank, bank.k))


def _encoder_rows(name, enc, bank, batches, repeats, size) -> list[BenchRow]:
    """``encoder`` rows (the engine call), and with a bank ``encoder+head``: image batch -> labels,
    through the fused graph or the engine + the numpy head (rerank forced on, the worst case)."""
    from .runtime.encoder import l2_normalize
    from .runtime.head import gate, rerank, stage1_scores

    rows = []
    for b in batches:
        b_eff = min(b, enc.max_batch)
        x = np.random.default_rng(b).standard_normal((b_eff, 3, *size)).astype(np.float32)
        if enc.fused:
            def head():
                out = enc.run_head(x)  # encoder + head graph (two ORT sessions, or one fused TRT engine)
                return gate(out.topk_ids, out.gap, out.rerank, 1.01).labels
        else:
            rows.append(_row(name, "encoder", b_eff, timings_ms(lambda: enc.engine.run(x), repeats)))
            f = lambda: l2_normalize(enc.engine.run(x))  # noqa: E731
            head = (lambda: rerank(e := f(), stage1_scores(e, bank), bank, 1.01, bank.k).labels) if bank else None
        if head is not None:
            label = name if enc.fused else f"{name} + numpy head"
            rows.append(_row(label, "encoder+head", b_eff, timings_ms(head, repeats)))
    return rows


def _head_rows(art, bank, batches, repeats, report) -> list[BenchRow]:
    from .runtime.head import rerank, stage1_scores

    if bank is None:
        return []
    report("benchmarking the CODER head")
    rows = []
    for b in batches:
        f = np.random.default_rng(b).standard_normal((b, art.embed_dim)).astype(np.float32)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        s1 = stage1_scores(f, bank)
        rows.append(_row("numpy", "stage 1", b, timings_ms(lambda: stage1_scores(f, bank), repeats * 5)))
        rows.append(_row("numpy", "rerank", b, timings_ms(lambda: rerank(f, s1, bank, 1.01, bank.k),
                                                                   repeats * 5)))
    return rows


def _torch_rows(art, batches, repeats, skipped, report) -> list[BenchRow]:
    try:
        import torch

        from .export.weights import rebuild_from_manifest
    except ImportError as e:
        skipped["torch-eager"] = f"not installed ({e.name})"
        return []
    try:
        model = rebuild_from_manifest(art.manifest)
    except WeightsError as e:
        skipped["torch-eager"] = str(e)
        return []
    report("benchmarking torch eager")
    rows = []
    for b in batches:
        x = torch.randn(b, 3, *art.preprocess.size)
        with torch.no_grad():
            rows.append(_row("torch-eager fp32", "encoder", b, timings_ms(lambda: model.visual(x), repeats)))
    return rows
