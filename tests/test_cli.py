"""CLI through Typer's runner and as a real subprocess: output, --json, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coder import __version__
from coder.cli import EXIT_CODES, app
from coder.errors import ArtifactError, ConfigError, InputError

runner = CliRunner()
CODE = {cls: code for cls, code, _ in EXIT_CODES}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "coder", *map(str, args)], capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_embed_json_and_npy(tiny_artifact, sample_images, tmp_path):
    npy = tmp_path / "e.npy"
    res = runner.invoke(app, ["embed", *map(str, sample_images), "--artifacts", str(tiny_artifact),
                              "--json", "--out", str(npy)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["backend"] == "cpu" and data["dim"] == 64
    assert [i["file"] for i in data["items"]] == [str(p) for p in sample_images]
    arr = np.load(npy, allow_pickle=False)
    np.testing.assert_allclose(arr, np.array([i["embedding"] for i in data["items"]]), atol=1e-6)


def test_embed_bad_file_subprocess(tiny_artifact, sample_images, tmp_path):
    bad = tmp_path / "zero.jpg"
    bad.write_bytes(b"")
    res = _run("embed", sample_images[0], bad, "--artifacts", tiny_artifact)
    assert res.returncode == CODE[InputError]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: {bad}: empty file (0 bytes)"]
    assert "backend cpu" in res.stdout and "img0.jpg" in res.stdout


def test_missing_artifact_exit_code(sample_images, tmp_path):
    res = _run("embed", sample_images[0], "--artifacts", tmp_path / "none")
    assert res.returncode == CODE[ArtifactError]
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1


def test_unknown_backbone_one_line(tmp_path):
    res = _run("export", "--backbone", "ViT-Q/99", "--pretrained", "none", "--out", tmp_path / "x")
    assert res.returncode == CODE[ConfigError]
    assert res.stderr.startswith("error: unknown backbone 'ViT-Q/99'") and res.stderr.count("\n") == 1


def test_export_cli_tiny(tmp_path, tiny_arch):
    from tests.conftest import TINY_CONFIG

    out = tmp_path / "cli-tiny"
    args = ["export", "--backbone", "coder-tiny", "--model-config", str(TINY_CONFIG), "--pretrained", "none",
            "--precision", "both", "--out", str(out), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout[res.stdout.index("{"):])
    assert manifest["precisions"] == ["fp32", "fp16"]
    again = runner.invoke(app, args)
    assert again.exit_code == CODE[ArtifactError] and "--force" in again.output


def test_bad_option_values(tiny_artifact, sample_images):
    res = runner.invoke(app, ["embed", str(sample_images[0]), "--artifacts", str(tiny_artifact),
                              "--precision", "int3"])
    assert res.exit_code == CODE[ConfigError]
    res = runner.invoke(app, ["export", "--opset", "13", "--pretrained", "none"])
    assert res.exit_code == CODE[ConfigError] and "opset" in res.output


@pytest.mark.parametrize("args", [["embed", "x.jpg", "--batch-size", "0"], ["embed", "x.jpg", "--batch-size", "-1"],
                                  ["classify", "x.jpg", "--batch-size", "0"], ["classify", "x.jpg", "--top-k", "0"],
                                  ["bag", "b", "--every", "0"], ["bench", "--repeats", "0"],
                                  ["serve", "--http-port", "70000"], ["fit", "d", "--shots", "0"]])
def test_counts_below_their_minimum_are_usage_errors(args, tmp_path):
    """`embed --batch-size 0` was exit 70 and `-1` embedded nothing with exit 0: every count has a floor."""
    res = runner.invoke(app, [*args, "--artifacts", str(tmp_path)])
    assert res.exit_code == CODE[ConfigError], res.output
    assert args[-2] in res.output and "Traceback" not in res.output


def test_doctor_json():
    res = runner.invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["backends"]["ort-cpu"] == "ok" and "onnxruntime" in data["versions"]


def test_exit_code_table_is_consistent():
    codes = [code for _, code, _ in EXIT_CODES]
    assert len(codes) == len(set(codes)) and 0 not in codes


@pytest.fixture(scope="module")
def cli_art(tiny_artifact, tmp_path_factory):
    """A copy of the tiny artifact with one cifar10 bank, built through the CLI."""
    import shutil

    art = tmp_path_factory.mktemp("cli") / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    texts = art.parent / "c10.json"
    assert runner.invoke(app, ["texts", "init", "--classes", "cifar10", "--out", str(texts)]).exit_code == 0
    res = runner.invoke(app, ["bank", "build", "-a", str(art), "--texts", str(texts), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["classes"] == 10
    return art


def test_classify_json_lines_dir_and_glob(cli_art, sample_images, tmp_path):
    folder = sample_images[0].parent
    res = runner.invoke(app, ["classify", str(folder), str(folder / "*.png"), "-a", str(cli_art), "--json",
                              "--explain"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["file"] for r in lines] == sorted(str(p) for p in sample_images) + [str(sample_images[1])]
    from coder.text_bank.texts import builtin_lists

    names = builtin_lists()["cifar10"]["classes"]
    for r in lines:
        assert r["backend"] == "cpu" and r["name"] == names[r["label"]]
        assert r["top_k_names"] == [names[i] for i in r["top_k"]] and len(r["top_k"]) == 5
        assert r["stage1_scores"] == sorted(r["stage1_scores"], reverse=True)
        if r["reranked"]:  # the label is the rerank winner among the candidates
            assert r["label"] == r["rerank_candidates"][int(np.argmax(r["rerank_scores"]))]
        else:  # the label is stage 1's top-1
            assert r["label"] == r["top_k"][0]
    assert all(r["explain"] for r in lines)


def test_classify_bad_file_keeps_going_subprocess(cli_art, sample_images, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    res = _run("classify", sample_images[0], bad, sample_images[2], "-a", cli_art)
    assert res.returncode == CODE[InputError]
    assert [line for line in res.stderr.splitlines() if line.startswith("error")] == \
        [f"error: {bad}: cannot decode image (Truncated File Read)"]
    assert "2 images" in res.stdout


def test_classify_default_artifact_dir(cli_art, sample_images, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CODER_ARTIFACTS", raising=False)
    res = runner.invoke(app, ["classify", str(sample_images[0])])
    assert res.exit_code == CODE[ArtifactError] and "coder export" in res.output
    shutil.copytree(cli_art, tmp_path / "coder-artifacts" / "tiny")
    res = runner.invoke(app, ["classify", str(sample_images[0]), "--json"])
    assert res.exit_code == 0, res.output


def test_texts_init_refuses_overwrite_and_bad_texts(tmp_path, cli_art):
    out_file = tmp_path / "t.json"
    assert runner.invoke(app, ["texts", "init", "--classes", "dtd", "--out", str(out_file)]).exit_code == 0
    res = runner.invoke(app, ["texts", "init", "--classes", "dtd", "--out", str(out_file)])
    assert res.exit_code == CODE[ConfigError]
    data = json.loads(out_file.read_text())
    data["classes"][2]["att"] = [""]
    out_file.write_text(json.dumps(data))
    res = _run("bank", "build", "-a", cli_art, "--texts", out_file)
    from coder.errors import TextsError
    assert res.returncode == CODE[TextsError] and r"classes[2].att[0]: empty string" in res.stderr


def test_classify_backend_fallback_flag(cli_art, sample_images, quiet_cpu_fallback):
    """ORT quietly putting a CUDA session on the CPU: exit 6, or with --allow-fallback one warning line."""
    from coder.errors import BackendError

    args = ["classify", str(sample_images[0]), "-a", str(cli_art), "--backend", "cuda", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == CODE[BackendError] and "--allow-fallback" in res.output
    res = runner.invoke(app, args + ["--allow-fallback"])
    assert res.exit_code == 0, res.output
    assert "warning: backend 'cuda' requested but ONNX Runtime runs" in res.stderr
    assert json.loads(res.stdout.splitlines()[0])["backend"] == "cpu"


def test_classify_fused_and_plain_head_agree(cli_art, sample_images):
    base = ["classify", *map(str, sample_images), "-a", str(cli_art), "--json", "--tau", "1.01"]
    fused, plain = runner.invoke(app, base), runner.invoke(app, base + ["--no-fused-head"])
    assert fused.exit_code == plain.exit_code == 0, fused.output + plain.output
    a = [json.loads(x) for x in fused.stdout.splitlines()]
    b = [json.loads(x) for x in plain.stdout.splitlines()]
    assert [(r["label"], r["top_k"], r["reranked"]) for r in a] == [(r["label"], r["top_k"], r["reranked"]) for r in b]
    assert not (cli_art / "banks" / "cifar10" / "fused").exists()  # no encoder copy in the bank


def test_classify_fp16_on_an_fp32_only_artifact_names_the_fix(tiny_fp32_artifact, sample_images):
    from coder.errors import ArtifactError

    base = ["classify", str(sample_images[0]), "-a", str(tiny_fp32_artifact), "--json"]
    assert runner.invoke(app, base).exit_code == 0
    for extra in ([], ["--no-fused-head"], ["--backend", "cpu"]):
        res = runner.invoke(app, base + ["--precision", "fp16"] + extra)
        assert res.exit_code == CODE[ArtifactError], res.output
        assert "re-export with --precision fp16" in res.output and "Traceback" not in res.output


def test_classify_help_lists_every_backend():
    res = runner.invoke(app, ["classify", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert res.exit_code == 0
    for name in ("auto", "cpu", "cuda", "tensorrt-native"):
        assert name in res.output


def test_classify_table_shows_paths_relative_to_the_argument_wrapped(tiny_fp32_artifact, tmp_path):
    import os
    import shutil

    from coder.cli.predict import shown_name
    from coder.samples import synthetic_scene

    deep = tmp_path / "a-rather-long-folder-name" / "with-more-depth"
    deep.mkdir(parents=True)
    names = ["scene-number-one-from-the-left-camera.jpg", "scene-number-two-from-the-left-camera.jpg"]
    for i, n in enumerate(names):
        synthetic_scene(i, (96, 64)).save(deep / n)
    assert shown_name(str(deep / names[0]), [str(tmp_path)]) == f"a-rather-long-folder-name/with-more-depth/{names[0]}"
    assert shown_name("x/y.jpg", []) == "x/y.jpg"
    res = subprocess.run([sys.executable, "-m", "coder", "classify", str(tmp_path), "-a", str(tiny_fp32_artifact)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    flat = "".join(line.split("│")[1].strip() for line in res.stdout.splitlines() if line.startswith("│"))
    for n in names:  # wrapped over lines, but every character is there
        assert n.replace(" ", "") in flat
    assert "…" not in res.stdout
    assert str(tmp_path) not in "".join(line for line in res.stdout.splitlines()[1:] if "│" in line)
    shutil.rmtree(tmp_path / "a-rather-long-folder-name")


def test_classify_input_without_images_is_an_error(cli_art, sample_images, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    res = _run("classify", empty, "-a", cli_art)
    assert res.returncode == CODE[InputError] == 1, res.stderr
    assert f"error: {empty}: directory holds no image files" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(app, ["classify", str(sample_images[0]), str(tmp_path / "*.nothing"), "-a", str(cli_art),
                              "--json"])
    assert res.exit_code == 1 and "pattern matches no file" in res.stderr
    assert len(res.stdout.splitlines()) == 1  # the good image was still classified


def _texts_file(tmp_path):
    from coder.text_bank.texts import init_texts, save_texts

    path = tmp_path / "t.json"
    save_texts(path, init_texts("cifar10"))
    return path


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"),
    ('{"pairs": [{"true": "cat", "predicted": 5}]}', r"pairs\[0\].predicted: expected a class name string, got int"),
    ('{"pairs": [["cat", "dog"]]}', r"pairs\[0\].true: expected a class name string"),
    ('{"pairs": {"cat": "dog"}}', "pairs: expected a list"),
])
def test_generate_bad_pairs_file_is_a_usage_error(tmp_path, content, needle):
    pairs = tmp_path / "pairs.json"
    if content is not None:
        pairs.write_text(content)
    res = _run("texts", "generate", _texts_file(tmp_path), "--llm-url", "http://127.0.0.1:9/v1", "--model", "m",
               "--kinds", "pair", "--pairs-file", pairs)
    assert res.returncode == CODE[ConfigError] == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    import re
    assert re.search(needle, res.stderr), res.stderr


def test_usage_errors_exit_2(tmp_path, monkeypatch):
    texts = _texts_file(tmp_path)
    src = tmp_path / "d.json"
    src.write_text('{"cat": ["whiskers"]}')
    res = runner.invoke(app, ["texts", "import", str(texts), str(src), "--format", "bogus"])
    assert res.exit_code == 2 and "--format 'bogus'" in res.output
    res = runner.invoke(app, ["texts", "import", str(texts), str(src), "--kind", "pair"])
    assert res.exit_code == 2 and "--kind 'pair'" in res.output
    monkeypatch.delenv("CODER_TEST_NO_SUCH_KEY", raising=False)
    res = runner.invoke(app, ["texts", "generate", str(texts), "--llm-url", "http://127.0.0.1:9/v1", "--model", "m",
                              "--kinds", "att", "--api-key-env", "CODER_TEST_NO_SUCH_KEY"])
    assert res.exit_code == 2 and "CODER_TEST_NO_SUCH_KEY" in res.output


def _help_commands(command, path=()):
    """(path, click command) for every command and group under the root app."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _help_commands(sub, (*path, name))


