"""The Python API: inputs of every kind, frozen results, threads, memory, backends."""

import dataclasses
import gc
import os
import threading

import numpy as np
import pytest
from PIL import Image

from coder.errors import ArtifactError, BackendError, ConfigError, InputError
from coder.runtime.classifier import Classifier, Prediction
from coder.text_bank.bank import build_bank
from coder.text_bank.texts import init_texts


@pytest.fixture(scope="module")
def clf_dir(tiny_artifact):
    t = init_texts("cifar10")
    classes = list(t.classes)
    classes[3] = dataclasses.replace(classes[3], att=("pointed ears",), ana=("lynx",))
    pairs = {(a, b): ("some attribute",) for a in range(10) for b in range(10) if a != b}
    build_bank(tiny_artifact, t.__class__(t.name, t.preset, t.templates, tuple(classes), pairs, t.provenance))
    return tiny_artifact


@pytest.fixture(scope="module")
def clf(clf_dir):
    return Classifier.load(clf_dir, backend="auto")


def test_prediction_is_frozen_and_complete(clf, sample_images):
    [p] = clf.classify(str(sample_images[0]))
    assert isinstance(p, Prediction) and p.backend == "cpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.label = 0
    assert p.name == clf.class_names[p.label] and len(p.top_k) == 5
    assert list(p.stage1_scores) == sorted(p.stage1_scores, reverse=True)
    assert p.label in p.rerank_candidates and p.timings_ms.encoder > 0


def test_all_input_kinds_agree(clf, sample_images):
    pil = Image.open(sample_images[1]).convert("RGB")
    arr = np.asarray(pil)
    a = clf.classify([sample_images[1], pil, arr])
    b = clf.classify([arr[..., ::-1].copy()], bgr=True)
    for p in a[1:] + b:  # batch 3 vs batch 1: float noise only
        np.testing.assert_allclose(p.stage1_scores, a[0].stage1_scores, atol=1e-4)
        assert p.top_k == a[0].top_k


def test_no_rerank_and_tau(clf_dir, sample_images):
    never = Classifier.load(clf_dir, backend="cpu", tau=0.0)
    always = Classifier.load(clf_dir, backend="cpu", tau=1.01)
    assert not any(p.reranked for p in never.classify(sample_images))
    assert all(p.reranked for p in always.classify(sample_images))
    assert not any(p.reranked for p in always.classify(sample_images, rerank_enabled=False))


def test_bad_inputs(clf):
    with pytest.raises(InputError, match="uint8"):
        clf.classify([np.zeros((8, 8, 3), np.float64)])
    with pytest.raises(InputError, match="shape"):
        clf.classify([np.zeros((8, 8, 5), np.uint8)])
    assert clf.classify([]) == []


def test_backends(clf_dir):
    with pytest.raises(ConfigError, match="choose auto"):
        Classifier.load(clf_dir, backend="gpu0")
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendError):
            Classifier.load(clf_dir, backend="cuda")


def test_bank_selection(tiny_artifact, tmp_path):
    import shutil
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    with pytest.raises(ArtifactError, match="no bank"):
        Classifier.load(art)
    build_bank(art, init_texts("cifar10"))
    build_bank(art, init_texts("fashion-mnist"))
    with pytest.raises(ArtifactError, match="several banks"):
        Classifier.load(art)
    assert Classifier.load(art, bank="fashion-mnist").class_names[0] == "T-shirt/top"


def test_thread_safety(clf, sample_images):
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sample_images]
    want = [p.stage1_scores for p in clf.classify(frames)]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(10):
                got = [p.stage1_scores for p in clf.classify(frames)]
                assert got == want
            results[i] = True
        except Exception as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4


def test_explain(clf, sample_images):
    ex = clf.explain(sample_images[0])
    assert 1 <= len(ex) <= 2
    for matches in ex.values():
        assert matches and all(isinstance(t, str) and -1 <= c <= 1 for t, c in matches)


def test_memory_flat_over_a_long_run(clf):
    psutil = pytest.importorskip("psutil")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(8)]
    proc = psutil.Process(os.getpid())
    for _ in range(25):  # warm-up: allocator pools, session arenas
        clf.classify(frames)
    gc.collect()
    before = proc.memory_info().rss
    for _ in range(375):  # 3,000 images
        clf.classify(frames)
    gc.collect()
    growth_mb = (proc.memory_info().rss - before) / 2**20
    assert growth_mb < 30, f"RSS grew {growth_mb:.1f} MB over 3000 images"
