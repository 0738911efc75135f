"""The CLIP BPE tokenizer of an export follows the model config's ``tokenizer_kwargs`` (checked id for id)."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
from typer.testing import CliRunner

from coder.cli import app
from coder.errors import ExportError
from coder.export.registry import PretrainedSpec, register_model_config
from tests.conftest import TINY_CONFIG

runner = CliRunner()
HOT_DOG = ["hot_dog, please.", 'Hot-Dog: "PLEASE" (50% off) -- e.g. U.S.A.; __init__', "a_b_c"]


def _config(tmp_path, name: str, tokenizer_kwargs: dict) -> str:
    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["text_cfg"]["tokenizer_kwargs"] = tokenizer_kwargs
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return register_model_config(path)


def test_canonicalize_is_exported_and_matches_open_clip(tmp_path):
    from coder.export.pipeline import ExportOptions, export_artifacts
    from coder.manifest import load_artifact
    from coder.text_bank.tokenizer import load_tokenizer

    arch = _config(tmp_path, "coder-tiny-canonical", {"clean": "canonicalize"})
    out = tmp_path / "art"
    export_artifacts(ExportOptions(arch, PretrainedSpec("random", "none", 0), out, ("fp32",), validate=False))
    art = load_artifact(out)
    assert art.manifest["text"]["tokenizer"]["clean"] == "canonicalize"
    want = open_clip.get_tokenizer(arch)(HOT_DOG).numpy()
    np.testing.assert_array_equal(load_tokenizer(art)(HOT_DOG), want)


def test_a_runtime_that_differs_from_open_clip_is_refused(tmp_path, monkeypatch):
    from coder.export import tokenizer_info

    arch = _config(tmp_path, "coder-tiny-canonical2", {"clean": "canonicalize"})
    monkeypatch.setattr(tokenizer_info, "_clean_name", lambda t: "lower")  # the old behaviour: cleaning ignored
    with pytest.raises(ExportError, match="differs from open_clip's"):
        tokenizer_info.save_tokenizer(open_clip.get_tokenizer(arch), tmp_path, arch)


@pytest.mark.parametrize("kwargs, words", [({"reduction_mask": "simple"}, "reduction_mask"),
                                           ({"additional_special_tokens": ["<obj>"]}, "additional_special_tokens"),
                                           ({"clean": "fancy"}, "tokenizer_kwargs")])
def test_settings_without_a_torch_free_runtime_are_exit_4(tmp_path, kwargs, words):
    arch = _config(tmp_path, f"coder-tiny-{next(iter(kwargs)).replace('_', '-')}", kwargs)
    res = runner.invoke(app, ["export", "-b", arch, "--pretrained", "none", "--out", str(tmp_path / "a"),
                              "--classes", "none", "--no-validate"])
    assert res.exit_code == 4, res.output
    assert words in res.output and "Hugging Face" not in res.output
    assert not (tmp_path / "a" / "manifest.json").exists()
