"""coder export: manifest contents, validation record, atomic + resumable writes, --force."""

import json
import pytest

from coder.errors import ArtifactError, ExportError, WeightsError
from coder.export import onnx_export, validate
from coder.export.pipeline import STATE_NAME, ExportOptions, export_artifacts
from coder.export.registry import PretrainedSpec
from coder.store import sha256_file
from coder.manifest import FORMAT, FORMAT_VERSION, load_artifact

SPEC = PretrainedSpec("random", "none", 0)


def test_manifest_fields(tiny_artifact):
    m = json.loads((tiny_artifact / "manifest.json").read_text())
    assert m["format"] == FORMAT and m["format_version"] == FORMAT_VERSION
    assert m["exporter"]["dynamo"] is False and m["exporter"]["opset"] == 17
    assert m["pretrained"] == {"kind": "random", "seed": 0}
    assert m["preprocess"]["size"] == [64, 64] and m["embed_dim"] == 64
    assert m["text"]["context_length"] == 77 and m["text"]["dynamic_seq"] is True
    assert m["text"]["tokenizer"]["kind"] == "clip_bpe" and len(m["text"]["tokenizer"]["sha256"]) == 64
    assert set(m["versions"]) >= {"open_clip", "torch", "onnx", "onnxruntime", "coder"}
    from coder.export import int8_openvino

    ir = {"image_encoder.int8.openvino.xml", "image_encoder.int8.openvino.bin"} if int8_openvino.available() is None \
        else set()  # OpenVINO's int8 IR: written where openvino and nncf are installed
    assert set(m["files"]) == {"image_encoder.fp32.onnx", "image_encoder.fp16.onnx", "image_encoder.int8.onnx",
                               "image_encoder.int8.trt.onnx", "text_encoder.fp32.onnx", "text_encoder.fp16.onnx",
                               "bpe_simple_vocab_16e6.txt.gz"} | ir
    assert m["encoders"] == {"image": ["fp32", "fp16", "int8"], "text": ["fp32", "fp16"]}
    v = m["validation"]
    assert v["image_encoder.fp32.onnx"]["max_abs_diff"] <= 1e-4
    assert v["text_encoder.fp32.onnx"]["sliced_vs_full_max_abs"] <= 1e-5
    assert v["image_encoder.fp16.onnx"]["min_cosine"] >= 0.999 and v["image_encoder.fp16.onnx"]["same_top1"]
    assert v["image_encoder.int8.onnx"]["min_cosine"] >= 0.99 and v["image_encoder.int8.onnx"]["same_top1"]
    assert not (tiny_artifact / STATE_NAME).exists()
    assert not list(tiny_artifact.glob(".tmp-*"))


def test_b32_validation_numbers(b32_artifact):
    v = load_artifact(b32_artifact).manifest["validation"]
    assert v["image_encoder.fp32.onnx"]["max_abs_diff"] <= 1e-4
    assert v["text_encoder.fp32.onnx"]["max_abs_diff"] <= 1e-4
    assert v["image_encoder.fp16.onnx"]["min_cosine"] >= 0.999
    assert v["text_encoder.fp16.onnx"]["min_cosine"] >= 0.999
    assert v["image_encoder.int8.onnx"]["min_cosine"] >= 0.99 and v["image_encoder.int8.onnx"]["same_top1"]


def _dies(dst_arg: int):
    def dies(*args, **kwargs):
        dst = args[dst_arg]
        # Leave a half-written temp file, as a killed process would, then die.
        (dst.parent / f".tmp-{dst.name}-crash").write_bytes(b"half")
        raise KeyboardInterrupt
    return dies