def test_help_texts_keep_their_brackets(monkeypatch):
    """Typer renders help as Rich markup: "[trt]" or "[text, ...]" must print as written."""
    import re

    import typer

    monkeypatch.setenv("COLUMNS", "250")
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _help_commands(root):
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        shown = " ".join(res.output.replace("│", " ").split())
        texts = [command.help or ""] + [p.help or "" for p in command.params]
        for text in texts:
            for segment in re.findall(r"\[[^\]]*\]|\{[^}]*\}", text.replace("\\[", "[")):
                assert " ".join(segment.split()) in shown, (path, segment)
                checked += 1
    assert checked >= 4
    engine = " ".join(runner.invoke(app, ["build-engine", "--help"]).output.split())
    assert "needs a CUDA GPU and the [trt] extra" in engine
    imp = " ".join(runner.invoke(app, ["texts", "import", "--help"]).output.replace("│", " ").split())
    assert "{class name: [text, ...]}" in imp


def test_file_names_with_brackets_are_shown_as_given(tiny_artifact, cli_art, sample_images, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    shutil.copy(sample_images[0], tmp_path / "cat[bold].jpg")
    res = runner.invoke(app, ["embed", "cat[bold].jpg", "--artifacts", str(tiny_artifact)])
    assert res.exit_code == 0, res.output
    assert "cat[bold].jpg" in res.stdout
    res = runner.invoke(app, ["classify", "cat[bold].jpg", "-a", str(cli_art)])
    assert res.exit_code == 0, res.output
    assert "cat[bold].jpg" in res.stdout
    res = runner.invoke(app, ["texts", "list"])
    assert "'missile' -> 'projectile'" in " ".join(res.stdout.replace("│", " ").split())


def test_closed_stdout_pipe_is_quiet_exit_141():
    """`coder ... | head` closes the pipe early: no traceback, no 'internal error', exit 141."""
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before coder writes anything
    try:
        r = subprocess.run([sys.executable, "-m", "coder", "texts", "list", "--json"], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    finally:
        os.close(write_end)
    assert r.returncode == 141, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
