"""Models that cannot export fail with a typed one-line error (exit 4) naming the model, reason and fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from coder.cli import app
from coder.cli.common import EXIT_CODES
from coder.errors import ArtifactError, ConfigError, ExportError

runner = CliRunner()
CODE = {cls: code for cls, code, _ in EXIT_CODES}


@pytest.mark.torch  # a real export attempt: needs open_clip
def test_hub_only_tokenizer_offline_is_exit_4_subprocess(tmp_path):
    res = subprocess.run([sys.executable, "-m", "coder", "export", "-b", "ViT-B-16-SigLIP", "--pretrained", "none",
                          "--out", str(tmp_path / "a"), "--classes", "none"], capture_output=True, text=True,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"}, timeout=300)
    assert res.returncode == CODE[ExportError], res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1
    assert "ViT-B-16-SigLIP" in errors[0] and "timm/ViT-B-16-SigLIP" in errors[0] and "network access" in errors[0]


def test_hf_text_tower_needing_the_hub_is_exit_4(tmp_path):
    res = runner.invoke(app, ["export", "-b", "nllb-clip-base", "--pretrained", "none", "--out", str(tmp_path / "a"),
                              "--classes", "none"])
    assert res.exit_code == CODE[ExportError]
    assert "nllb-clip-base" in res.output and "Hugging Face hub" in res.output


def test_unknown_backbone_lists_close_names():
    res = runner.invoke(app, ["export", "-b", "MobileClip-S9", "--pretrained", "none"])
    assert res.exit_code == CODE[ConfigError]
    assert "MobileCLIP-S1" in res.output or "MobileCLIP-S2" in res.output


def test_operator_without_onnx_symbolic_names_model_and_fix(tmp_path, tiny_arch, monkeypatch):
    import torch

    def no_symbolic(*a, **k):
        raise torch.onnx.errors.UnsupportedOperatorError("aten::fancy_rope", 17, 99)

    monkeypatch.setattr(torch.onnx, "export", no_symbolic)
    res = runner.invoke(app, ["export", "-b", tiny_arch, "--pretrained", "none", "--out", str(tmp_path / "a"),
                              "--classes", "none"])
    assert res.exit_code == CODE[ExportError], res.output
    assert tiny_arch in res.output and "aten::fancy_rope" in res.output and "--opset" in res.output


def test_unexpected_failure_inside_a_family_is_typed_not_a_traceback(tmp_path, tiny_arch, monkeypatch):
    from coder.export import reparam

    def boom(visual):
        raise KeyError("stem.reparam_conv")

    monkeypatch.setattr(reparam, "reparameterize", boom)
    res = runner.invoke(app, ["export", "-b", tiny_arch, "--pretrained", "none", "--out", str(tmp_path / "a"),
                              "--classes", "none"])
    assert res.exit_code == CODE[ExportError]
    assert isinstance(res.exception, SystemExit)
    assert f"{tiny_arch}: preparing the model failed (KeyError" in res.output


@pytest.mark.parametrize("mode", ["clips"])
def test_tokenizer_mode_without_runtime_is_refused(mode, tmp_path):
    from types import SimpleNamespace

    from open_clip.tokenizer import HFTokenizer

    from coder.export.tokenizer_info import save_tokenizer

    fake = HFTokenizer.__new__(HFTokenizer)
    fake.tokenizer_mode, fake.tokenizer = mode, SimpleNamespace()
    with pytest.raises(ExportError, match="mode 'clips'"):
        save_tokenizer(fake, tmp_path, "X")


@pytest.mark.parametrize("where", ["torch-write", "wrapped", "fp16-save"])
def test_full_disk_during_export_is_exit_3_naming_the_directory(tmp_path, tiny_arch, monkeypatch, where):
    """ENOSPC at a write is "no space left on DIR" (exit 3), never "this model family is not supported" (4)."""
    import errno
    from pathlib import Path

    import onnx
    import torch

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    def half_written(module, args, f, **kw):  # torch.onnx.export: the write stops half-way on a full disk
        Path(f).write_bytes(b"\x08\x07")
        if where == "wrapped":  # a library that wraps the OSError in its own type
            try:
                full_disk()
            except OSError as e:
                raise RuntimeError("serialization failed") from e
        full_disk()

    if where == "fp16-save":
        monkeypatch.setattr(onnx, "save_model", full_disk)
    else:
        monkeypatch.setattr(torch.onnx, "export", half_written)
    out = tmp_path / "a"
    res = runner.invoke(app, ["export", "-b", tiny_arch, "--pretrained", "none", "--out", str(out),
                              "--classes", "none", "--no-validate", "--precision", "fp16"])
    assert res.exit_code == CODE[ArtifactError] == 3 and isinstance(res.exception, SystemExit), res.output
    assert f"no space left on {out}" in " ".join(res.output.split()) and "not supported" not in res.output


def test_storage_failure_reads_the_chain_but_not_unrelated_permissions():
    import errno

    from coder.export.families import storage_failure

    def chained(inner: OSError, explicit: bool):
        try:
            try:
                raise inner
            except OSError as e:
                if explicit:
                    raise RuntimeError("wrapped") from e
                raise RuntimeError("another failure while handling it")
        except RuntimeError as outer:
            return outer

    assert "no space left on /a" in str(storage_failure(OSError(errno.ENOSPC, "full", "/a/x.onnx")))
    assert "no space left on art" in str(storage_failure(RuntimeError("write: No space left on device"), "art"))
    assert "read-only" in str(storage_failure(chained(OSError(errno.EROFS, "ro"), explicit=True), "art"))
    assert storage_failure(chained(OSError(errno.EACCES, "denied"), explicit=False), "art") is None
    assert "no space left" in str(storage_failure(chained(OSError(errno.ENOSPC, "full"), explicit=False), "art"))
    assert storage_failure(ValueError("a real export bug"), "art") is None
