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


def test_plain_clip_weights_on_first_use_equal_the_eager_ones(tiny_artifact, tmp_path):
    """Banks skip the 80-template ensemble at build; W computed later is the eagerly stored W."""
    import json as _json

    from coder.text_bank.bank import build_bank, load_bank
    from coder.text_bank.clip_weights import FILE
    from coder.text_bank.texts import init_texts

    t = init_texts("cifar10")
    lazy_dir, meta = build_bank(tiny_artifact, t, out=tmp_path / "banks" / "lazy")
    eager_dir, _ = build_bank(tiny_artifact, t, out=tmp_path / "banks" / "eager", clip_weights=True)
    assert meta["counts"]["texts"] == len(meta["raw_texts"]) == 10  # the 10 names; no 800 ensemble texts
    assert meta["clip_templates"] == list(t.templates["clip"]) and len(meta["clip_templates"]) == 80
    lazy, eager = load_bank(lazy_dir, tiny_artifact), load_bank(eager_dir, tiny_artifact)
    assert "clip_w" not in lazy.arrays and "clip_w" in eager.arrays
    for name in ("g_sum", "n_emb", "pair_vec"):  # the CODER head itself is unchanged
        np.testing.assert_array_equal(lazy.arrays[name], eager.arrays[name])
    np.testing.assert_allclose(lazy.clip_w, eager.clip_w, atol=1e-6)
    assert (lazy_dir / FILE).is_file()
    again = load_bank(lazy_dir, tiny_artifact)
    np.testing.assert_allclose(again.clip_w, eager.clip_w, atol=1e-6)  # from the cache
    bj = _json.loads((lazy_dir / "bank.json").read_text())
    bj["clip_templates"] = bj["clip_templates"][:1]  # other templates: the cache is stale, recomputed
    (lazy_dir / "bank.json").write_text(_json.dumps(bj))
    one = load_bank(lazy_dir, tiny_artifact).clip_w
    assert not np.allclose(one, eager.clip_w, atol=1e-6)


def test_plain_clip_weights_report_progress_once(tiny_artifact, tmp_path):
    """The first use encodes C x 80 texts and says so (eval/fit show a bar); a cached W encodes none."""
    from coder.text_bank.bank import build_bank, load_bank
    from coder.text_bank.texts import init_texts

    bank_dir, _ = build_bank(tiny_artifact, init_texts("cifar10"), out=tmp_path / "banks" / "c10")
    seen = []
    load_bank(bank_dir, tiny_artifact).load_clip_weights(lambda done, total: seen.append((done, total)))
    done, total = seen[-1]  # 10 classes x 80 templates, less texts the bank already encoded
    assert done == total and 700 < total <= 800 and len(seen) >= 2
    seen.clear()
    load_bank(bank_dir, tiny_artifact).load_clip_weights(lambda done, total: seen.append((done, total)))
    assert all(total == 0 for _, total in seen)


def test_bank_build_refuses_to_replace_a_bank_from_another_texts_file(tiny_artifact, tmp_path):
    import dataclasses
    import json as _json

    from typer.testing import CliRunner

    from coder.cli import app
    from coder.cli.common import EXIT_CODES
    from coder.errors import ArtifactError
    from coder.text_bank.texts import init_texts, save_texts

    t = init_texts("cifar10")
    a, b = tmp_path / "a" / "mine.json", tmp_path / "b" / "mine.json"  # same bank name, other files
    a.parent.mkdir(), b.parent.mkdir()
    save_texts(a, t)
    save_texts(b, dataclasses.replace(t, classes=t.classes[:5]))
    out = tmp_path / "banks" / "cifar10"
    run = lambda *args: CliRunner().invoke(app, ["bank", "build", "-a", str(tiny_artifact), "--out", str(out),  # noqa: E731
                                                 "--json", *map(str, args)])
    assert run("--texts", a).exit_code == 0
    assert run("--texts", a).exit_code == 0  # same file again (edited or not): the normal rebuild
    res = run("--texts", b)
    code = next(c for cls, c, _ in EXIT_CODES if cls is ArtifactError)
    assert res.exit_code == code and "--force" in res.output and "--name" in res.output
    assert len(_json.loads((out / "bank.json").read_text())["classes"]) == 10  # untouched
    assert run("--texts", b, "--force").exit_code == 0
    assert len(_json.loads((out / "bank.json").read_text())["classes"]) == 5
    named = CliRunner().invoke(app, ["bank", "build", "-a", str(tiny_artifact), "--texts", str(a), "--name", "other",
                                     "--json"])
    assert named.exit_code == 0, named.output
    assert (tiny_artifact / "banks" / "other" / "bank.json").is_file()
    import shutil

    shutil.rmtree(tiny_artifact / "banks" / "other")  # the shared artifact keeps its banks as they were


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the first array's payload: the zip CRC no longer matches
    path.write_bytes(bytes(data))


