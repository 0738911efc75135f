"""coder export: manifest contents, validation record, atomic + resumable writes, --force."""

import json
import pytest

from coder.errors import ArtifactError, ExportError
from coder.export import onnx_export, validate
from coder.export.pipeline import STATE_NAME, ExportOptions, export_artifacts
from coder.export.registry import PretrainedSpec
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
    assert set(m["files"]) == {"image_encoder.fp32.onnx", "image_encoder.fp16.onnx", "image_encoder.int8.onnx",
                               "text_encoder.fp32.onnx", "text_encoder.fp16.onnx", "bpe_simple_vocab_16e6.txt.gz"}
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


def test_interrupted_export_resumes(tmp_path, tiny_arch, monkeypatch):
    out = tmp_path / "a"
    real = onnx_export.convert_fp16
    calls = {"n": 0}

    def dies_midway(src, dst):
        calls["n"] += 1
        # Leave a half-written temp file, as a killed process would, then die.
        (dst.parent / f".tmp-{dst.name}-crash").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "convert_fp16", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32", "fp16")))
    assert not (out / "manifest.json").exists()
    assert not (out / "image_encoder.fp16.onnx").exists()
    assert (out / "image_encoder.fp32.onnx").exists() and (out / STATE_NAME).exists()

    monkeypatch.setattr(onnx_export, "convert_fp16", real)
    result = export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32", "fp16")))
    assert "image_encoder.fp32.onnx" in result.resumed_files
    assert not list(out.glob(".tmp-*"))
    load_artifact(out).encoder("image", "fp16")


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


def test_int8_falls_back_to_per_channel_when_the_gate_fails(tmp_path, tiny_arch, monkeypatch):
    calls = []
    real = onnx_export.quantize_int8

    def spy(src, dst, per_channel=False):
        calls.append(per_channel)
        real(src, dst, per_channel)
        if not per_channel:  # make the per-tensor result fail validation
            import onnx
            from onnx import numpy_helper
            m = onnx.load(str(dst))
            for init in m.graph.initializer:
                if init.data_type == onnx.TensorProto.FLOAT and init.dims and len(init.dims) >= 2:
                    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0 + 0.5, init.name))
            onnx.save(m, str(dst))

    monkeypatch.setattr(onnx_export, "quantize_int8", spy)
    out = tmp_path / "q"
    export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32",), int8=True))
    assert calls == [False, True]
    assert load_artifact(out).manifest["validation"]["image_encoder.int8.onnx"]["per_channel"] is True
