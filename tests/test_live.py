"""Classifier.with_classes: incremental class changes equal a from-scratch build, touch only what changed."""

import dataclasses
import threading
import warnings

import numpy as np
import pytest

from coder.errors import ConfigError
from coder.runtime.classifier import Classifier
from coder.runtime.head import rerank, stage1_scores
from coder.samples import synthetic_scene
from coder.text_bank.bank import EmbeddingCache, build_bank, load_bank
from coder.text_bank.live import ANA_PROBE, ClassChange, bank_texts
from coder.text_bank.text_encoder import TextEncoder
from coder.text_bank.texts import ClassTexts, names_texts
from coder.text_bank.wordnet import WordNet, add_synonyms
from tests import reference_coder as ref

BASE = ["cat", "dog", "horse", "truck", "ship"]


def names_synonyms(art, names):
    """What `coder texts init --classes FILE` + `coder texts synonyms -a ART` write for these names."""
    return add_synonyms(names_texts(names), WordNet(), TextEncoder.load(art))[0]


def unit_rows(n, d, seed=0):
    f = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def base_dir(tiny_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("live") / "banks" / "base"
    build_bank(tiny_artifact, names_synonyms(tiny_artifact, BASE), out=out)
    return out


@pytest.fixture(scope="module")
def clf(tiny_artifact, base_dir):
    return Classifier.load(tiny_artifact, bank=str(base_dir), backend="cpu")


@pytest.fixture(scope="module")
def images():
    return [synthetic_scene(200 + i, (224, 224)) for i in range(6)]


def test_with_classes_equals_a_from_scratch_build(clf, tiny_artifact, base_dir, images, tmp_path):
    new = clf.with_classes(add=["zebra", "tabby cat"], remove=["truck"])
    final = ["cat", "dog", "horse", "ship", "zebra", "tabby cat"]
    assert new.class_names == tuple(final) and isinstance(new.change, ClassChange)
    assert new.change.added == ("zebra", "tabby cat") and new.change.removed == ("truck",)
    # Same embedding cache (banks/): the very same arrays, hence the same version id.
    _, meta = build_bank(tiny_artifact, names_synonyms(tiny_artifact, final), out=base_dir.parent / "scratch")
    scratch = load_bank(base_dir.parent / "scratch")
    assert new.bank_sha256 == meta["content_sha256"] == scratch.content_sha256
    # A fresh cache (encoded again, other batches): same labels, same scores up to float rounding.
    build_bank(tiny_artifact, names_synonyms(tiny_artifact, final), out=tmp_path / "banks" / "fresh")
    fresh = Classifier.load(tiny_artifact, bank=str(tmp_path / "banks" / "fresh"), backend="cpu")
    got, want = new.classify(images, top_k=6), fresh.classify(images, top_k=6)
    assert [p.label for p in got] == [p.label for p in want] and [p.top_k for p in got] == [p.top_k for p in want]
    np.testing.assert_allclose([p.stage1_scores for p in got], [p.stage1_scores for p in want], atol=1e-4)


def test_old_classifier_keeps_working_and_unchanged_classes_keep_their_rows(clf, images):
    before = clf.classify(images)
    new = clf.with_classes(add=["zebra"], remove=["dog"])
    after = clf.classify(images)
    assert [dataclasses.replace(p, timings_ms=None) for p in before] == \
        [dataclasses.replace(p, timings_ms=None) for p in after]
    assert clf.class_names == tuple(BASE) and new.encoder.engine is clf.encoder.engine  # encoder shared
    old, nb = clf.bank, new.bank
    kept = [0, 2, 3, 4]  # cat, horse, truck, ship -> new ids 0..3
    np.testing.assert_array_equal(nb.g_sum[:4], old.g_sum[kept])
    np.testing.assert_array_equal(nb.g_count[:4], old.g_count[kept])
    for new_id, old_id in enumerate(kept):
        np.testing.assert_array_equal(nb.n_emb[nb.n_class == new_id], old.n_emb[old.n_class == old_id])
    f = unit_rows(20, old.n_emb.shape[1])
    np.testing.assert_array_equal(stage1_scores(f, nb)[:, :4], stage1_scores(f, old)[:, kept])


def stage1_by_name(clf, images):
    """Each image's stage-1 score of every class, keyed by class name (top_k = all classes)."""
    return [dict(zip(p.top_k_names, p.stage1_scores)) for p in clf.classify(images, top_k=len(clf.class_names))]


@pytest.mark.parametrize("fused_head", [True, False], ids=["onnx-head", "numpy-head"])
def test_unchanged_classes_keep_bit_identical_scores(tiny_artifact, base_dir, images, fused_head):
    old = Classifier.load(tiny_artifact, bank=str(base_dir), backend="cpu", fused_head=fused_head)
    new = old.with_classes(add=["zebra", "okapi", "lion"], remove=["dog"])
    assert old.head == ("onnx" if fused_head else "numpy") and new.head == old.head and not new.change.refolded
    kept = [c for c in old.class_names if c in new.class_names]
    assert kept == ["cat", "horse", "truck", "ship"]
    for n in (1, 5):  # batch sizes: one frame, and a batch whose GEMM differs from batch 1
        for a, b in zip(stage1_by_name(old, images[:n]), stage1_by_name(new, images[:n])):
            assert {c: a[c] for c in kept} == {c: b[c] for c in kept}  # exact: same floats, not approx


def test_only_new_texts_are_encoded(clf):
    first = clf.with_classes(add=["okapi"])
    n = len(bank_texts(first.bank).classes[-1].syn) + 1  # name + synonyms
    assert first.change.texts_encoded <= n + 8 and first.change.texts_added == n  # (+ WordNet glosses)
    again = clf.with_classes(add=["okapi"])  # every text of it is cached now
    assert again.change.texts_encoded == 0 and again.bank_sha256 == first.bank_sha256
    back = first.with_classes(remove=["okapi"])
    assert back.change.texts_encoded == 0 and back.bank_sha256 == clf.bank_sha256  # removing restores the bank


def test_analogous_object_rule_drops_and_refolds(tiny_artifact, tmp_path):
    t = names_texts(["horse", "cat"])
    t = t.with_classes([ClassTexts("horse", None, (), ("a mane",), ("zebra", "pony", "camel")), t.classes[1]])
    build_bank(tiny_artifact, t, out=tmp_path / "banks" / "ana")
    clf = Classifier.load(tiny_artifact, bank=str(tmp_path / "banks" / "ana"), backend="cpu")
    new = clf.with_classes(add=["zebra"])
    enc = TextEncoder.load(tiny_artifact)
    probes = enc.encode([ANA_PROBE.format(g) for g in ("zebra", "pony", "camel")])
    close = tuple(g for g, s in zip(("zebra", "pony", "camel"), probes @ enc.encode([ANA_PROBE.format("zebra")])[0])
                  if s > 0.9)
    assert "zebra" in close and new.change.refolded == (("horse", close),)
    assert bank_texts(new.bank).classes[0].ana == tuple(g for g in ("zebra", "pony", "camel") if g not in close)
    b = new.bank
    f = unit_rows(10, b.n_emb.shape[1], 1)
    s1 = stage1_scores(f, b)
    for i in range(len(f)):
        np.testing.assert_allclose(s1[i], ref.stage1(f[i], b.raw_emb, b.raw_kind, b.raw_class, 3), atol=1e-4)
    np.testing.assert_array_equal(s1[:, 1], stage1_scores(f, clf.bank)[:, 1])  # cat unchanged, bit for bit
    imgs = [synthetic_scene(300 + i, (224, 224)) for i in range(3)]
    for a, b in zip(stage1_by_name(clf, imgs), stage1_by_name(new, imgs)):
        assert a["cat"] == b["cat"] and a["horse"] != b["horse"]  # through the ONNX head too; horse refolded
    # Equal to a full build of the resulting texts.
    _, meta = build_bank(tiny_artifact, bank_texts(new.bank), out=tmp_path / "banks" / "ana-scratch")
    assert meta["content_sha256"] == new.bank_sha256


def test_caller_texts_with_pairs_follow_the_reference(clf, images, tiny_artifact):
    given = {"zebra": {"att": ["black and white stripes"], "ana": ["okapi"],
                       "pairs": {"horse": ["stripes"]}, "pairs_other": {"horse": ["a plain coat"]}},
             "horse": {"att": ["ignored: horse is not added"]}}
    new = clf.with_classes(add=["zebra"], texts=given).with_classes(
        add=["donkey"], remove=["cat"], texts={"donkey": {"pairs_other": {"horse": ["a flowing mane"]}}})
    b = new.bank
    t = bank_texts(b)
    assert t.class_names == ["dog", "horse", "truck", "ship", "zebra", "donkey"]
    assert t.classes[4].att == ("black and white stripes",) and t.classes[1].att == ()
    assert t.pairs == {(4, 1): ("stripes",), (1, 4): ("a plain coat",), (1, 5): ("a flowing mane",)}
    assert b.pair_from.tolist() == [1, 1, 4] and b.pair_to.tolist() == [4, 5, 1]  # sorted as a full build
    _, meta = build_bank(tiny_artifact, t, out=clf.bank.root.parent / "pairs-scratch")  # same embedding cache
    assert meta["content_sha256"] == new.bank_sha256
    f = unit_rows(25, b.n_emb.shape[1], 2)
    s1 = stage1_scores(f, b)
    out = rerank(f, s1, b, tau=10.0, k=5)
    for i in range(len(f)):
        want = ref.stage1(f[i], b.raw_emb, b.raw_kind, b.raw_class, len(b.class_names))
        np.testing.assert_allclose(s1[i], want, atol=1e-4)
        label, fired, top, r = ref.rerank(f[i], want, b.raw_emb, b.raw_kind, b.raw_class, b.raw_other, 10.0)
        assert fired and out.labels[i] == label
        np.testing.assert_allclose(out.scores[i], r, atol=1e-4)


@pytest.mark.parametrize("add,remove,match", [
    ([""], [], "non-empty"), (["zebra", "Zebra"], [], "twice"), (["CAT"], [], "already in the bank"),
    (["tabby_cat", "tabby  cat"], [], "twice"), ([" Dog "], [], "already"), ([], ["lion"], "not a class"),
    ([], BASE, "at least one class"), ([], [], "no change"), (["a\nb"], [], "single line"),
])
def test_bad_changes_are_refused_and_change_nothing(clf, add, remove, match, images):
    before = clf.bank_sha256
    with pytest.raises(ConfigError, match=match):
        clf.with_classes(add=add, remove=remove)
    assert clf.bank_sha256 == before and clf.classify(images[:1])[0].name in BASE


def test_fused_and_numpy_heads_agree_after_a_change(tiny_artifact, base_dir, images):
    fused = Classifier.load(tiny_artifact, bank=str(base_dir), backend="cpu").with_classes(add=["zebra"])
    plain = Classifier.load(tiny_artifact, bank=str(base_dir), backend="cpu", fused_head=False).with_classes(
        add=["zebra"])
    assert fused.head == "onnx" and plain.head == "numpy" and fused.encoder.head_k == plain.k
    a, b = fused.classify(images), plain.classify(images)
    assert [p.label for p in a] == [p.label for p in b]
    np.testing.assert_allclose([p.stage1_scores for p in a], [p.stage1_scores for p in b], atol=1e-4)


def test_swapping_while_other_threads_classify(clf, images):
    current = {"clf": clf}
    errors, stop = [], threading.Event()

    def worker():
        while not stop.is_set():
            c = current["clf"]  # one reference read: a whole classifier, never half of one
            try:
                [p] = c.classify(images[:1])
                assert p.name in c.class_names
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    for name in ("zebra", "okapi", "lion"):
        current["clf"] = current["clf"].with_classes(add=[name])
    stop.set()
    for th in threads:
        th.join()
    assert not errors and current["clf"].class_names[-3:] == ("zebra", "okapi", "lion")


def test_adapter_classifier_refuses(clf):
    with pytest.raises(ConfigError, match="adapter"):
        dataclasses.replace(clf, adapter=object()).with_classes(add=["zebra"])


def test_embedding_cache_unwritable_and_damaged(tiny_artifact, tmp_path):
    enc = TextEncoder.load(tiny_artifact)
    cache = EmbeddingCache(tmp_path, enc.encoder_sha256, enc.encoding_version, enc.tokenizer_key)
    assert f"-k{enc.tokenizer_key[:12]}-" in cache.path.name
    cache.add(["a photo of a cat."], enc.encode(["a photo of a cat."]))
    cache.save_new()
    [part] = tmp_path.glob(".embed-cache-*.part-*.npz")
    assert EmbeddingCache(tmp_path, enc.encoder_sha256, enc.encoding_version, enc.tokenizer_key).missing(
        ["a photo of a cat."]) == []
    assert EmbeddingCache(tmp_path, enc.encoder_sha256, enc.encoding_version, "other").missing(
        ["a photo of a cat."]) == ["a photo of a cat."]  # another tokenizer: another cache
    part.write_bytes(b"not a zip")
    with pytest.warns(Warning, match="damaged"):
        again = EmbeddingCache(tmp_path, enc.encoder_sha256, enc.encoding_version, enc.tokenizer_key)
    assert again.missing(["a photo of a cat."]) == ["a photo of a cat."]
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        c = EmbeddingCache(ro, enc.encoder_sha256, enc.encoding_version, enc.tokenizer_key)
        c.add(["x"], enc.encode(["x"]))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            c.save_new()
        import os
        if os.geteuid() != 0:  # root writes anyway
            assert any("kept in memory" in str(x.message) for x in w)
        assert c.missing(["x"]) == []
    finally:
        ro.chmod(0o700)


def test_class_list_classifier_changes_too_and_shares_the_artifact_cache(tiny_artifact, tmp_path, images):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    clf = Classifier.load(art, backend="cpu", classes=["cat", "dog"])
    assert clf.class_names == ("cat", "dog") and clf.options.classes == ("cat", "dog")
    new = clf.with_classes(add=["zebra"])
    assert new.class_names == ("cat", "dog", "zebra") and new.classify(images[:1])[0].name in new.class_names
    assert list((art / "banks").glob(".embed-cache-*")) and not list((art / "banks" / ".classes").glob(".embed-*"))
    with pytest.raises(ConfigError, match="choose one"):
        Classifier.load(art, bank="x", classes=["cat"])