@pytest.mark.parametrize("where", ["first_encoder", "midway"])
def test_interrupted_export_resumes(tmp_path, tiny_arch, monkeypatch, where):
    """Ctrl-C during the very first encoder, or after some files: a re-run finishes the export."""
    out = tmp_path / "a"
    if where == "first_encoder":
        monkeypatch.setattr(onnx_export, "export_image_encoder", _dies(1))
    else:
        monkeypatch.setattr(onnx_export, "convert_fp16", _dies(1))
    with pytest.raises(KeyboardInterrupt):
        export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32", "fp16")))
    assert not (out / "manifest.json").exists() and (out / STATE_NAME).exists()
    assert not (out / "image_encoder.fp16.onnx").exists()
    assert (out / "image_encoder.fp32.onnx").exists() == (where == "midway")

    monkeypatch.undo()
    validated = []
    real_check = validate.check_image
    monkeypatch.setattr(validate, "check_image", lambda p, *a: validated.append(p.name) or real_check(p, *a))
    result = export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32", "fp16")))
    assert ("image_encoder.fp32.onnx" in result.resumed_files) == (where == "midway")
    assert "image_encoder.fp32.onnx" in validated  # a resumed file is validated again
    assert not list(out.glob(".tmp-*")) and not (out / STATE_NAME).exists()
    art = load_artifact(out)
    art.encoder("image", "fp16")
    assert all(v and v["passed"] for v in art.manifest["validation"].values())


def _checkpoint(tiny_arch, path, seed):
    import open_clip
    import torch

    torch.manual_seed(seed)
    torch.save(open_clip.create_model(tiny_arch, pretrained=None).state_dict(), path)
    return path


def _image_embedding(path, pixels):
    from coder.engines.ort import load_ort

    return load_ort(path, "cpu", "fp32").run(pixels)


