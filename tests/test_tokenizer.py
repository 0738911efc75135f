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
    if (got != 0).sum() == 77:
        assert got[0, -1] == ours.eot


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
