"""Folded head (coder.runtime.head on coder.text_bank.fold) == the full-matrix reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coder.runtime.head import rerank, softmax_gap, stage1_scores
from coder.text_bank.fold import fold
from coder.text_bank.rows import expand
from coder.text_bank.texts import ClassTexts, Texts
from coder.text_bank.presets import preset
from tests import reference_coder as ref


class _Bank:
    def __init__(self, arrays):
        self.__dict__.update(arrays)


def random_case(seed: int, n_classes: int, dim: int = 16, pair_prob: float = 0.5, one_way_prob: float = 0.3):
    rng = np.random.default_rng(seed)
    classes = []
    for c in range(n_classes):
        pick = lambda kind: tuple(f"{kind}{c}-{i}" for i in range(int(rng.integers(0, 4))))
        classes.append(ClassTexts(f"class {c}", None, pick("syn"), pick("att"), pick("ana")))
    pairs = {}
    for i in range(n_classes):
        for j in range(n_classes):
            if i != j and rng.random() < pair_prob:
                pairs[(i, j)] = tuple(f"a{i}-{j}-{n}" for n in range(int(rng.integers(1, 3))))
    for (i, j) in list(pairs):  # drop one direction of some pairs
        if (j, i) in pairs and rng.random() < one_way_prob:
            del pairs[(j, i)]
    tpl = {**preset("default"), "clip": ["a photo of a {c}.", "art of the {c}."], "pair": ["{a} {c} {o}", "{c}/{o}: {a}"]}
    texts = Texts("rand", "default", tpl, tuple(classes), pairs)
    rows = expand(texts)
    emb = rng.standard_normal((len(rows.texts), dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return rows, emb, _Bank(fold(rows, emb, n_classes))


def _queries(rng, n, dim, bank, near_tie=False):
    f = rng.standard_normal((n, dim)).astype(np.float32)
    if near_tie:  # land between two class vectors so the top two are close
        a, b = bank.n_emb[rng.integers(0, len(bank.n_emb), n)], bank.n_emb[rng.integers(0, len(bank.n_emb), n)]
        f = (a + b + 0.01 * f).astype(np.float32)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n_classes=st.integers(1, 12), near_tie=st.booleans(),
       tau=st.sampled_from([0.0, 0.1, 0.6, 1.01]))
def test_stage1_and_rerank_match_reference(seed, n_classes, near_tie, tau):
    rows, emb, bank = random_case(seed, n_classes)
    rng = np.random.default_rng(seed + 1)
    f = _queries(rng, 20, emb.shape[1], bank, near_tie)
    s1 = stage1_scores(f, bank)
    out = rerank(f, s1, bank, tau=tau, k=5)
    for i in range(len(f)):
        want = ref.stage1(f[i], emb, rows.kind, rows.cls, n_classes)
        np.testing.assert_allclose(s1[i], want, atol=1e-4, rtol=0)
        label, fired, top, r = ref.rerank(f[i], s1[i].astype(np.float64), emb, rows.kind, rows.cls, rows.other, tau)
        assert list(out.top[i]) == top
        assert bool(out.fired[i]) == fired
        if fired:
            np.testing.assert_allclose(out.scores[i], r, atol=1e-5)
        if fired and len(set(np.round(r, 5))) < len(r):
            continue  # exact ties within fp noise: order may legitimately differ
        assert out.labels[i] == label


def test_thousands_of_random_cases_agree():
    disagreements = total = 0
    for seed in range(40):
        rows, emb, bank = random_case(seed, n_classes=8)
        f = _queries(np.random.default_rng(seed), 50, emb.shape[1], bank, near_tie=seed % 2 == 0)
        s1 = stage1_scores(f, bank)
        out = rerank(f, s1, bank, tau=0.5)
        for i in range(len(f)):
            label, *_ = ref.rerank(f[i], s1[i].astype(np.float64), emb, rows.kind, rows.cls, rows.other, 0.5)
            disagreements += int(out.labels[i] != label)
            total += 1
    assert total == 2000 and disagreements == 0


def test_class_without_att_ana_scores_its_name_max():
    rows, emb, bank = random_case(3, 4)
    f = _queries(np.random.default_rng(0), 5, emb.shape[1], bank)
    s1 = stage1_scores(f, bank)
    for c in np.flatnonzero(bank.g_count == 0):
        n_rows = bank.n_emb[bank.n_class == c]
        np.testing.assert_allclose(s1[:, c], 100 * (f @ n_rows.T).max(axis=1), atol=1e-4)


def test_one_direction_only_pair_counts_zero():
    rows, emb, bank = random_case(5, 3, pair_prob=0.0)
    assert len(bank.pair_vec) == 0
    f = _queries(np.random.default_rng(1), 4, emb.shape[1], bank)
    out = rerank(f, stage1_scores(f, bank), bank, tau=2.0)
    assert out.fired.all() and np.all(out.scores == 0) and np.array_equal(out.labels, out.top[:, 0])


def test_gap_and_topk_shapes_for_few_classes():
    top, gap = softmax_gap(np.array([[1.0, 3.0]], np.float32), k=5)
    assert top.tolist() == [[1, 0]] and 0 < gap[0] < 1
    top, gap = softmax_gap(np.array([[2.0]], np.float32), k=5)
    assert top.tolist() == [[0]] and gap[0] == pytest.approx(1.0)
