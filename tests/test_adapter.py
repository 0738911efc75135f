"""Few-shot adapters: folded keys == full CODER vectors (METHOD.md), file format, bank binding, search."""

import numpy as np
import pytest

from coder.errors import ArtifactError
from coder.runtime.adapter import (Adapter, affinity, coder_text_matrix, fold_keys, load_adapter, save_adapter,
                                   search)
from coder.runtime.encoder import l2_normalize


def _unit(rng, n, d):
    return l2_normalize(rng.standard_normal((n, d)).astype(np.float32))


def reference_logits(f, T, support, labels, W, alpha, beta, n_classes):
    """Straight from METHOD.md with M x N CODER vectors: q = normalize(T f), k_j = normalize(T f_j)."""
    q = l2_normalize((T @ f.T).T)
    k = l2_normalize((T @ support.T).T)
    a = q @ k.T
    a = (a - a.min(axis=1, keepdims=True)) / (a.max(axis=1, keepdims=True) - a.min(axis=1, keepdims=True))
    onehot = np.eye(n_classes)[labels]
    return 100 * f @ W.T + alpha * np.exp(-beta * (1 - a)) @ onehot


@pytest.mark.parametrize("seed", range(5))
def test_folded_keys_match_full_coder_vectors(seed):
    rng = np.random.default_rng(seed)
    d, m, n, c = 32, 300, 40, 8
    T, support, f, W = _unit(rng, m, d), _unit(rng, n, d), _unit(rng, 25, d), _unit(rng, c, d)
    labels = rng.integers(0, c, n)
    ad = Adapter("coder", fold_keys(support, T), labels, 3.0, 7.0, {"classes": c})
    want = reference_logits(f, T, support, labels, W, 3.0, 7.0, c)
    np.testing.assert_allclose(ad.logits(f, W), want, atol=1e-4)
    assert ad.keys.shape == (n, d)  # N_shots x D, not N_shots x M


def test_tip_affinity_is_cosine():
    rng = np.random.default_rng(0)
    f, keys = _unit(rng, 3, 8), _unit(rng, 5, 8)
    np.testing.assert_allclose(affinity(f, keys, "tip"), f @ keys.T)
    a = affinity(f, keys, "coder")
    assert a.min() == 0 and np.allclose(a.max(axis=1), 1)


def test_search_uses_validation_and_finds_the_cache():
    rng = np.random.default_rng(1)
    d, c = 16, 4
    centers = _unit(rng, c, d)
    make = lambda n: (l2_normalize(centers[np.arange(n) % c] + 0.1 * rng.standard_normal((n, d)).astype(np.float32)),
                      np.arange(n) % c)
    support, ys = make(40)
    val_f, val_y = make(80)
    W = _unit(rng, c, d)  # zero-shot weights that know nothing
    alpha, beta, acc = search(val_f, val_y, W, support, ys, "tip", c)
    zero_shot = (np.argmax(val_f @ W.T, axis=1) == val_y).mean()
    assert acc > 0.9 > zero_shot and 0.1 <= alpha < 20.5 and 0 < beta < 205


def test_save_load_and_bank_binding(tmp_path):
    class FakeBank:
        root = tmp_path
        meta = {"npz_sha256": "a" * 64, "encoder": {"sha256": "b" * 64}}

    ad = Adapter("coder", np.ones((2, 4), np.float32), np.array([0, 1]), 1.5, 2.5,
                 {"classes": 2, "bank_sha256": "a" * 64, "encoder_sha256": "b" * 64})
    path = tmp_path / "ad.npz"
    save_adapter(path, ad)
    back = load_adapter(path, FakeBank())
    assert back.alpha == 1.5 and back.beta == 2.5 and back.kind == "coder"
    np.testing.assert_array_equal(back.keys, ad.keys)
    FakeBank.meta = {"npz_sha256": "c" * 64, "encoder": {"sha256": "b" * 64}}
    with pytest.raises(ArtifactError, match="another bank"):
        load_adapter(path, FakeBank())
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ArtifactError, match="not a coder adapter"):
        load_adapter(tmp_path / "bad.npz")


def test_text_matrix_is_name_att_ana(tiny_artifact):
    from coder.text_bank.bank import build_bank, load_bank
    from coder.text_bank.texts import ClassTexts, init_texts

    t = init_texts("cifar10")
    classes = list(t.classes)
    classes[0] = ClassTexts("airplane", None, ("plane",), ("wings",), ("bird",))
    path, _ = build_bank(tiny_artifact, t.with_classes(classes), out=tiny_artifact.parent / "adapter-bank")
    bank = load_bank(path)
    assert len(coder_text_matrix(bank)) == 10 + 2  # 10 names + 1 att + 1 ana; no syn, pair or clip rows
