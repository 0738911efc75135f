"""coder's torch-free tokenizer == open_clip's SimpleTokenizer, id for id."""

import numpy as np
import open_clip
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import default_bpe

from coder.manifest import load_artifact
from coder.text_bank.tokenizer import ClipTokenizer


@pytest.fixture(scope="module")
def pair():
    return ClipTokenizer(default_bpe()), open_clip.get_tokenizer("ViT-B-32")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=120))
def test_random_unicode(pair, text):
    ours, ref = pair
    np.testing.assert_array_equal(ours([text]), ref([text]).numpy())


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.text(alphabet=st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=15),
                      min_size=60, max_size=120))
def test_long_texts_truncate_at_context(pair, words):
    ours, ref = pair
    text = " ".join(words)
    got = ours([text])
    np.testing.assert_array_equal(got, ref([text]).numpy())
    if len(ours.encode(text)) + 2 >= 77:  # truncated (or exactly full): the last position is EOT
        assert got[0, -1] == ours.eot and ours.lengths(got)[0] == 77
    else:
        assert ours.lengths(got)[0] == len(ours.encode(text)) + 2


def test_lengths_come_from_end_of_text(pair):
    from coder.text_bank.tokenizer import eos_lengths

    ours, _ = pair
    ids = ours(["wow!;", "!@#", "a cat which has a loud meow!(sometimes)", "", "cat"])
    assert (ids[:3, 1:-1] == 0).any(axis=1).all()  # id 0 ("!") inside the text, not padding
    assert ours.lengths(ids).tolist() == [len(ours.encode(t)) + 2 for t in
                                          ["wow!;", "!@#", "a cat which has a loud meow!(sometimes)", "", "cat"]]
    # A tokenizer padding with its EOS id (some Hugging Face ones), and a row truncated without EOS.
    assert eos_lengths(np.array([[5, 0, 9, 9, 9], [5, 1, 2, 3, 4]]), 9).tolist() == [3, 5]
    assert eos_lengths(np.array([[5, 0, 9]]), None).tolist() == [3]  # no EOS id: the full width


def test_builtin_class_names(pair):
    ours, ref = pair
    texts = [f"a photo of a {c}." for c in open_clip.IMAGENET_CLASSNAMES] + list(open_clip.IMAGENET_CLASSNAMES)
    np.testing.assert_array_equal(ours(texts), ref(texts).numpy())


def test_special_cases(pair):
    ours, ref = pair
    texts = ["", "   ", "&amp;lt;b&amp;gt;", "<start_of_text>x<end_of_text>", "ÉCOLE", "don't", "a\tb\nc"]
    np.testing.assert_array_equal(ours(texts), ref(texts).numpy())
    assert ours(texts).dtype == np.int32


def test_from_artifact(tiny_artifact):
    tok = ClipTokenizer.from_artifact(load_artifact(tiny_artifact))
    assert tok.context_length == 77 and tok(["a cat"])[0, 0] == tok.sot


HOT_DOG = ["hot_dog, please.", 'Hot-Dog: "PLEASE" (50% off) -- e.g. U.S.A.; __init__', "a_b_c", "it's a cat!",
           "caf\u00e9_au_lait\u00a0NOW", ""]


@pytest.fixture(scope="module", params=["lower", "whitespace", "canonicalize"])
def clean_pair(request):
    """open_clip's SimpleTokenizer with a model config's ``tokenizer_kwargs.clean`` is the oracle."""
    from open_clip.tokenizer import SimpleTokenizer

    return ClipTokenizer(default_bpe(), clean=request.param), SimpleTokenizer(clean=request.param)


def test_every_clean_mode_matches_open_clip(clean_pair):
    ours, ref = clean_pair
    np.testing.assert_array_equal(ours(HOT_DOG), ref(HOT_DOG).numpy())


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80))
def test_every_clean_mode_on_random_unicode(clean_pair, text):
    ours, ref = clean_pair
    np.testing.assert_array_equal(ours([text]), ref([text]).numpy())


def test_the_clean_modes_differ_and_unknown_ones_are_refused():
    ids = {mode: ClipTokenizer(default_bpe(), clean=mode)(["hot_dog, please."]) for mode in ("lower", "canonicalize")}
    assert not np.array_equal(ids["lower"], ids["canonicalize"])
    with pytest.raises(ValueError, match="unknown text cleaning 'fancy'"):
        ClipTokenizer(default_bpe(), clean="fancy")