def test_resume_notices_a_replaced_checkpoint(tmp_path, tiny_arch, monkeypatch):
    """Interrupted with checkpoint A after the image encoder; B at the same path: the artifact is all B."""
    import numpy as np
    import open_clip
    import torch

    ckpt, out = tmp_path / "w.pt", tmp_path / "art"
    _checkpoint(tiny_arch, ckpt, 1)
    spec = PretrainedSpec("file", str(ckpt))
    monkeypatch.setattr(onnx_export, "export_text_encoder", _dies(1))
    with pytest.raises(KeyboardInterrupt):
        export_artifacts(ExportOptions(tiny_arch, spec, out))
    a_sha = sha256_file(out / "image_encoder.fp32.onnx")
    monkeypatch.undo()
    _checkpoint(tiny_arch, ckpt, 2)
    result = export_artifacts(ExportOptions(tiny_arch, spec, out))
    assert result.resumed_files == ()
    m = load_artifact(out).manifest
    assert m["files"]["image_encoder.fp32.onnx"]["sha256"] != a_sha
    assert m["pretrained"]["sha256"] == sha256_file(ckpt)
    b = open_clip.create_model(tiny_arch, pretrained=str(ckpt), weights_only=True).eval()
    pixels = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = b.encode_image(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(_image_embedding(out / "image_encoder.fp32.onnx", pixels), want, atol=1e-4)


def test_no_validate_run_resumed_with_validation_is_validated(tmp_path, tiny_arch, monkeypatch):
    out = tmp_path / "nv"
    monkeypatch.setattr(onnx_export, "export_text_encoder", _dies(1))
    with pytest.raises(KeyboardInterrupt):
        export_artifacts(ExportOptions(tiny_arch, SPEC, out, validate=False))
    monkeypatch.undo()
    export_artifacts(ExportOptions(tiny_arch, SPEC, out))
    v = load_artifact(out).manifest["validation"]
    assert set(v) == {"image_encoder.fp32.onnx", "text_encoder.fp32.onnx"}
    assert all(r is not None and r["passed"] for r in v.values())


def test_failed_force_keeps_the_working_artifact(tmp_path, tiny_arch):
    """--force with a checkpoint that cannot load: the old artifact still loads, nothing of it is lost."""
    out = tmp_path / "keep"
    export_artifacts(ExportOptions(tiny_arch, SPEC, out, validate=False))
    (out / "banks").mkdir()
    (out / "banks" / "mine.txt").write_text("user data")
    before = {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load"):
        export_artifacts(ExportOptions(tiny_arch, PretrainedSpec("file", str(bad)), out, force=True))
    assert {p.name: sha256_file(p) for p in out.iterdir() if p.is_file()} == before
    load_artifact(out).encoder("image", "fp32")

    result = export_artifacts(ExportOptions(tiny_arch, PretrainedSpec("random", "none", 3), out, force=True))
    assert result.out_dir == out and load_artifact(out).manifest["pretrained"]["seed"] == 3
    assert (out / "banks" / "mine.txt").read_text() == "user data"  # carried over into the replacement
    assert not list(tmp_path.glob(".keep.coder-*"))


def test_refuses_foreign_dir_and_needs_force(tmp_path, tiny_arch, tiny_artifact):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="not a coder artifact"):
        export_artifacts(ExportOptions(tiny_arch, SPEC, foreign))
    assert (foreign / "holiday.jpg").read_bytes() == b"x"

    out = tmp_path / "b"
    export_artifacts(ExportOptions(tiny_arch, SPEC, out, validate=False))
    with pytest.raises(ArtifactError, match="--force"):
        export_artifacts(ExportOptions(tiny_arch, SPEC, out))
    export_artifacts(ExportOptions(tiny_arch, SPEC, out, force=True))
    assert load_artifact(out).manifest["validation"]["image_encoder.fp32.onnx"]["passed"]


def test_failed_gate_reports_numbers(tmp_path, tiny_arch, monkeypatch):
    monkeypatch.setattr(validate, "FP32_MAX_ABS", 0.0)
    with pytest.raises(ExportError, match=r"validation failed for image_encoder.fp32.onnx: max_abs_diff=\d"):
        export_artifacts(ExportOptions(tiny_arch, SPEC, tmp_path / "c"))
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_non_causal_text_tower_falls_back_to_full_context(tmp_path, tiny_arch, monkeypatch):
    """Simulate a tower whose pooled output depends on the padding: the export must notice and re-export."""
    from coder.export import towers

    real_forward = towers.TextTower.forward

    def padding_sensitive(self, input_ids):
        out = real_forward(self, input_ids)
        # Mixes in every position, padding included, like a bidirectional tower would.
        return out + 1e-2 * self.token_embedding(input_ids.long()).mean(dim=1)[:, : out.shape[1]]

    monkeypatch.setattr(towers.TextTower, "forward", padding_sensitive)
    out = tmp_path / "nc"
    export_artifacts(ExportOptions(tiny_arch, SPEC, out))
    m = load_artifact(out).manifest
    assert m["text"]["dynamic_seq"] is False
    assert "sliced_vs_full_max_abs" not in m["validation"]["text_encoder.fp32.onnx"]


def test_int8_resumes_only_for_the_same_calibration(tmp_path, tiny_arch, monkeypatch):
    """Interrupted after the int8 files: a re-run reuses (and re-validates) them; another calibration
    count re-quantizes them."""
    from coder.export import pipeline
    from coder.export.int8 import Int8Options

    calls = []
    real = pipeline.quantize_static_int8
    monkeypatch.setattr(pipeline, "quantize_static_int8", lambda *a, **k: calls.append(a[2].images) or real(*a, **k))
    monkeypatch.setattr(onnx_export, "export_text_encoder", _dies(1))
    out = tmp_path / "q"
    few = Int8Options(images=3, held_out=3, methods=("MinMax",))
    with pytest.raises(KeyboardInterrupt):
        export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32",), int8=True, int8_options=few))
    assert calls == [3]
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "quantize_static_int8", lambda *a, **k: calls.append(a[2].images) or real(*a, **k))
    validated = []
    real_check = validate.check_image
    monkeypatch.setattr(validate, "check_image", lambda p, *a: validated.append(p.name) or real_check(p, *a))
    res = export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32",), int8=True, int8_options=few))
    assert calls == [3]  # not quantized again
    assert {"image_encoder.int8.onnx", "image_encoder.int8.trt.onnx"} <= set(res.resumed_files) <= set(validated)
    assert res.manifest["int8"]["calibration"]["images"] == 3
    res = export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32",), force=True, int8=True,
                                         int8_options=Int8Options(images=2, held_out=3, methods=("MinMax",))))
    assert calls == [3, 2] and res.manifest["int8"]["calibration"]["images"] == 2
