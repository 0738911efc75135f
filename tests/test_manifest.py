"""Loading an artifact checks format version and every file's sha256 before use."""

import json
import shutil

import pytest

from coder.errors import ArtifactError, ChecksumError
from coder.manifest import PreprocessConfig, encoder_filename, load_artifact


@pytest.fixture
def art_copy(tiny_artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_artifact, dst)
    return dst


def test_loads_and_describes(tiny_artifact):
    art = load_artifact(tiny_artifact)
    assert art.encoder("image", "int8").name == "image_encoder.int8.onnx"
    with pytest.raises(ArtifactError, match="no int8 text encoder"):
        art.encoder("text", "int8")
    assert art.architecture == "coder-tiny" and art.embed_dim == 64
    assert isinstance(art.preprocess, PreprocessConfig) and art.preprocess.size == (64, 64)
    assert art.encoder("image", "fp32").name == encoder_filename("image", "fp32")


def test_missing_dir(tmp_path):
    with pytest.raises(ArtifactError, match="coder export"):
        load_artifact(tmp_path / "nothing")


def test_other_format_version(art_copy):
    m = json.loads((art_copy / "manifest.json").read_text())
    m["format_version"] = 99
    (art_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format_version 99"):
        load_artifact(art_copy)


def test_malformed_manifest(art_copy):
    (art_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(art_copy)


def test_flipped_byte_is_caught_even_after_a_verified_load(art_copy):
    art = load_artifact(art_copy)
    path = art.encoder("image", "fp32")  # verified and cached by stat
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(ChecksumError, match="sha256"):
        load_artifact(art_copy).encoder("image", "fp32")


def test_truncated_file(art_copy):
    p = art_copy / encoder_filename("text", "fp32")
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ChecksumError, match="size"):
        load_artifact(art_copy)


def test_missing_listed_file(art_copy):
    (art_copy / encoder_filename("text", "fp16")).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(art_copy)


def test_precision_not_exported(tmp_path, tiny_arch):
    from coder.export.pipeline import ExportOptions, export_artifacts
    from coder.export.registry import PretrainedSpec

    out = tmp_path / "fp32only"
    export_artifacts(ExportOptions(tiny_arch, PretrainedSpec("random", "none"), out, ("fp32",), validate=False))
    with pytest.raises(ArtifactError, match="--precision fp16"):
        load_artifact(out).encoder("image", "fp16")
    with pytest.raises(ArtifactError, match="--int8"):
        load_artifact(out).encoder("image", "int8")

