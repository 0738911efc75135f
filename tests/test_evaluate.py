"""coder eval: metrics against a direct computation, ImageFolder mapping, Fashion-MNIST loader."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from coder.cli import app
from coder.errors import ConfigError
from coder.runtime.classifier import Classifier
from coder.runtime.datasets import FASHION_DIR, fashion_mnist, image_folder, match_classes, subset
from coder.runtime.evaluate import evaluate
from coder.samples import synthetic_scene
from coder.text_bank.bank import build_bank
from coder.text_bank.texts import init_texts


@pytest.fixture(scope="module")
def clf(tiny_artifact, tmp_path_factory):
    import shutil
    art = tmp_path_factory.mktemp("ev") / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    build_bank(art, init_texts("cifar10"))
    return Classifier.load(art, backend="cpu", tau=0.5)


@pytest.fixture
def folder(tmp_path):
    for c in ("cat", "Dog", "unicorn"):
        (tmp_path / c).mkdir()
        for i in range(3):
            synthetic_scene(hash(c) % 1000 + i, (64, 48)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"")
    return tmp_path


def test_image_folder_and_matching(folder):
    ds = image_folder(folder)
    assert ds.classes == ("Dog", "cat", "unicorn") and len(ds.items) == 10
    mapping, missing = match_classes(ds.classes, init_texts("cifar10").class_names)
    assert mapping == {"Dog": 5, "cat": 3} and missing == ["unicorn"]
    with pytest.raises(ConfigError):
        image_folder(folder / "nope")


def test_metrics_match_direct_computation(clf, folder):
    report = evaluate(clf, image_folder(folder))
    assert report.n == 6 and report.failures == 1 and report.missing_classes == ["unicorn"]
    paths = sorted((folder / "Dog").glob("*.png")) + sorted(p for p in (folder / "cat").glob("*.png"))
    y = np.array([5] * 3 + [3] * 3)
    preds = clf.classify(paths)
    s1_top1 = np.mean([p.top_k[0] == t for p, t in zip(preds, y)])
    final_top1 = np.mean([p.label == t for p, t in zip(preds, y)])
    assert report.rows["coder_stage1"]["top1"] == pytest.approx(s1_top1)
    assert report.rows["coder_rerank"]["top1"] == pytest.approx(final_top1)
    assert report.reranked_fraction == pytest.approx(np.mean([p.reranked for p in preds]))
    changed = sum(p.label != p.top_k[0] for p in preds)
    assert report.right_to_wrong + report.wrong_to_right <= changed
    assert sum(n for *_, n in report.confusions) == round((1 - s1_top1) * 6)


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist missing")
def test_fashion_mnist_loader():
    ds = fashion_mnist("test")
    assert len(ds.items) == 10_000 and ds.items[0][0].size == (28, 28)
    counts = {c: 0 for c in ds.classes}
    for _, c in ds.items:
        counts[c] += 1
    assert set(counts.values()) == {1000}
    assert len(subset(ds.items, 100, seed=1)) == 100 and subset(ds.items, 100, 1) == subset(ds.items, 100, 1)


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist missing")
def test_eval_cli_fashion_json(tiny_artifact, tmp_path):
    import shutil
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    build_bank(art, init_texts("fashion-mnist"))
    conf = tmp_path / "conf.json"
    res = CliRunner().invoke(app, ["eval", "fashion-mnist", "-a", str(art), "--limit", "60", "--json",
                                   "--confusions-out", str(conf)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n"] == 60 and set(data["rows"]) == {"clip", "coder_stage1", "coder_rerank"}
    assert json.loads(conf.read_text())["format"] == "coder.confusions"


def test_eval_on_a_read_only_artifact_keeps_caches_in_memory(tiny_artifact, tmp_path, monkeypatch):
    """Every write under the artifact fails (EROFS) as on a read-only partition: eval still answers, exit 0."""
    import errno
    import os
    import shutil
    import tempfile

    import coder.store.files as files

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    build_bank(art, init_texts("fashion-mnist"))
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if dir is not None and os.fspath(dir).startswith(str(art)):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    res = CliRunner().invoke(app, ["eval", "fashion-mnist", "-a", str(art), "--limit", "20", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 20 and "kept in memory" in res.stderr
