"""WordNet 3.0 reader and synonym filling (Debian wordnet-base, installed by .ci/run)."""

import numpy as np
import pytest

from coder.errors import ConfigError, TextsError
from coder.text_bank.texts import ClassTexts, builtin_lists, init_texts
from coder.text_bank.wordnet import DEFAULT_DIR, Synset, WordNet, add_synonyms, choose_synset

pytestmark = pytest.mark.skipif(not (DEFAULT_DIR / "data.noun").is_file(), reason="wordnet-base not installed")


@pytest.fixture(scope="module")
def wn():
    return WordNet()


def test_exact_synset_by_id(wn):
    s = wn.synset("n02084071")
    assert s.lemmas == ("dog", "domestic dog", "Canis familiaris")
    assert s.gloss.startswith("a member of the genus Canis") and '"' not in s.gloss
    assert s.synonyms_of("Dog") == ("domestic dog", "Canis familiaris")


def test_imagenet_ids_resolve(wn):
    # ImageNet class 0 (tench) and 1 (goldfish) are WordNet 3.0 noun synsets.
    assert wn.synset("n01440764").lemmas[:2] == ("tench", "Tinca tinca")
    assert "Carassius auratus" in wn.synset("n01443537").lemmas


def test_lookup_forms(wn):
    assert wn.noun_synsets("great white shark")[0].wnid == "n01484850"
    assert wn.noun_synsets("mice")[0].lemmas[0] == "mouse"
    assert wn.noun_synsets("T-shirt/top") == []


def test_bad_ids(wn):
    with pytest.raises(TextsError, match="not a WordNet noun id"):
        wn.synset("dog")
    with pytest.raises(TextsError, match="not a synset"):
        wn.synset("n00000001")


def test_missing_database(tmp_path):
    with pytest.raises(ConfigError, match="wordnet-base"):
        WordNet(tmp_path)


class _FakeEncoder:
    """Encodes the query as e0 and the gloss containing 'pick me' as e0 too: that one must win."""

    def encode(self, texts):
        out = np.zeros((len(texts), 4), np.float32)
        out[0, 0] = 1
        for i, t in enumerate(texts[1:], 1):
            out[i, 0 if "pick me" in t else 1] = 1
        return out


def test_choose_by_definition_similarity():
    a, b = Synset("n00000001", ("x",), "unrelated"), Synset("n00000002", ("x", "y"), "pick me")
    assert choose_synset("x", [a, b], _FakeEncoder()) == b
    assert choose_synset("x", [a, b], None) == a  # most frequent sense
    assert choose_synset("x", [], None) is None


def test_add_synonyms_uses_name_template_and_reports_unmatched(wn):
    t = init_texts("fashion-mnist")
    t = t.with_classes([ClassTexts("dog", "n02084071", ("pup",))] + list(t.classes[:2]))
    new, unmatched = add_synonyms(t, wn)
    assert new.classes[0].syn == ("pup", "domestic dog", "Canis familiaris")
    assert "T-shirt/top" in unmatched
    from coder.text_bank.rows import expand
    rows = expand(new)
    assert "a photo of a domestic dog, a type of clothing." in rows.texts  # name template, never "None"
    assert not any("None" in s for s in rows.texts)


def test_with_real_text_encoder(wn, tiny_artifact):
    from coder.text_bank.text_encoder import TextEncoder

    t = init_texts("cifar10")
    new, unmatched = add_synonyms(t, wn, TextEncoder.load(tiny_artifact))
    assert unmatched == []
    syn = {c.name: c.syn for c in new.classes}
    # One noun sense each: the exact lemma list, whatever the encoder prefers.
    assert syn["airplane"] == ("aeroplane", "plane")
    assert syn["automobile"] == ("car", "auto", "machine", "motorcar")
    assert syn["deer"] == ("cervid",)
    assert syn["ship"] == ()
    # Several senses: exactly the lemmas of one of them (the encoder picks which).
    for name in ("bird", "cat", "dog", "frog", "horse", "truck"):
        assert syn[name] in [s.synonyms_of(name) for s in wn.noun_synsets(name)], name


def test_imagenet1k_ships_exact_wordnet_ids(wn):
    t = init_texts("imagenet1k")
    wnids = [c.wnid for c in t.classes]
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000  # the ILSVRC2012 synset order
    # Same curated name word, two synsets: each class gets its own synset, never a sense guess.
    by_name = {c.name: c for c in t.classes}
    assert by_name["crane bird"].wnid == "n02012849" and by_name["construction crane"].wnid == "n03126707"
    assert "wnid_source" in builtin_lists()["imagenet1k"]
    new, unmatched = add_synonyms(t, wn, _FakeEncoder())  # an encoder that would pick a wrong sense if asked
    assert unmatched == []
    syn = {c.name: c.syn for c in new.classes}
    assert syn["tench"] == ("Tinca tinca",)
    assert syn["goldfish"] == ("Carassius auratus",)
    assert syn["crane bird"] == ("crane",)
    assert syn["construction crane"] == ("crane",)
    assert syn["projectile"] == ("missile",)
    assert syn["one-piece bathing suit"] == ("maillot", "tank suit")
    # every class's synonyms are exactly its own synset's other lemmas
    for c in new.classes[::97]:
        assert c.syn == wn.synset(c.wnid).synonyms_of(c.name), c.name


def test_binary_search_lookup_equals_the_full_index():
    """`offsets` (a binary search of index.noun, what adding one class uses) = the fully parsed index."""
    from coder.text_bank.wordnet import DEFAULT_DIR, WordNet

    if not (DEFAULT_DIR / "index.noun").is_file():
        pytest.skip("WordNet 3.0 not installed")
    wn = WordNet()
    items = list(wn._index.items())
    sample = items[:200] + items[-200:] + items[::211]
    assert [wn.offsets(k) for k, _ in sample] == [v for _, v in sample]
    assert wn.offsets("no_such_lemma_here") == [] and wn.offsets("") == []
