"""coder pack: a portable, verified copy of an artifact; no engines, no caches."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from coder.cli import app
from coder.cli.common import EXIT_CODES
from coder.errors import ArtifactError

CODE = {cls: code for cls, code, _ in EXIT_CODES}


@pytest.fixture
def art(tiny_fp32_artifact, tmp_path):
    """A copy with the clutter a used artifact has: engines, caches, an engine record."""
    a = tmp_path / "src"
    shutil.copytree(tiny_fp32_artifact, a)
    (a / "engines").mkdir(exist_ok=True)
    (a / "engines" / "image_encoder.fp16.engine").write_bytes(b"engine")
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["engines"] = {"image_encoder.fp16.engine": {"path": str(a / "engines")}}
    (a / "manifest.json").write_text(json.dumps(manifest))
    return a


def test_pack_copies_what_runs_and_checks_it(art, tmp_path, sample_images):
    dest = tmp_path / "usb" / "copy"
    res = CliRunner().invoke(app, ["pack", str(art), str(dest), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["banks"] == ["cifar10"] and summary["files"] >= 3
    names = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    manifest = json.loads((dest / "manifest.json").read_text())
    assert names == {"manifest.json", *manifest["files"], "banks/cifar10/bank.json", "banks/cifar10/bank.npz"}
    assert "engines" not in manifest
    r = CliRunner().invoke(app, ["classify", str(sample_images[0]), "-a", str(dest), "--json"])
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.joinpath("usb").glob(".tmp-*"))


def test_pack_refuses_a_corrupt_source_and_a_used_destination(art, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("keep")
    res = CliRunner().invoke(app, ["pack", str(art), str(used)])
    assert res.exit_code == CODE[ArtifactError] and (used / "x").read_text() == "keep"
    enc = art / "image_encoder.fp32.onnx"
    data = bytearray(enc.read_bytes())
    data[len(data) // 2] ^= 0xFF
    enc.write_bytes(bytes(data))
    (art / ".coder-verified.json").unlink(missing_ok=True)
    dest = tmp_path / "copy"
    res = CliRunner().invoke(app, ["pack", str(art), str(dest)])
    assert res.exit_code == CODE[ArtifactError], res.output
    assert not dest.exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_copy_changed_in_transit_is_refused(art, tmp_path):
    from coder.pack import pack_artifact, verify_copy

    dest = tmp_path / "copy"
    pack_artifact(art, dest)
    npz = dest / "banks" / "cifar10" / "bank.npz"
    data = bytearray(npz.read_bytes())
    data[-100] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        verify_copy(dest)