def test_damaged_caches_are_rebuilt_with_a_warning(tiny_artifact, tmp_path):
    """One flipped byte in clip_w.npz or .embed-cache-*.npz is a warning and a rebuild, never a crash."""
    from coder.store.cache import CacheWarning
    from coder.text_bank.clip_weights import FILE

    t = init_texts("cifar10")
    bank_dir, _ = build_bank(tiny_artifact, t, out=tmp_path / "banks" / "c10")
    want = load_bank(bank_dir, tiny_artifact).clip_w
    _flip_a_byte(bank_dir / FILE)
    with pytest.warns(CacheWarning, match="damaged"):
        got = load_bank(bank_dir, tiny_artifact).clip_w
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(load_bank(bank_dir, tiny_artifact).clip_w, want, atol=1e-6)  # rewritten whole
    [cache] = (tmp_path / "banks").glob(".embed-cache-*.npz")
    _flip_a_byte(cache)
    with pytest.warns(CacheWarning, match="damaged"):
        again, _ = build_bank(tiny_artifact, t, out=tmp_path / "banks" / "c10")
    np.testing.assert_array_equal(load_bank(again, tiny_artifact).arrays["g_sum"],
                                  load_bank(bank_dir, tiny_artifact).arrays["g_sum"])


def test_read_only_bank_keeps_caches_in_memory(tiny_artifact, tmp_path, monkeypatch):
    """A read-only artifact (EROFS/EACCES on every write under it) still gives W, with a warning."""
    import errno
    import os
    import tempfile

    import coder.store.files as files
    from coder.store.cache import CacheWarning

    bank_dir, _ = build_bank(tiny_artifact, init_texts("cifar10"), out=tmp_path / "banks" / "c10")
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if dir is not None and str(tmp_path) in os.fspath(dir):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.warns(CacheWarning, match="kept in memory"):
        w = load_bank(bank_dir, tiny_artifact).clip_w
    assert w.shape[0] == 10 and not list(bank_dir.glob("clip_w.npz"))


def test_bank_records_its_texts_file_relative_so_a_moved_artifact_rebuilds(tiny_artifact, tmp_path):
    """bank.json once held an absolute texts path: a moved or packed artifact refused its own texts file."""
    import json as _json

    from coder.text_bank.bank import check_replace
    from coder.text_bank.texts import save_texts

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art, ignore=shutil.ignore_patterns("banks"))
    t = init_texts("cifar10")
    save_texts(art / "texts-c10.json", t)
    bank_dir, meta = build_bank(art, t, out=art / "banks" / "c10", texts_file=art / "texts-c10.json")
    assert meta["texts_file"] == "../../texts-c10.json"
    moved = tmp_path / "moved"
    art.rename(moved)
    edited = init_texts("cifar10")
    edited = edited.__class__(edited.name, edited.preset, edited.templates, edited.classes[:9], {}, edited.provenance)
    save_texts(moved / "texts-c10.json", edited)  # same file, edited: the normal incremental rebuild
    check_replace(moved / "banks" / "c10", edited, moved / "texts-c10.json", force=False)
    with pytest.raises(ArtifactError, match="--force"):  # another file with other texts is still refused
        save_texts(tmp_path / "other.json", edited)
        check_replace(moved / "banks" / "c10", edited, tmp_path / "other.json", force=False)
    assert _json.loads((moved / "banks" / "c10" / "bank.json").read_text())["texts_file"] == "../../texts-c10.json"
