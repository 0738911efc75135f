"""`coder embed --text/--texts-file`, `coder export --list`, one JSON document for `export --engine --json`."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from coder.cli import EXIT_CODES, app
from coder.errors import ArtifactError, ConfigError, WeightsError
from tests.conftest import TINY_CONFIG

runner = CliRunner()
CODE = {cls: code for cls, code, _ in EXIT_CODES}

# Inner "!" (BPE id 0), over-long, unicode, emoji, empty and blank, short and long in one batch.
TEXTS = ["a cat which has a loud meow!(sometimes)", "!@#", "wow!;", "stop!—now",
         " ".join(f"word{i} and, another!" for i in range(60)), "naïve café ÉCOLE", "日本語のテキスト",
         "a 🐈 and a 🐕‍🦺", "", "   ", "cat"]


@pytest.fixture(scope="module")
def open_clip_reference(tiny_artifact):
    """open_clip's own tokenizer + encode_text on the torch model the tiny artifact was exported from."""
    import open_clip
    import torch

    from coder.export.weights import rebuild_from_manifest
    from coder.manifest import load_artifact

    model = rebuild_from_manifest(load_artifact(tiny_artifact).manifest).eval()
    with torch.no_grad():
        emb = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(TEXTS)).float().numpy()
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_embed_text_matches_open_clip(tiny_artifact, open_clip_reference, tmp_path):
    npy = tmp_path / "t.npy"
    args = ["embed", "-a", str(tiny_artifact), "--json", "--out", str(npy), "--batch-size", "4"]
    res = runner.invoke(app, args + [a for t in TEXTS for a in ("--text", t)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [i["text"] for i in data["items"]] == TEXTS and data["dim"] == 64 and data["backend"] == "cpu"
    got = np.array([i["embedding"] for i in data["items"]])
    np.testing.assert_allclose(got, open_clip_reference, atol=2e-5)
    np.testing.assert_allclose(np.load(npy, allow_pickle=False), open_clip_reference, atol=2e-5)


def test_texts_file_subprocess(tiny_artifact, open_clip_reference, tmp_path):
    """One text per line, empty lines are texts, CRLF and a BOM are file syntax, as a real process."""
    f = tmp_path / "texts.txt"
    f.write_bytes(("\ufeff" + "\r\n".join(TEXTS) + "\r\n").encode("utf-8"))
    npy = tmp_path / "f.npy"
    res = subprocess.run([sys.executable, "-m", "coder", "embed", "-a", str(tiny_artifact), "--texts-file", str(f),
                          "--batch-size", "1", "--out", str(npy)], capture_output=True, text=True,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    assert f"{len(TEXTS)} text embeddings, dim 64, backend cpu" in res.stdout
    np.testing.assert_allclose(np.load(npy, allow_pickle=False), open_clip_reference, atol=2e-5)


def test_texts_file_lines():
    from coder.cli.artifacts import read_text_lines

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.txt"
        for content, want in [("cat\n\ndog\n", ["cat", "", "dog"]), ("cat", ["cat"]), ("\n", [""]),
                              ("\n\n", ["", ""]), ("a [bold]b[/bold]\r\nc", ["a [bold]b[/bold]", "c"])]:
            p.write_text(content, newline="")
            assert read_text_lines(p) == want, content
        p.write_text("")
        with pytest.raises(ConfigError, match="no line"):
            read_text_lines(p)
        p.write_bytes(b"caf\xe9\n")
        with pytest.raises(ConfigError, match="not UTF-8"):
            read_text_lines(p)


def test_embed_text_table_escapes_markup(tiny_artifact):
    res = runner.invoke(app, ["embed", "-a", str(tiny_artifact), "--text", "cat[bold].jpg", "--text", ""])
    assert res.exit_code == 0, res.output
    assert "cat[bold].jpg" in res.stdout and "''" in res.stdout


@pytest.mark.parametrize("args, needle", [
    (["--text", "cat", "some.jpg"], "not both"),
    ([], "nothing to embed"),
    (["--texts-file", "/nonexistent/t.txt"], "cannot read"),
    (["--text", "cat", "--precision", "int8"], "fp32 or fp16"),
])
def test_embed_text_usage_errors(tiny_artifact, args, needle):
    res = runner.invoke(app, ["embed", "-a", str(tiny_artifact), *args])
    assert res.exit_code == CODE[ConfigError] and needle in res.output


def test_embed_text_missing_artifact(tmp_path):
    res = runner.invoke(app, ["embed", "-a", str(tmp_path / "none"), "--text", "cat"])
    assert res.exit_code == CODE[ArtifactError]


def test_export_list_json_and_unknown_backbone_hint():
    res = runner.invoke(app, ["export", "--list", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    rows = {r["name"]: r for r in data["architectures"]}
    assert rows["ViT-B-32"]["verified"] and "openai" in rows["ViT-B-32"]["pretrained"]
    assert rows["ViT-B-32"]["family"] in data["verified_families"]
    assert rows["RN50"]["verified"] and rows["RN50"]["family"] == "modified-resnet/clip-text"
    assert not rows["nllb-clip-base"]["verified"] and rows["nllb-clip-base"]["family"] == "vit/hf-text"
    assert rows["coca_ViT-B-32"]["family"] == "coca"
    res = runner.invoke(app, ["export", "--backbone", "ViT-Q/99", "--pretrained", "none"])
    assert res.exit_code == CODE[ConfigError] and "`coder export --list` shows all" in res.output
    table = runner.invoke(app, ["export", "--list"], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "ViT-B-32" in table.stdout and "yes" in table.stdout


def test_export_list_includes_a_custom_config():
    res = runner.invoke(app, ["export", "--list", "--json", "--model-config", str(TINY_CONFIG)])
    rows = {r["name"]: r for r in json.loads(res.stdout)["architectures"]}
    assert rows["coder-tiny"] == {"name": "coder-tiny", "family": "vit/clip-text", "verified": True, "pretrained": []}


def test_export_engine_json_is_one_document(tmp_path, tiny_arch, monkeypatch):
    """--engine tensorrt --json: the manifest and the engine record in a single JSON document (engine faked)."""
    from coder.engines import trt
    from coder.runtime import engine_build

    built = []

    def fake_build(artifact_dir, opts, engine_dir=None, bank=None, k=5, report=lambda m: True):
        built.append(opts)
        return engine_build.EngineBuild(tmp_path / "e.plan", {"tensorrt": "10.x", "gpu": "fake"},
                                        engine_build.EngineValidation(images=8, min_cosine=0.9999, mean_cosine=0.99995,
                                                                      top1_agreement=None, passed=True))

    monkeypatch.setattr(trt, "require_trt", lambda: None)
    monkeypatch.setattr(engine_build, "build_image_engine", fake_build)
    res = runner.invoke(app, ["export", "--backbone", "coder-tiny", "--model-config", str(TINY_CONFIG),
                              "--pretrained", "none", "--no-validate", "--classes", "none", "--engine", "tensorrt",
                              "--out", str(tmp_path / "art"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # exactly one document: json.loads fails on two
    assert doc["format"] == "coder.artifact" and doc["precisions"] == ["fp32", "fp16"]
    assert doc["tensorrt_engine"]["engine"] == str(tmp_path / "e.plan")
    assert doc["tensorrt_engine"]["validation"]["min_cosine"] == 0.9999 and len(built) == 1


def test_failed_force_export_keeps_the_artifact_cli(tmp_path, tiny_arch):
    out = tmp_path / "art"
    base = ["export", "--backbone", "coder-tiny", "--model-config", str(TINY_CONFIG), "--no-validate",
            "--classes", "none", "--out", str(out)]
    assert runner.invoke(app, base + ["--pretrained", "none"]).exit_code == 0
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    res = runner.invoke(app, base + ["--pretrained", str(bad), "--force"])
    assert res.exit_code == CODE[WeightsError]
    res = runner.invoke(app, ["embed", "-a", str(out), "--text", "still works", "--json"])
    assert res.exit_code == 0, res.output


def test_export_without_the_export_extra_is_a_usage_error(monkeypatch, tmp_path):
    """A runtime-only install (no torch/open_clip) gets one line naming the extra, exit 2, not exit 70."""
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` now raises ImportError
    res = runner.invoke(app, ["export", "-b", "ViT-B-32", "--pretrained", "none", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2, res.output
    assert "[export] extra" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "a").exists()
