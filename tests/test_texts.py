"""Class-texts files: built-in lists, validation naming the field, round trip."""

import json

import pytest

from coder.errors import TextsError
from coder.text_bank.wordnet import DEFAULT_DIR
from coder.text_bank.texts import (ClassTexts, builtin_lists, clip_templates, init_texts, load_texts,
                                   read_class_file, save_texts, to_json, validate)

PAPER = ["caltech101", "dtd", "eurosat", "food101", "oxford-pets", "flowers102", "fgvc-aircraft", "stanford-cars",
         "sun397", "ucf101", "places365", "cub200"]


def test_builtin_lists_have_sources_and_sizes():
    lists = builtin_lists()
    sizes = {"imagenet1k": 1000, "cifar10": 10, "cifar100": 100, "fashion-mnist": 10, "dtd": 47, "food101": 101,
             "oxford-pets": 37, "flowers102": 102, "stanford-cars": 196, "sun397": 397, "cub200": 200}
    for name, n in sizes.items():
        assert len(lists[name]["classes"]) == n, name
    for name in PAPER + list(sizes):
        entry = lists[name]
        assert entry["source"] and len(set(entry["classes"])) == len(entry["classes"])
        assert not any("_" in c for c in entry["classes"]), name
    assert len(clip_templates()) == 80


def test_init_round_trip(tmp_path):
    t = init_texts("dtd")
    assert t.templates["name"] == "{c} texture." and t.templates["tau"] == 0.6
    path = tmp_path / "t.json"
    save_texts(path, t)
    again = load_texts(path)
    assert again == t


def test_class_file_with_wordnet_ids(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("n01440764 tench, Tinca tinca\n\nn01443537 goldfish\ngreat_white shark\n")
    cls = read_class_file(f)
    assert cls == [ClassTexts("tench", "n01440764"), ClassTexts("goldfish", "n01443537"),
                   ClassTexts("great white shark", None)]
    t = init_texts(str(f))
    assert t.name == "classes" and t.preset == "default"


IMAGENET_REPEATS = ("n02012849 crane\nn02113186 Cardigan, Cardigan Welsh corgi\nn02963159 cardigan\n"
                   "n03126707 crane\nn03710637 maillot\nn03710721 maillot, tank suit\n")


def test_class_file_bom_and_imagenet_repeated_names(tmp_path):
    f = tmp_path / "LOC_synset_mapping.txt"
    f.write_bytes(b"\xef\xbb\xbf" + IMAGENET_REPEATS.encode())
    names = [c.name for c in read_class_file(f)]
    assert names[0] == "crane"  # no BOM left in the first name
    if (DEFAULT_DIR / "data.noun").is_file():  # WordNet parent of the synset
        assert names == ["crane", "Cardigan", "cardigan (sweater)", "crane (lifting device)", "maillot", "tank suit"]
    t = init_texts(str(f))
    assert [c.wnid for c in t.classes][3] == "n03126707"
    assert t.provenance["class_renames"][1].startswith("line 4: crane -> crane (")
    save_texts(tmp_path / "t.json", t)
    assert load_texts(tmp_path / "t.json") == t


def test_repeated_names_without_wordnet(tmp_path, monkeypatch):
    import coder.text_bank.wordnet as wordnet

    monkeypatch.setattr(wordnet, "DEFAULT_DIR", tmp_path / "nowhere")
    f = tmp_path / "c.txt"
    f.write_text(IMAGENET_REPEATS)
    assert [c.name for c in read_class_file(f)] == ["crane", "Cardigan", "cardigan (n02963159)",
                                                    "crane (n03126707)", "maillot", "tank suit"]


@pytest.mark.parametrize("content,message", [
    ("cat\ndog\ncat\n", r"line 3: duplicate class name 'cat' \(first on line 1\)"),
    ("n02084071 dog\nn02084071 domestic dog\n", r"line 2: WordNet id n02084071 already used on line 1"),
])
def test_class_file_real_duplicates_refused(tmp_path, content, message):
    f = tmp_path / "c.txt"
    f.write_text(content)
    with pytest.raises(TextsError, match=message):
        read_class_file(f)


def test_texts_file_with_bom_loads(tmp_path):
    path = tmp_path / "t.json"
    save_texts(path, init_texts("cifar10"))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_texts(path).class_names[0] == "airplane"


def _doc():
    t = init_texts("cifar10")
    d = to_json(t)
    d["classes"][3]["att"] = ["pointed ears", "whiskers"]
    d["pairs"] = [{"from": "cat", "to": "dog", "texts": ["a small face"]}]
    return d


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["classes"][3]["att"].__setitem__(1, "  "), r"classes\[3\].att\[1\]: empty string"),
    (lambda d: d["classes"][2].__setitem__("syn", "bird"), r"classes\[2\].syn: expected a list"),
    (lambda d: d["classes"][4].__setitem__("name", "cat"), r"classes\[4\].name: duplicate"),
    (lambda d: d["classes"][0].__setitem__("wnid", "12"), r"classes\[0\].wnid"),
    (lambda d: d["pairs"][0].__setitem__("to", "unicorn"), r"pairs\[0\].to: 'unicorn'"),
    (lambda d: d["pairs"].append(dict(d["pairs"][0])), r"pairs\[1\]: duplicate pair"),
    (lambda d: d["templates"].__setitem__("att", "{c} has"), r"templates.att: must be a string containing"),
    (lambda d: d["templates"].__setitem__("tau", -1), r"templates.tau"),
    (lambda d: d.__setitem__("format_version", 7), r"format_version: 7"),
    (lambda d: d.__setitem__("classes", []), r"classes: must be a non-empty list"),
])
def test_validation_names_the_field(mutate, field):
    d = _doc()
    validate(d)
    mutate(d)
    with pytest.raises(TextsError, match=field):
        validate(d)


def test_load_errors(tmp_path):
    with pytest.raises(TextsError, match="no such texts file"):
        load_texts(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(TextsError, match="not valid JSON"):
        load_texts(bad)
    d = _doc()
    d["classes"][1]["ana"] = [""]
    bad.write_text(json.dumps(d))
    with pytest.raises(TextsError, match=r"bad.json: classes\[1\].ana\[0\]: empty string"):
        load_texts(bad)


def test_unknown_source():
    with pytest.raises(TextsError, match="neither a built-in list"):
        init_texts("no-such-list")
