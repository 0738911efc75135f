"""`--classes` / `--classes-file`: the bank of `texts init` + `texts synonyms -a` + `bank build`, cached."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coder.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def art(tiny_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "art"
    shutil.copytree(tiny_artifact, out, ignore=shutil.ignore_patterns("banks"))
    return out


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_classes_file_equals_init_synonyms_build(art, sample_images, tmp_path):
    names = tmp_path / "mine.txt"
    names.write_text("cat\ndog\nzebra\ntabby_cat\n")
    texts = tmp_path / "mine.json"
    for args in (["texts", "init", "--classes", str(names), "--out", str(texts)],
                 ["texts", "synonyms", str(texts), "-a", str(art)],
                 ["bank", "build", "-a", str(art), "--texts", str(texts)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    imgs = list(map(str, sample_images))
    want = _json_lines(runner.invoke(app, ["classify", *imgs, "-a", str(art), "--bank", "mine", "--json",
                                           "--top-k", "4"]).stdout)
    res = runner.invoke(app, ["classify", *imgs, "-a", str(art), "--classes-file", str(names), "--json",
                              "--top-k", "4"])
    assert res.exit_code == 0, res.output
    got = _json_lines(res.stdout)
    assert [r["top_k_names"] for r in got] == [r["top_k_names"] for r in want] and len(got) == 3
    assert [r["stage1_scores"] for r in got] == [r["stage1_scores"] for r in want]  # same cached embeddings
    assert [r["name"] for r in got] == [r["name"] for r in want]
    assert {r["bank_sha256"] for r in got} == {r["bank_sha256"] for r in want}  # the same bank version
    res = runner.invoke(app, ["classify", *imgs, "-a", str(art), "--classes", "cat, dog,zebra,tabby cat", "--json",
                              "--top-k", "4"])
    assert [r["stage1_scores"] for r in _json_lines(res.stdout)] == [r["stage1_scores"] for r in want]


def test_repeat_call_only_loads_the_cached_bank(art, sample_images, monkeypatch):
    args = ["classify", str(sample_images[0]), "-a", str(art), "--classes", "lion,tiger", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    from coder.text_bank.text_encoder import TextEncoder

    monkeypatch.setattr(TextEncoder, "load", classmethod(lambda *a, **k: pytest.fail("cached list encoded again")))
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert _json_lines(again.stdout)[0]["stage1_scores"] == _json_lines(first.stdout)[0]["stage1_scores"]
    assert len(list((art / "banks" / ".classes").glob("*/bank.json"))) >= 1


@pytest.mark.parametrize("args,match", [
    (["--classes", "cat,,dog"], "non-empty"), (["--classes", "cat,Cat"], "twice"),
    (["--classes", "cat", "--bank", "x"], "choose one"),
])
def test_bad_class_lists_exit_2(art, sample_images, args, match):
    res = runner.invoke(app, ["classify", str(sample_images[0]), "-a", str(art), *args])
    assert res.exit_code == 2 and match in res.output


def test_classes_file_both_and_empty(art, sample_images, tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    res = runner.invoke(app, ["classify", str(sample_images[0]), "-a", str(art), "--classes-file", str(empty)])
    assert res.exit_code == 2 and "no class names" in res.output
    res = runner.invoke(app, ["classify", str(sample_images[0]), "-a", str(art), "--classes-file", str(empty),
                              "--classes", "a"])
    assert res.exit_code == 2 and "choose one" in res.output


def test_eval_takes_classes(art, tmp_path):
    from coder.samples import synthetic_scene

    for i, name in enumerate(["cat", "dog"]):
        (tmp_path / "ds" / name).mkdir(parents=True)
        synthetic_scene(i, (64, 64)).save(tmp_path / "ds" / name / "a.jpg")
    res = runner.invoke(app, ["eval", str(tmp_path / "ds"), "-a", str(art), "--classes", "cat,dog,zebra", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 2


def test_subprocess_classes(art, sample_images):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "coder", "classify", str(sample_images[0]), "-a", str(art),
                          "--classes", "cat,dog", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["top_k_names"][0] in ("cat", "dog")
