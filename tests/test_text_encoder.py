"""Torch-free text encoder == open_clip's encode_text, whatever tokens the texts hold and whoever shares the batch."""

from dataclasses import replace

import numpy as np
import pytest

from coder.text_bank.bank import EmbeddingCache, build_bank, load_bank
from coder.text_bank.text_encoder import TEXT_ENCODING_VERSION, TextEncoder
from coder.text_bank.texts import init_texts

# Id 0 is the BPE token "!" when it does not end a word: these texts hold it inside.
BANG = ["a cat which has a loud meow!(sometimes)", "!@#", "wow!;", "stop!—now"]
LONG = " ".join(f"word{i} and, another!" for i in range(60))  # far over 77 tokens: truncated, EOT kept
ODD = ["", "   ", "\t\n", "ÉCOLE café naïve", "日本語のテキスト", "a 🐈 and a 🐕‍🦺 🇫🇷",
       "x" * 500]
SHORT = ["a photo of a cat.", "dog"]


@pytest.fixture(scope="module")
def tiny_torch(tiny_artifact):
    from coder.export.weights import rebuild_from_manifest
    from coder.manifest import load_artifact

    return rebuild_from_manifest(load_artifact(tiny_artifact).manifest).eval()


def open_clip_text(model, texts):
    import open_clip
    import torch

    ids = open_clip.get_tokenizer("ViT-B-32")(texts)
    with torch.no_grad():
        emb = model.encode_text(ids).float().numpy()
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_bang_tokens_match_open_clip(tiny_artifact, tiny_torch):
    enc = TextEncoder.load(tiny_artifact)
    assert (enc.tokenizer(BANG)[:, 1:] == 0).any(axis=1).all()  # every text really holds id 0 inside
    got = enc.encode(BANG)
    np.testing.assert_allclose(got, open_clip_text(tiny_torch, BANG), atol=2e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_mixed_batch_matches_open_clip(tiny_artifact, tiny_torch, batch_size):
    texts = SHORT + BANG + [LONG] + ODD
    got = TextEncoder.load(tiny_artifact).encode(texts, batch_size=batch_size)
    np.testing.assert_allclose(got, open_clip_text(tiny_torch, texts), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_result_does_not_depend_on_batch_company(tiny_artifact):
    enc = TextEncoder.load(tiny_artifact)
    alone = np.concatenate([enc.encode([t]) for t in BANG + [LONG]])
    together = enc.encode(BANG + [LONG] + SHORT)[:len(BANG) + 1]
    np.testing.assert_allclose(alone, together, atol=1e-5)


def test_truncated_text_keeps_end_of_text(tiny_artifact):
    enc = TextEncoder.load(tiny_artifact)
    ids = enc.tokenizer([LONG])
    assert ids[0, -1] == enc.tokenizer.eos_id and enc.tokenizer.lengths(ids)[0] == 77


def test_cache_of_an_older_encoding_is_not_served(tiny_artifact, tmp_path):
    """Rows a previous text encoding cached (here: garbage under the old, unversioned name) are re-encoded."""
    texts = init_texts("cifar10")
    texts = texts.with_classes([replace(c, name="yahoo!(web)") if i == 0 else c for i, c in enumerate(texts.classes)])
    enc = TextEncoder.load(tiny_artifact)
    from coder.text_bank.rows import expand

    raw = expand(texts).texts
    legacy = tmp_path / f".embed-cache-{enc.encoder_sha256[:16]}.npz"  # what the old code wrote
    np.savez(legacy, texts=np.array(raw, dtype=str), emb=np.ones((len(raw), enc.artifact.embed_dim), np.float32))
    assert EmbeddingCache(tmp_path, enc.encoder_sha256, TEXT_ENCODING_VERSION).missing(raw) == sorted(set(raw))
    _, meta = build_bank(tiny_artifact, texts, out=tmp_path / "b", clip_weights=True)  # every row of `raw`
    assert meta["counts"]["newly_encoded"] == len(set(raw))
    assert meta["encoder"]["text_encoding"] == TEXT_ENCODING_VERSION
    assert not legacy.exists()
    np.testing.assert_allclose(load_bank(tmp_path / "b").raw_emb, enc.encode(meta["raw_texts"]), atol=1e-6)
    name = f".embed-cache-{enc.encoder_sha256[:16]}-k{enc.tokenizer_key[:12]}-t{TEXT_ENCODING_VERSION}.npz"
    assert (tmp_path / name).is_file()  # keyed by text encoder, tokenizer and encoding version


def test_bank_of_the_old_encoding_with_a_bang_text_is_refused(tiny_artifact, tmp_path):
    """A bank.json without text_encoding (older coder) holding an inner "!" must be rebuilt; others still load."""
    import json

    from coder.errors import ArtifactError

    texts = init_texts("cifar10")
    for name, refused in [("meow!(sometimes)", True), ("yahoo!", False), ("cat", False)]:
        t = texts.with_classes([replace(c, name=name) if i == 3 else c for i, c in enumerate(texts.classes)])
        path, _ = build_bank(tiny_artifact, t, out=tmp_path / name)
        load_bank(path, tiny_artifact)
        meta = json.loads((path / "bank.json").read_text())
        del meta["encoder"]["text_encoding"]
        (path / "bank.json").write_text(json.dumps(meta))
        if refused:
            with pytest.raises(ArtifactError, match="rebuild it: coder bank build"):
                load_bank(path, tiny_artifact)
        else:
            load_bank(path, tiny_artifact)
