import json

import pytest
from typer.testing import CliRunner

from coder.cli import app
from coder.errors import ConfigError, TextsError
from coder.text_bank.importers import import_descriptions, read_descriptions
from coder.text_bank.texts import init_texts, load_texts, save_texts


def test_vcd_import_tolerant_names(tmp_path):
    src = tmp_path / "descriptors.json"
    src.write_text(json.dumps({"Aquarium_Fish": ["bright colours.", "fins"], "Lawn  Mower": ["a motor"],
                               "spaceship": ["rockets"]}))
    t = init_texts("cifar100")
    new, missing, extra = import_descriptions(t, read_descriptions(src, "vcd"), "att")
    by_name = {c.name: c for c in new.classes}
    assert by_name["aquarium fish"].att == ("bright colours", "fins")
    assert by_name["lawn mower"].att == ("a motor",)
    assert extra == ["spaceship"] and len(missing) == 98


def test_cupl_keeps_sentences_and_ana_kind():
    t = init_texts("cifar10")
    new, *_ = import_descriptions(t, {"cat": ["A cat is a small furry animal."]}, "ana")
    assert new.classes[3].ana == ("A cat is a small furry animal.",)
    with pytest.raises(ConfigError, match="--kind"):
        import_descriptions(t, {}, "pair")


@pytest.mark.parametrize("content,needle", [("[1, 2]", "expected an object"), ('{"cat": "one"}', "list of strings"),
                                            ("{bad", "cannot read")])
def test_malformed_sources(tmp_path, content, needle):
    src = tmp_path / "d.json"
    src.write_text(content)
    with pytest.raises(TextsError, match=needle):
        read_descriptions(src, "vcd")


def test_cli_import_reports_unmatched(tmp_path):
    texts, src = tmp_path / "t.json", tmp_path / "d.json"
    save_texts(texts, init_texts("cifar10"))
    src.write_text(json.dumps({"CAT": ["whiskers"], "unicorn": ["a horn"]}))
    res = CliRunner().invoke(app, ["texts", "import", str(texts), str(src), "--kind", "att"])
    assert res.exit_code == 0, res.output
    assert "1/10" in res.output and "unicorn" in res.output
    assert load_texts(texts).classes[3].att == ("whiskers",)


def test_descriptions_empty_once_cleaned_are_dropped_and_the_file_stays_loadable(tmp_path):
    src = tmp_path / "d.json"
    src.write_text(json.dumps({"cat": ["...", "whiskers.", " . ", "pointed ears"], "dog": ["…", "a tail"]}))
    texts = tmp_path / "t.json"
    save_texts(texts, init_texts("cifar10"))
    r = CliRunner().invoke(app, ["texts", "import", str(texts), str(src)])
    assert r.exit_code == 0, r.output
    assert "dropped 2 descriptions" in r.output and "cat[0]: '...'" in r.output
    t = load_texts(texts)  # the saved file loads (it did not when "..." was stored as "")
    by_name = {c.name: c for c in t.classes}
    assert by_name["cat"].att == ("whiskers", "pointed ears") and by_name["dog"].att == ("…", "a tail")
    dropped = []
    assert read_descriptions(src, "cupl", dropped)["cat"] == ["...", "whiskers.", ".", "pointed ears"] and dropped == []


def test_import_validates_before_returning():
    t = init_texts("cifar10")
    with pytest.raises(TextsError, match=r"classes\[3\].att\[0\]: empty string"):
        import_descriptions(t, {"cat": ["  "]}, "att")
