"""coder fit end to end on real images (Fashion-MNIST) with the tiny random model; augmentation."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coder.cli import app
from coder.runtime.augment import augment, crop_box
from coder.runtime.datasets import FASHION_DIR, fashion_mnist, subset
from coder.runtime.classifier import Classifier
from coder.runtime.fewshot import fit, split_support_val
from coder.text_bank.bank import build_bank
from coder.text_bank.texts import init_texts

needs_fashion = pytest.mark.skipif(not (FASHION_DIR / "train-labels-idx1-ubyte.gz").is_file(),
                                   reason="dataset-fashion-mnist missing")


def test_augment_is_seeded_and_sized():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8))
    a = augment(img, (32, 32), np.random.default_rng(7))
    b = augment(img, (32, 32), np.random.default_rng(7))
    assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b))
    for seed in range(50):
        top, left, h, w = crop_box(80, 50, np.random.default_rng(seed))
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80
        assert h * w >= 0.5 * 80 * 50 * 0.95 or (h, w) == (50, 67)  # scale >= 0.5 (or the fallback)


def _fashion_art(src, tmp_path_factory, name):
    import shutil
    art = tmp_path_factory.mktemp("fs") / name
    shutil.copytree(src, art, ignore=shutil.ignore_patterns("banks"))
    build_bank(art, init_texts("fashion-mnist"))
    return Classifier.load(art, backend="cpu"), art


@pytest.fixture(scope="module")
def fashion_clf(tiny_artifact, tmp_path_factory):
    return _fashion_art(tiny_artifact, tmp_path_factory, "tiny")


@pytest.fixture(scope="module")
def fashion_b32(b32_artifact, tmp_path_factory):
    """Real ViT-B-32 architecture (random weights): its features carry image similarity."""
    return _fashion_art(b32_artifact, tmp_path_factory, "b32")


@needs_fashion
def test_split_is_seeded_and_disjoint():
    ds = fashion_mnist("train")
    mapping = {c: i for i, c in enumerate(ds.classes)}
    s1, v1, short = split_support_val(ds, mapping, 4, 0.001, seed=3, val_limit=None)
    s2, _, _ = split_support_val(ds, mapping, 4, 0.001, seed=3, val_limit=None)
    assert [id(x) for x, _ in s1] == [id(x) for x, _ in s2] and len(s1) == 40 and not short
    assert not {id(x) for x, _ in s1} & {id(x) for x, _ in v1}


@needs_fashion
def test_16_shot_adapter_beats_chance_by_a_wide_margin(fashion_b32):
    clf, _ = fashion_b32
    train = fashion_mnist("train")
    res = fit(clf, train, shots=16, val_fraction=0.01, epochs=1, seed=0, val_limit=200)
    test = fashion_mnist("test")
    items = subset(test.items, 300, seed=1)
    fitted = Classifier(clf.encoder, clf.bank, clf.tau, clf.k, res.adapter)
    preds = fitted.classify([x for x, _ in items])
    acc = np.mean([p.name == c for p, (_, c) in zip(preds, items)])
    assert all(p.few_shot for p in preds)
    print(f"16-shot CODER-Adapter top-1 on 300 test images: {acc:.3f} (val {res.val_accuracy:.3f})")
    # Chance is 0.10; with 300 images its standard deviation is 0.017, so 0.17 is 4 sigma above it.
    assert acc > 0.17, f"16-shot top-1 {acc:.2f} vs chance 0.10"


@needs_fashion
def test_fit_cli_and_classify_with_adapter(fashion_clf, tmp_path):
    _, art = fashion_clf
    out = tmp_path / "ad.npz"
    res = CliRunner().invoke(app, ["fit", "fashion-mnist", "--shots", "2", "-a", str(art), "--out", str(out),
                                   "--val-limit", "50", "--augment-epochs", "2"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "validation top-1" in res.output
    img = tmp_path / "x.png"
    fashion_mnist("test").items[0][0].save(img)
    res = CliRunner().invoke(app, ["classify", str(img), "-a", str(art), "--adapter", str(out), "--json"])
    assert res.exit_code == 0, res.output
    import json
    assert json.loads(res.stdout)["few_shot"] is True


def test_val_limit_samples_every_class_with_the_seed():
    from coder.runtime.fewshot import sample_per_class

    items = [(f"{c}/{i}.png", c) for c in range(10) for i in range(200)]  # class-sorted, like an ImageFolder
    a = sample_per_class(items, 1000, seed=0)
    assert len(a) == 1000 and np.bincount([y for _, y in a]).tolist() == [100] * 10
    assert a != items[:1000] and a == sample_per_class(items, 1000, seed=0) != sample_per_class(items, 1000, seed=1)
    uneven = [(i, 0) for i in range(3)] + [(i, 1) for i in range(100)] + [(i, 2) for i in range(100)]
    b = sample_per_class(uneven, 50, seed=2)  # class 0's unused share goes to the others
    assert len(b) == 50 and np.bincount([y for _, y in b]).tolist() in ([3, 24, 23], [3, 23, 24])
    assert sample_per_class(items[:5], 1000, seed=0) == items[:5]


def test_fit_with_explicit_val_folder_tunes_on_every_class(fashion_clf, tmp_path, monkeypatch):
    import coder.runtime.fewshot as fewshot
    from coder.runtime.datasets import image_folder

    clf, _ = fashion_clf
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 20)):
        for c in clf.class_names:
            d = tmp_path / split / c.replace("/", "-")
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    seen = []
    real = fewshot.encode_plain
    monkeypatch.setattr(fewshot, "encode_plain", lambda c, items, **kw: (seen.append(items), real(c, items, **kw))[1])
    clf_names = {n.replace("/", "-"): n for n in clf.class_names}
    train, val = image_folder(tmp_path / "train"), image_folder(tmp_path / "val")
    train = train.__class__(train.name, tuple(clf_names[c] for c in train.classes),
                            [(x, clf_names[c]) for x, c in train.items])
    val = val.__class__(val.name, tuple(clf_names[c] for c in val.classes), [(x, clf_names[c]) for x, c in val.items])
    result = fit(clf, train, shots=2, val=val, epochs=0, seed=0, val_limit=100)
    assert result.n_val == 100
    labels = np.bincount([y for _, y in seen[0]], minlength=10)
    assert labels.tolist() == [10] * 10  # old code: classes 0-4 only (the first 100 in class order)


def _encode_augmented_all_in_memory(clf, items, epochs, seed, batch=32):
    """The pre-streaming implementation (every support image decoded up front), as the reference."""
    from coder.runtime.encoder import l2_normalize
    from coder.runtime.images import to_pil
    from coder.runtime.preprocess import preprocess_batch

    cfg = clf.encoder.preprocess_config
    rng = np.random.default_rng(seed)
    pils = [to_pil(x).convert("RGB") for x, _ in items]
    total = np.zeros((len(pils), clf.encoder.artifact.embed_dim), np.float32)
    for _ in range(max(epochs, 1)):
        views = [augment(p, cfg.size, rng) for p in pils] if epochs else pils
        for s in range(0, len(views), batch):
            total[s:s + batch] += clf.encoder.encode_pixels(preprocess_batch(views[s:s + batch], cfg))
    return l2_normalize(total)


@pytest.mark.parametrize("epochs", [0, 1, 3])
def test_streaming_support_encoding_equals_the_all_in_memory_path(fashion_clf, tmp_path, epochs):
    from coder.runtime.fewshot import encode_augmented

    clf, _ = fashion_clf
    rng = np.random.default_rng(1)
    items = []
    for i, (w, h) in enumerate([(40, 30), (17, 60), (64, 64), (90, 20), (33, 47)] * 3):
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        if i % 3 == 0:
            items.append((arr, i % 4))
        elif i % 3 == 1:
            items.append((Image.fromarray(arr).convert("L"), i % 4))
        else:
            p = tmp_path / f"{i}.jpg"
            Image.fromarray(arr).save(p, quality=90)
            items.append((p, i % 4))
    steps = []
    new = encode_augmented(clf, items, epochs, seed=5, batch=4, on_step=steps.append)
    old = _encode_augmented_all_in_memory(clf, items, epochs, seed=5, batch=4)
    assert new.shape == (15, clf.encoder.artifact.embed_dim)
    assert np.array_equal(new, old)  # bit for bit: same draws, same batches, same summation order
    assert sum(steps) == 15 * max(epochs, 1)


def test_streaming_support_encoding_decodes_one_batch_at_a_time(fashion_clf, tmp_path, monkeypatch):
    """Images are decoded a batch at a time, between encoder calls (never all up front)."""
    import coder.runtime.fewshot as fewshot

    clf, _ = fashion_clf
    for i in range(12):
        Image.fromarray(np.full((30, 40, 3), i * 20, np.uint8)).save(tmp_path / f"{i}.png")
    items = [(tmp_path / f"{i}.png", 0) for i in range(12)]
    events = []
    real_to_pil, real_encode = fewshot.to_pil, type(clf.encoder).encode_pixels
    monkeypatch.setattr(fewshot, "to_pil", lambda x: (events.append("d"), real_to_pil(x))[1])
    monkeypatch.setattr(type(clf.encoder), "encode_pixels", lambda self, px: (events.append("e"), real_encode(self, px))[1])
    fewshot.encode_augmented(clf, items, 2, seed=0, batch=3)
    assert "".join(events) == "ddd" + "ee" + "ddd" + "ee" + "ddd" + "ee" + "ddd" + "ee"
