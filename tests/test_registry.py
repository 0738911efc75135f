import pytest

from coder.errors import ConfigError
from coder.export.registry import normalize_backbone, parse_pretrained


@pytest.mark.parametrize("name,want", [("ViT-B/16", "ViT-B-16"), ("ViT-B-16", "ViT-B-16"),
                                       ("vit-b/32", "ViT-B-32"), (" ViT-L/14 ", "ViT-L-14")])
def test_spellings(name, want):
    assert normalize_backbone(name) == want


def test_unknown_lists_close_names():
    with pytest.raises(ConfigError) as ei:
        normalize_backbone("ViT-B/61")
    msg = str(ei.value)
    assert "ViT-B/61" in msg and "ViT-B-16" in msg and "\n" not in msg


def test_pretrained_kinds(tmp_path):
    assert parse_pretrained("none", "ViT-B-32").kind == "random"
    assert parse_pretrained("openai", "ViT-B-32").kind == "tag"
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"x")
    spec = parse_pretrained(str(ckpt), "ViT-B-32")
    assert spec.kind == "file" and spec.slug == "w"


def test_bad_tag_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="valid: .*openai"):
        parse_pretrained("not-a-tag", "ViT-B-32")
    with pytest.raises(ConfigError, match="not found"):
        parse_pretrained(str(tmp_path / "missing.safetensors"), "ViT-B-32")
