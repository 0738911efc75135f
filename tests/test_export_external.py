"""ONNX external data (models over 2 GB): forced on a tiny model, hashed, loaded by the runtime."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from coder.errors import ArtifactError, ChecksumError
from coder.export.pipeline import ExportOptions, export_artifacts
from coder.export.registry import PretrainedSpec
from coder.manifest import load_artifact

SPEC = PretrainedSpec("random", "none", 0)


@pytest.fixture(scope="module")
def external(tmp_path_factory, tiny_arch):
    out = tmp_path_factory.mktemp("ext") / "art"
    export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32", "fp16"), int8=True, external_data=True))
    return out


def test_every_encoder_keeps_its_weights_outside(external):
    import onnx

    m = load_artifact(external).manifest
    for name in [n for n in m["files"] if n.endswith(".onnx")]:
        data = f"{name}.data"
        assert m["files"][name]["external_data"] == [data]
        assert m["files"][data]["bytes"] == (external / data).stat().st_size > m["files"][name]["bytes"]
        inline = onnx.load(str(external / name), load_external_data=False)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in inline.graph.initializer)
    assert all(v["passed"] for v in m["validation"].values())
    assert not list(external.glob(".tmp-*"))


def test_runtime_loads_it_and_matches_the_inline_export(external, tiny_artifact, sample_images):
    from coder.runtime.encoder import ImageEncoder, embed_files
    from coder.text_bank.text_encoder import TextEncoder

    for precision in ("fp32", "fp16", "int8"):
        a = embed_files(ImageEncoder.load(external, precision), [str(p) for p in sample_images]).embeddings
        b = embed_files(ImageEncoder.load(tiny_artifact, precision), [str(p) for p in sample_images]).embeddings
        assert np.abs(a - b).max() <= 1e-5
    texts = ["a photo of a cat.", "a dog"]
    assert np.abs(TextEncoder.load(external).encode(texts) - TextEncoder.load(tiny_artifact).encode(texts)).max() \
        <= 1e-6


def test_corrupt_or_missing_weights_file_is_refused(external, tmp_path):
    from coder.runtime.encoder import ImageEncoder

    art = tmp_path / "a"
    shutil.copytree(external, art)
    (art / ".coder-verified.json").unlink(missing_ok=True)
    data = art / "image_encoder.fp32.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="image_encoder.fp32.onnx.data"):
        ImageEncoder.load(art, "fp32")
    data.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(art)


def test_inline_export_replaces_a_stale_weights_file(external, tmp_path, tiny_arch):
    """Re-exporting inline (--force) must not leave an old .data file behind."""
    art = tmp_path / "a"
    shutil.copytree(external, art)
    export_artifacts(ExportOptions(tiny_arch, SPEC, art, ("fp32",), force=True))
    assert not (art / "image_encoder.fp32.onnx.data").exists() and not (art / "text_encoder.fp32.onnx.data").exists()
    assert "external_data" not in load_artifact(art).manifest["files"]["image_encoder.fp32.onnx"]


def test_classify_with_the_fused_head_on_external_data(external, tmp_path, sample_images):
    import json

    from typer.testing import CliRunner

    from coder.cli import app

    runner = CliRunner()
    art = tmp_path / "a"
    shutil.copytree(external, art)
    texts = tmp_path / "c10.json"
    assert runner.invoke(app, ["texts", "init", "--classes", "cifar10", "--out", str(texts)]).exit_code == 0
    assert runner.invoke(app, ["bank", "build", "-a", str(art), "--texts", str(texts)]).exit_code == 0
    rows = {}
    for flag in ("--fused-head", "--no-fused-head"):
        res = runner.invoke(app, ["classify", str(sample_images[0]), "-a", str(art), "--json", flag])
        assert res.exit_code == 0, res.output
        rows[flag] = json.loads(res.stdout.splitlines()[0])
    assert rows["--fused-head"]["name"] == rows["--no-fused-head"]["name"]


def test_manifest_without_the_new_fields_loads_with_defaults(tiny_artifact, tmp_path, sample_images):
    """Artifacts exported before preprocess.source / reparameterization / external_data / eos_id still work."""
    import json

    from coder.runtime.encoder import ImageEncoder, embed_files
    from coder.text_bank.text_encoder import TextEncoder

    art = tmp_path / "old"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    m = json.loads((art / "manifest.json").read_text())
    m["preprocess"].pop("source", None)
    m.pop("reparameterization", None)
    m["text"]["tokenizer"].pop("eos_id", None)
    for entry in m["files"].values():
        entry.pop("external_data", None)
    (art / "manifest.json").write_text(json.dumps(m))
    old = embed_files(ImageEncoder.load(art), [str(sample_images[0])]).embeddings
    new = embed_files(ImageEncoder.load(tiny_artifact), [str(sample_images[0])]).embeddings
    np.testing.assert_array_equal(old, new)
    assert TextEncoder.load(art).encode(["a cat"]).shape == (1, load_artifact(art).embed_dim)


@pytest.fixture
def protobuf_limit(monkeypatch):
    """Protobuf's 2 GiB message limit and coder's external-data threshold, scaled down to the tiny model.

    Serializing a ModelProto larger than ``limit`` raises EncodeError exactly as a > 2 GB model does
    (``EncodeError: Failed to serialize proto``); the tiny text encoder (13 MB of fp32 weights) is "over 2 GB".
    """
    import onnx
    from google.protobuf.message import EncodeError

    from coder.export import onnx_files

    limit = 4_000_000
    serialize = onnx.ModelProto.SerializeToString

    def limited(self, **kw):
        if self.ByteSize() > limit:
            raise EncodeError("Failed to serialize proto")
        return serialize(self, **kw)

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", limited)
    monkeypatch.setattr(onnx_files, "EXTERNAL_THRESHOLD_BYTES", limit * 9 // 10)
    return limit


def test_fp16_of_a_model_over_the_protobuf_limit(protobuf_limit, tmp_path, tiny_arch, tiny_artifact):
    """fp16 conversion never serializes the whole fp32 model, and writes external data when needed."""
    import onnx

    from coder.text_bank.text_encoder import TextEncoder

    out = tmp_path / "big"
    export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32", "fp16")))
    m = load_artifact(out).manifest
    assert (out / "text_encoder.fp32.onnx").stat().st_size > protobuf_limit  # "over 2 GB", inline as torch wrote it
    assert m["files"]["text_encoder.fp16.onnx"]["external_data"] == ["text_encoder.fp16.onnx.data"]
    assert "external_data" not in m["files"]["image_encoder.fp16.onnx"]  # small enough: inline
    assert all(v["passed"] for v in m["validation"].values())
    assert not list(out.glob(".tmp-*"))
    texts = ["a photo of a cat.", "a dog"]
    got = TextEncoder.load(out, "fp16").encode(texts)
    want = TextEncoder.load(tiny_artifact, "fp16").encode(texts)  # the same weights, converted inline
    assert np.abs(got - want).max() <= 1e-6
    half = onnx.load(str(out / "text_encoder.fp16.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in half.graph.initializer)


def test_tensorrt_engine_from_external_data(external, tmp_path, monkeypatch):
    """The TensorRT parser is given the model's path, so it finds weights stored outside the graph (> 2 GB)."""
    from coder.engines.trt import BuildOptions
    from coder.runtime.engine_build import build_image_engine
    from tests import fakes

    gpu = fakes.install(monkeypatch)
    art = tmp_path / "a"
    shutil.copytree(external, art)
    built = build_image_engine(art, BuildOptions(max_batch=8, opt_batch=4))
    assert built.validation.passed
    assert gpu.cudart.violations == []
