"""The CODER head as an ONNX graph (and fused onto the encoder) == the numpy head."""

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coder.engines.head_graph import OUTPUTS, head_model, partner_tables, segment_table
from coder.runtime.head import gate, rerank, stage1_scores
from tests.test_head import _queries, random_case


def _run_head(bank, k, raw):
    sess = ort.InferenceSession(head_model(bank, k).SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUTS, sess.run(None, {"head_in": raw})))


def test_tables():
    assert segment_table(np.array([0, 0, 1]), 2).tolist() == [[0, 1], [2, 2]]
    partners, rows = partner_tables(np.array([1, 0, 1]), np.array([2, 1, 0]), 3)
    assert partners.tolist() == [[1, -1], [0, 2], [-1, -1]]
    assert rows.tolist() == [[1, 0], [2, 0], [0, 0]]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_classes=st.integers(1, 10), near_tie=st.booleans(),
       pair_prob=st.sampled_from([0.0, 0.3, 1.0]), k=st.integers(1, 6), tau=st.sampled_from([0.0, 0.2, 1.01]))
def test_graph_matches_numpy_head(seed, n_classes, near_tie, pair_prob, k, tau):
    _, emb, bank = random_case(seed, n_classes, pair_prob=pair_prob)
    f = _queries(np.random.default_rng(seed), 16, emb.shape[1], bank, near_tie)
    out = _run_head(bank, k, (f * 7.5).astype(np.float32))  # raw (unnormalised) encoder output
    s1 = stage1_scores(f, bank)
    want = rerank(f, s1, bank, tau=tau, k=k)
    got = gate(out["topk_ids"], out["gap"], out["rerank"], tau)
    np.testing.assert_allclose(out["embedding"], f, atol=1e-6)
    np.testing.assert_allclose(out["stage1"], s1, atol=1e-4, rtol=0)
    assert np.array_equal(got.top, want.top)
    np.testing.assert_allclose(got.gap, want.gap, atol=1e-5)
    assert np.array_equal(got.fired, want.fired)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    ties = np.array([len(set(np.round(r, 5))) < len(r) for r in want.scores])
    assert np.array_equal(got.labels[~ties], want.labels[~ties])


def test_exact_ties_go_to_the_lower_class_id():
    _, emb, bank = random_case(0, 6, pair_prob=0.0)
    same = np.tile(bank.n_emb[:1], (len(bank.n_emb), 1))
    bank = type(bank)({**bank.__dict__, "g_sum": np.zeros_like(bank.g_sum), "g_count": np.zeros_like(bank.g_count),
                       "n_emb": same})
    f = bank.n_emb[:2]
    out = _run_head(bank, 5, f)
    assert out["topk_ids"].tolist() == [[0, 1, 2, 3, 4]] * 2


@pytest.fixture(scope="module")
def fused_dir(tiny_artifact, tmp_path_factory):
    """A copy of the tiny artifact (its banks stay as other tests expect them) with one bank."""
    import shutil

    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    art = tmp_path_factory.mktemp("fused") / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))

    t = init_texts("cifar10")
    classes = list(t.classes)
    classes[1] = dataclasses.replace(classes[1], att=("four wheels",), ana=("truck",))
    pairs = {(a, b): ("differs",) for a in range(10) for b in range(10) if a != b and (a + b) % 3}
    build_bank(art, dataclasses.replace(t, name="fusedtest", classes=tuple(classes), pairs=pairs))
    return art


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fused_classifier_matches_numpy_head(fused_dir, sample_images, precision):
    from coder.runtime.classifier import Classifier

    plain = Classifier.load(fused_dir, bank="fusedtest", backend="cpu", precision=precision, tau=1.01,
                            fused_head=False)
    fused = Classifier.load(fused_dir, bank="fusedtest", backend="cpu", precision=precision, tau=1.01)
    assert fused.encoder.fused and not plain.encoder.fused
    a, b = plain.classify(sample_images), fused.classify(sample_images)
    for p, q in zip(a, b):
        assert (p.label, p.top_k, p.rerank_candidates, p.reranked) == (q.label, q.top_k, q.rerank_candidates, q.reranked)
        np.testing.assert_allclose(p.stage1_scores, q.stage1_scores, atol=1e-4 if precision == "fp32" else 2e-3)
        np.testing.assert_allclose(p.rerank_scores, q.rerank_scores, atol=1e-4 if precision == "fp32" else 2e-3)
    assert any(p.reranked for p in b)


