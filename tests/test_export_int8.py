"""Static int8 export: batch-independent results, two consumer files from one calibration, the report in
the manifest, sensitivity exclusion, calibration from a folder, the TensorRT QDQ file on the stand-in."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from typer.testing import CliRunner

from coder.cli import EXIT_CODES, app
from coder.errors import ArtifactError, BackendError, ConfigError, ExportError
from coder.export.int8 import CONSUMERS, METHODS, Int8Options, quantize_static_int8
from coder.manifest import load_artifact
from tests import fakes

CODE = {cls: code for cls, code, _ in EXIT_CODES}


def _scenes(art, n=6):
    from coder.runtime.preprocess import preprocess_batch
    from coder.samples import synthetic_batch

    return preprocess_batch(synthetic_batch(n, seed=5), load_artifact(art).preprocess)


def _max_batch_effect(run, x) -> float:
    """Largest |embedding alone - embedding in a batch| over every image and batch split of ``x``."""
    alone = np.concatenate([run(x[i:i + 1]) for i in range(len(x))])
    together = [run(x), run(x[:3]), run(x[2:])]
    return float(max(np.abs(together[0] - alone).max(), np.abs(together[1] - alone[:3]).max(),
                     np.abs(together[2] - alone[2:]).max()))


def test_static_int8_embedding_is_the_same_alone_or_in_any_batch(tiny_artifact, tmp_path):
    from coder.engines.ort import load_ort
    from coder.export.onnx_export import quantize_int8

    art = load_artifact(tiny_artifact)
    x = _scenes(tiny_artifact)
    for consumer in ("cpu", "tensorrt"):
        enc = load_ort(art.encoder("image", "int8", consumer), "cpu", "int8")
        assert _max_batch_effect(enc.run, x) <= 1e-5, consumer
    # The dynamic quantization this replaced computes scales per batch: the same check fails on it.
    dynamic = tmp_path / "dynamic.onnx"
    quantize_int8(art.encoder("image", "fp32"), dynamic)
    assert _max_batch_effect(load_ort(dynamic, "cpu", "int8").run, x) > 1e-5


def _zero_points(path: Path) -> list:
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    return [inits[n.input[2]] for n in m.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]


def test_two_files_one_per_consumer(tiny_artifact):
    from coder.runtime.encoder import ImageEncoder

    art = load_artifact(tiny_artifact)
    cpu, trt = art.encoder("image", "int8", "cpu"), art.encoder("image", "int8", "tensorrt")
    assert (cpu.name, trt.name) == ("image_encoder.int8.onnx", "image_encoder.int8.trt.onnx")
    cpu_types = {z.data_type for z in _zero_points(cpu)}
    assert TensorProto.UINT8 in cpu_types  # activations: uint8 (x86 u8s8 kernels)
    trt_zp = _zero_points(trt)
    assert trt_zp and {z.data_type for z in trt_zp} == {TensorProto.INT8}  # TensorRT: symmetric int8 only
    assert all(not numpy_helper.to_array(z).any() for z in trt_zp)
    per_channel = [n for n in onnx.load(str(trt)).graph.node if n.op_type == "DequantizeLinear"
                   and any(a.name == "axis" for a in n.attribute)]
    assert per_channel  # per-channel weight scales
    assert ImageEncoder.load(tiny_artifact, "int8", "cpu").engine.path == cpu
    files = art.manifest["files"]
    assert cpu.name in files and trt.name in files
    assert art.manifest["int8"]["files"] == {"cpu": cpu.name, "tensorrt": trt.name,
                                             "openvino": "image_encoder.int8.openvino.xml"}  # nncf installed here


def test_manifest_reports_calibration_method_and_accuracy(tiny_artifact):
    m = load_artifact(tiny_artifact).manifest
    rec = m["int8"]
    assert rec["calibration"]["source"] == "synthetic" and rec["calibration"]["images"] == 32
    assert rec["calibration"]["method"] in METHODS and set(rec["calibration"]["methods_tried"]) == set(METHODS)
    best = rec["calibration"]["methods_tried"][rec["calibration"]["method"]]["min_cosine"]
    assert best == max(v["min_cosine"] for v in rec["calibration"]["methods_tried"].values())
    assert rec["excluded_nodes"] == []
    held = rec["held_out"]
    assert held["images"] == 16 and 0.99 <= held["min_cosine"] <= held["median_cosine"] <= 1.0
    assert held["top1_agreement"] == 1.0 and rec["gate"]["passed"]
    for name in CONSUMERS.values():
        v = m["validation"][name["file"]]
        assert v["passed"] and v["batch1_vs_batch3_max_abs"] <= 1e-5


def test_entropy_calibration_is_not_minmax(tiny_artifact, tmp_path):
    """quantize_static's own Entropy calibrator (128 bins, 128 quantized bins) returned the MinMax ranges: the
    methods compared in the report were two copies of one. Entropy ranges now clip outliers (2048/128 bins)."""
    from coder.export.int8 import calibration_pixels, quantize_file

    art = load_artifact(tiny_artifact)
    pixels, _ = calibration_pixels(Int8Options(images=6), art.preprocess)
    ranges = {}
    for method in ("MinMax", "Entropy"):
        cache = tmp_path / f"{method}.json"
        quantize_file(art.encoder("image", "fp32"), tmp_path / f"{method}.onnx", "cpu", method, cache, pixels)
        data = json.loads(cache.read_text())["data"]
        ranges[method] = {k: (float(np.ravel(_num(v["lowest"]))[0]), float(np.ravel(_num(v["highest"]))[0]))
                          for k, v in data.items()}
    shared = ranges["MinMax"].keys() & ranges["Entropy"].keys()
    assert shared
    width = {m: {k: r[k][1] - r[k][0] for k in shared} for m, r in ranges.items()}
    narrower = [k for k in shared if width["Entropy"][k] < (1 - 1e-3) * width["MinMax"][k]]
    assert all(width["Entropy"][k] <= width["MinMax"][k] * (1 + 1e-6) for k in shared)
    assert len(narrower) >= len(shared) // 2, (len(narrower), len(shared))


def _num(v):
    """A calibration-cache number: plain, or ``{"data": ..., "dtype": ...}``."""
    return v["data"] if isinstance(v, dict) else v


def test_export_prints_the_int8_report():
    from coder.cli.artifacts import int8_report_lines

    rec = {"calibration": {"source": "/data/frames", "images": 64, "method": "Entropy",
                           "methods_tried": {"MinMax": {"min_cosine": 0.981}, "Entropy": {"min_cosine": 0.995}}},
           "excluded_nodes": ["/visual/proj/MatMul"], "consumers": {
               "image_encoder.int8.onnx": {"runs_on": "ONNX Runtime CPU", "activations": "uint8", "weights": "int8"}},
           "held_out": {"images": 16, "min_cosine": 0.9951, "median_cosine": 0.9987, "top1_agreement": 0.9375},
           "eval_set": {"dir": "/val", "images": 50, "top1_fp32": 0.9, "top1_int8": 0.88}}
    text = "\n".join(int8_report_lines(rec))
    for want in ("/data/frames, 64 images, method Entropy", "MinMax 0.98100", "/visual/proj/MatMul",
                 "cosine min 0.99510 / median 0.99870", "top-1 agreement 93.8%", "fp32 90.00% vs int8 88.00%"):
        assert want in text


def _float_consumers(path: Path, names) -> bool:
    """No DequantizeLinear feeds the data or weight input of ``names`` (a random-init tower's zero bias is
    one tensor shared with quantized nodes and LayerNorms, so biases are not checked). In the CPU file an
    attention score/value MatMul may be inside a QAttention instead, which computes attention in float."""
    m = onnx.load(str(path))
    prod = {o: n for n in m.graph.node for o in n.output}
    nodes = {n.name: n for n in m.graph.node}
    in_float_attention = {n.name.rsplit("/", 2)[0] for n in m.graph.node if n.op_type == "QAttention"}
    return all(name.rsplit("/", 1)[0] in in_float_attention if name not in nodes else
               nodes[name].op_type in ("MatMul", "Gemm")  # not folded into an int8 kernel (the CPU file)
               and not any(i in prod and prod[i].op_type == "DequantizeLinear" for i in nodes[name].input[:2])
               for name in names)


def test_sensitive_nodes_stay_float_until_the_gate_passes(tiny_artifact, tmp_path):
    art = load_artifact(tiny_artifact)
    opts = Int8Options(images=4, held_out=4, methods=("MinMax",), min_cosine=0.99999)  # stricter than int8 allows
    rec = quantize_static_int8(art.encoder("image", "fp32"), tmp_path, opts, art.preprocess)
    excluded = rec["excluded_nodes"]
    assert excluded and rec["gate"]["passed"] and rec["held_out"]["min_cosine"] >= 0.99999
    assert set(excluded) <= set(rec["sensitivity"])
    for consumer in CONSUMERS.values():
        assert _float_consumers(tmp_path / consumer["file"], excluded)
    with pytest.raises(ExportError, match="even with all"):
        quantize_static_int8(art.encoder("image", "fp32"), tmp_path, Int8Options(
            images=2, held_out=2, methods=("MinMax",), min_cosine=1.5), art.preprocess)


def test_calibration_from_a_folder(tiny_artifact, tmp_path):
    from coder.export.int8 import calibration_pixels
    from coder.samples import synthetic_scene

    folder = tmp_path / "frames"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        synthetic_scene(i, (160, 120)).save(folder / "sub" / f"{i}.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"not a png")
    cfg = load_artifact(tiny_artifact).preprocess
    pixels, rec = calibration_pixels(Int8Options(str(folder), 8), cfg)
    assert pixels.shape == (3, 3, 64, 64) and rec["images"] == 3 and rec["source"] == str(folder.resolve())
    with pytest.raises(ConfigError, match="no readable images"):
        calibration_pixels(Int8Options(str(_empty(tmp_path)), 4), cfg)


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


@pytest.mark.parametrize("args, match", [
    (["--calibration", "synthetic", "--calibration-images", "8"], "need --int8"),
    (["--int8", "--calibration", "/nonexistent/frames"], "not a directory"),
    (["--int8", "--calibration-images", "0"], "at least 1"),
    (["--int8", "--eval-set", "/nonexistent/val"], "not a directory"),
])
def test_int8_options_fail_before_exporting(args, match, tmp_path):
    res = CliRunner().invoke(app, ["export", "--pretrained", "none", "--out", str(tmp_path / "a"), *args])
    assert res.exit_code == CODE[ConfigError] and match in res.output
    assert not (tmp_path / "a").exists()


def test_artifact_with_the_old_dynamic_int8_names_the_reexport(tiny_artifact, tmp_path):
    art = tmp_path / "old"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    manifest = json.loads((art / "manifest.json").read_text())
    del manifest["int8"]  # as written by earlier versions (dynamic quantization, no record)
    (art / "manifest.json").write_text(json.dumps(manifest))
    old = load_artifact(art)
    assert old.encoder("image", "fp32").is_file()  # everything else still loads
    with pytest.raises(ArtifactError, match=r"dynamically quantized.*coder export --int8 --force"):
        old.encoder("image", "int8")


def test_eval_set_top1_fp32_vs_int8(tiny_artifact, tmp_path):
    from coder.export.int8_eval import record_eval_set
    from coder.samples import synthetic_scene
    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    build_bank(art, init_texts("cifar10"))
    val = tmp_path / "val"
    for c, name in enumerate(("cat", "dog", "unknown-class")):
        (val / name).mkdir(parents=True)
        for i in range(2):
            synthetic_scene(10 * c + i, (96, 80)).save(val / name / f"{i}.png")
    rec = record_eval_set(art, val)
    assert rec["images"] == 4 and rec["classes"] == 2
    assert 0 <= rec["top1_fp32"] <= 1 and 0 <= rec["top1_int8"] <= 1
    assert load_artifact(art).manifest["int8"]["eval_set"] == rec


# -- TensorRT: the symmetric QDQ file builds a strongly typed network (CPU stand-in) ---------------

@pytest.fixture
def gpu(monkeypatch):
    g = fakes.install(monkeypatch)
    yield g
    assert g.cudart.violations == []


def test_build_engine_int8_uses_the_tensorrt_qdq_file(gpu, tiny_artifact, tmp_path):
    from coder.engines.trt import BuildOptions, build_engine_trt
    from coder.runtime.encoder import ImageEncoder
    from tests.fakes.tensorrt import read_blob

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks", "engines"))
    res = CliRunner().invoke(app, ["build-engine", str(art), "--precision", "int8", "--bank", "none",
                                   "--max-batch", "8", "--opt-batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["validation"]["passed"] and record["validation"]["min_cosine"] >= 0.99
    engine = Path(record["engine"])
    header, onnx_bytes = read_blob(engine.read_bytes())
    assert header["strongly_typed"] and header["builder_flags"] == []  # precision from the QDQ graph only
    assert onnx_bytes == (art / "image_encoder.int8.trt.onnx").read_bytes()
    with ImageEncoder.load_trt(art, "int8") as enc:
        x = _scenes(art, 3)
        assert enc.encode_pixels(x).shape == (3, 64)
    # With a bank: the head is fused onto the TensorRT file, validated output by output.
    from coder.engines.trt import BuildOptions as Opts
    from coder.runtime.engine_build import build_image_engine
    from coder.text_bank.bank import build_bank, load_bank
    from coder.text_bank.texts import init_texts

    bank_dir = build_bank(art, init_texts("cifar10"))[0]
    bank = load_bank(bank_dir, load_artifact(art))
    fused = build_image_engine(art, Opts("int8", 1, 4, 8), bank=bank, k=3)
    assert fused.validation.passed and "image_head.cifar10" in fused.path.name and ".int8." in fused.path.name
    assert (art / "engines" / "fused" / "cifar10" / "image_head.int8.trt.k3.onnx").is_file()
    # The CPU file (uint8, asymmetric) is what TensorRT's parser rejects.
    with pytest.raises(BackendError, match="TensorRT cannot parse .*INT8"):
        build_engine_trt(art / "image_encoder.int8.onnx", tmp_path / "x.engine", BuildOptions("int8", 1, 4, 8))


def test_one_excluded_set_passes_the_gate_for_both_files(monkeypatch, tmp_path):
    """TensorRT's symmetric file can flip a near-tie the CPU file kept: its sensitive nodes are left in
    float in BOTH files (one calibration, one excluded set)."""
    from coder.export import int8, int8_sensitivity

    written = []

    def fake_quantize(prepared, path, consumer, method, cache, pixels, excluded=(), external=False):
        written.append((consumer, tuple(excluded)))
        path.write_text(",".join(excluded))

    monkeypatch.setattr(int8, "quantize_file", fake_quantize)
    monkeypatch.setattr(int8, "embed", lambda path, probe: path)  # the judge below reads the file itself
    flips = lambda p: p.name.endswith(".trt.onnx") and not p.read_text()  # noqa: E731
    judge = lambda p: {"min_cosine": 0.999, "median_cosine": 0.999, "top1_agreement": 0.0 if flips(p) else 1.0}  # noqa: E731,E501
    monkeypatch.setattr(int8_sensitivity, "exclude_until_pass", lambda path, *a, **k: (
        ("/visual/proj",), {"/visual/proj": 0.9995}) if path.name.endswith(".trt.onnx") else pytest.fail(path.name))
    files = {c: tmp_path / v["file"] for c, v in CONSUMERS.items()}
    excluded, effect = int8.write_consumers(tmp_path / "p.onnx", files, "MinMax", tmp_path / "c.json", None, None,
                                            judge, 0.99, False, lambda s: None)
    assert excluded == ("/visual/proj",) and effect == {"/visual/proj": 0.9995}
    assert written == [("cpu", ()), ("tensorrt", ()), ("cpu", ("/visual/proj",)), ("tensorrt", ("/visual/proj",))]


def test_the_cpu_file_keeps_qdq_attention_when_qattention_misses_the_gate(tiny_artifact, tmp_path):
    """QAttention runs attention in float: on a random tower whose prompts nearly tie it can flip a top-1 the
    QDQ file kept. The gate is measured on the file shipped; missed, the attention goes back to QDQ."""
    from coder.export.int8 import cpu_form, held_out_pixels, prepare_for_quantization, quantize_file

    art = load_artifact(tiny_artifact)
    src = prepare_for_quantization(art.encoder("image", "fp32"), tmp_path, external=False)
    path, ranges = tmp_path / "cpu.onnx", tmp_path / "ranges.json"
    pixels = held_out_pixels(art.preprocess, 4)
    quantize_file(src, path, "cpu", "MinMax", ranges, pixels)
    verdicts = iter([0.5, 1.0])  # the QAttention file misses the gate, the QDQ-attention one passes
    judge = lambda got: {"images": len(got), "min_cosine": next(verdicts), "top1_agreement": None}  # noqa: E731
    kernels, got = cpu_form(src, path, "MinMax", ranges, pixels, pixels, judge, 0.99, (), False, lambda s: None)
    assert kernels["attention_kernels"] == 0 and kernels["skipped"] == "missed the gate"
    assert kernels["matmul_kernels"] > 0 and got.shape[0] == len(pixels)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "QAttention" not in ops and "Softmax" in ops and "MatMulIntegerToFloat" in ops
    kernels, _ = cpu_form(src, path, "MinMax", ranges, pixels, pixels, lambda got: {"min_cosine": 1.0,
                          "top1_agreement": None}, 0.99, (), False, lambda s: None)
    assert kernels == {"matmul_kernels": 0, "attention_kernels": 2}  # already folded; attention fused now
