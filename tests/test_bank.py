"""Bank build: encoding equals the text encoder, folding equals the reference, caching, integrity."""

import json
import shutil

import numpy as np
import pytest

from coder.errors import ArtifactError
from coder.runtime.head import stage1_scores
from coder.text_bank.text_encoder import TextEncoder
from coder.text_bank.bank import build_bank, load_bank
from coder.text_bank.texts import init_texts
from tests import reference_coder as ref


@pytest.fixture(scope="module")
def rich_texts():
    t = init_texts("cifar10")
    classes = list(t.classes)
    classes[3] = classes[3].__class__("cat", None, ("true cat",), ("pointed ears", "whiskers"), ("lynx",))
    classes[5] = classes[5].__class__("dog", None, (), ("a wet nose",), ())
    return t.__class__(t.name, t.preset, {**t.templates, "clip": t.templates["clip"][:4]}, tuple(classes),
                       {(3, 5): ("slit pupils",), (5, 3): ("round pupils",), (0, 8): ("wings",)}, t.provenance)


@pytest.fixture(scope="module")
def built(tiny_artifact, rich_texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "cifar"
    path, meta = build_bank(tiny_artifact, rich_texts, out=out)
    return path, meta


def test_bank_arrays_match_reference(built, tiny_artifact):
    path, meta = built
    bank = load_bank(path, tiny_artifact)
    raw = bank.raw_emb
    enc = TextEncoder.load(tiny_artifact)
    np.testing.assert_allclose(raw, enc.encode(meta["raw_texts"]), atol=1e-6)
    rng = np.random.default_rng(0)
    f = rng.standard_normal((30, raw.shape[1])).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    s1 = stage1_scores(f, bank)
    for i in range(len(f)):
        want = ref.stage1(f[i], raw, bank.raw_kind, bank.raw_class, len(bank.class_names))
        np.testing.assert_allclose(s1[i], want, atol=1e-4)
    assert bank.g_count.tolist()[3] == 3 and bank.g_count.tolist()[0] == 0
    assert sorted(zip(bank.pair_from.tolist(), bank.pair_to.tolist())) == [(0, 8), (3, 5), (5, 3)]
    w = bank.clip_w
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-5)


def test_dynamic_length_equals_full_context(tiny_artifact, built):
    enc = TextEncoder.load(tiny_artifact)
    texts = built[1]["raw_texts"][:40]
    full = TextEncoder(enc.artifact, enc.engine, enc.tokenizer, enc.precision, False, enc.encoder_sha256)
    np.testing.assert_allclose(enc.encode(texts), full.encode(texts), atol=1e-5)


def test_incremental_rebuild_encodes_only_changes(tiny_artifact, rich_texts, tmp_path):
    out = tmp_path / "b"
    _, first = build_bank(tiny_artifact, rich_texts, out=out)
    assert first["counts"]["newly_encoded"] == len(set(first["raw_texts"]))
    cls = list(rich_texts.classes)
    cls[0] = cls[0].__class__(cls[0].name, None, (), ("two wings",), ())
    _, second = build_bank(tiny_artifact, rich_texts.with_classes(cls), out=out)
    assert second["counts"]["newly_encoded"] == 1


def test_bank_of_another_encoder_is_refused(built, b32_artifact):
    with pytest.raises(ArtifactError, match="another text encoder"):
        load_bank(built[0], b32_artifact)


def test_corrupt_or_other_version(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built[0], copy)
    meta = json.loads((copy / "bank.json").read_text())
    meta["format_version"] = 2
    (copy / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="v2"):
        load_bank(copy)
    shutil.copytree(built[0], tmp_path / "c2")
    (tmp_path / "c2" / "bank.npz").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="corrupt"):
        load_bank(tmp_path / "c2")


def test_npz_has_no_pickles(built):
    with np.load(built[0] / "bank.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