def test_fused_graph_is_cached_outside_the_bank_and_rebuilt_when_stale(fused_dir):
    from coder.manifest import load_artifact
    from coder.runtime.classifier import find_bank
    from coder.runtime.fused import ensure_fused_onnx
    from coder.text_bank.bank import load_bank

    art = load_artifact(fused_dir)
    bank = load_bank(find_bank(art.root, "fusedtest"), art)
    path = ensure_fused_onnx(art, bank, "fp32", 5)
    assert path.parent == fused_dir / "engines" / "fused" / "fusedtest"  # engine cache, not the bank
    mtime = path.stat().st_mtime_ns
    assert ensure_fused_onnx(art, bank, "fp32", 5) == path and path.stat().st_mtime_ns == mtime
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # corrupted: same size, other bytes
    assert ensure_fused_onnx(art, bank, "fp32", 5) == path
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == list(OUTPUTS)
    assert ensure_fused_onnx(art, bank, "fp32", 99).name == "image_head.fp32.k10.onnx"  # k clamped to C


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_two_sessions_equal_the_single_fused_graph(fused_dir, sample_images, precision):
    """The encoder + head-session path gives what the one fused graph gave (labels, scores <= 1e-5)."""
    from coder.manifest import load_artifact
    from coder.runtime.classifier import Classifier
    from coder.runtime.fused import fused_model

    clf = Classifier.load(fused_dir, bank="fusedtest", backend="cpu", precision=precision, tau=1.01)
    assert clf.encoder.fused and clf.encoder.head is not None
    pixels = clf._pixels(sample_images, False)
    got = clf.encoder.run_head(pixels)
    model = fused_model(load_artifact(fused_dir), clf.bank, precision, 5)
    from coder.engines.ort import session_options

    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(precision),
                                providers=["CPUExecutionProvider"])
    want = dict(zip(OUTPUTS, sess.run(None, {"pixel_values": pixels})))
    for name in OUTPUTS:
        np.testing.assert_allclose(getattr(got, name), want[name], atol=1e-5, rtol=0, err_msg=name)
    assert np.array_equal(got.topk_ids, want["topk_ids"])


def test_classifying_writes_nothing_into_the_bank(fused_dir, sample_images):
    from coder.runtime.classifier import Classifier

    bank_dir = fused_dir / "banks" / "fusedtest"
    (bank_dir / "fused").mkdir(exist_ok=True)  # what older versions left: copies of the encoder
    (bank_dir / "fused" / "image_head.fp32.k5.onnx").write_bytes(b"x" * 1000)
    for precision in ("fp32", "fp16"):
        Classifier.load(fused_dir, bank="fusedtest", backend="cpu", precision=precision).classify(sample_images)
    assert sorted(p.name for p in bank_dir.iterdir()) == [".coder-verified.json", "bank.json", "bank.npz"]


def test_head_session_follows_a_partially_placed_encoder(fused_dir, monkeypatch):
    """--allow-fallback with a partial TensorRT placement reports "tensorrt+cuda+cpu"; the head session then runs
    on CUDA (here: the CPU stand-in), not "unknown ONNX Runtime backend" (which `auto` silently skipped)."""
    from coder.engines import ort
    from coder.runtime.encoder import ImageEncoder
    from coder.runtime.fused import head_backend
    from coder.text_bank.bank import load_bank

    assert head_backend("tensorrt+cuda+cpu") == head_backend("tensorrt") == "cuda"
    assert head_backend("cuda+cpu") == "cuda" and head_backend("cpu") == "cpu"
    real_load = ort.load_ort
    asked = []

    def partial_gpu(path, backend="cpu", *a, **k):
        asked.append(backend)
        enc = real_load(path, "cpu", *a, **k)
        if isinstance(path, bytes):  # the head graph
            return enc
        return dataclasses.replace(enc, backend="tensorrt+cuda+cpu")  # what a partial placement reports

    import coder.runtime.encoder as encoder_mod
    monkeypatch.setattr(encoder_mod, "load_ort", partial_gpu)
    monkeypatch.setattr(ort, "load_ort", partial_gpu)
    bank = load_bank(fused_dir / "banks" / "fusedtest", fused_dir)
    enc = ImageEncoder.load_fused(fused_dir, bank, 5, "fp32", "tensorrt", allow_fallback=True)
    assert enc.fused and asked == ["tensorrt", "cuda"]
