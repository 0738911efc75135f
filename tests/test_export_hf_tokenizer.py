"""HF-tokenizer towers (SigLIP-style): the tokenizer.json runtime equals open_clip's HFTokenizer id for id.

The tokenizer is a tiny Unigram model trained here offline and loaded by
open_clip from a local directory, exactly as a hub tokenizer would be.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coder.errors import ArtifactError, ChecksumError
from tests.backbone_families import register_families

ARCH = "coder-tiny-siglip"


@pytest.fixture(scope="module")
def oc_tokenizer(tmp_path_factory):
    import open_clip

    register_families(tmp_path_factory.mktemp("fam"))
    return open_clip.get_tokenizer(ARCH)


@pytest.fixture(scope="module")
def saved(oc_tokenizer, tmp_path_factory):
    from coder.export.tokenizer_info import save_tokenizer
    from coder.text_bank.tokenizer import HFTokenizer

    out = tmp_path_factory.mktemp("tok")
    record = save_tokenizer(oc_tokenizer, out, ARCH)
    return record, HFTokenizer.from_record(out / record["file"], record)


def test_record_names_the_settings(saved):
    record, tok = saved
    assert record["kind"] == "hf_tokenizers" and record["clean"] == "canonicalize"
    assert (record["context_length"], record["pad_id"], record["eos_id"]) == (16, 0, 1)
    assert tok.eos_id == 1 and tok.context_length == 16


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(["a", "photo", "of", "the", "Cat", "DOG!", "tiger_lily", "café", "über", "&amp;",
                              "  ", "\n", "x" * 20, "日本", "it's"]), max_size=30).map(" ".join)),
    min_size=1, max_size=6))
def test_ids_equal_open_clip(oc_tokenizer, saved, texts):
    _, tok = saved
    want = oc_tokenizer(texts).numpy()
    got = tok(texts)
    assert got.dtype == np.int32 and got.shape == want.shape == (len(texts), 16)
    assert np.array_equal(got, want)


def test_truncation_keeps_eos_last_and_pads(saved):
    _, tok = saved
    ids = tok(["photo " * 40, "cat"])
    assert ids[0, -1] == tok.eos_id and (ids[0] != 0).all()
    assert list(ids[1]).index(tok.eos_id) < 15 and ids[1, -1] == 0


def test_mismatch_is_refused_at_export(oc_tokenizer, saved, tmp_path, monkeypatch):
    """The export checks the saved tokenizer against open_clip before writing anything else."""
    from coder.errors import ExportError
    from coder.export import tokenizer_info

    monkeypatch.setattr(tokenizer_info, "_clean_name", lambda t: "lower")  # a wrong cleaning: case kept, "_" kept
    with pytest.raises(ExportError, match="differs from open_clip's"):
        tokenizer_info.save_tokenizer(oc_tokenizer, tmp_path, ARCH)


@pytest.fixture(scope="module")
def artifact(oc_tokenizer, tmp_path_factory):
    from coder.export.pipeline import ExportOptions, export_artifacts
    from coder.export.registry import PretrainedSpec

    out = tmp_path_factory.mktemp("art") / "siglip"
    export_artifacts(ExportOptions(ARCH, PretrainedSpec("random", "none", 0), out, ("fp32",)))
    return out


def test_artifact_carries_the_tokenizer_with_its_sha256(artifact, oc_tokenizer):
    import hashlib

    import open_clip
    import torch

    from coder.manifest import load_artifact
    from coder.text_bank.text_encoder import TextEncoder

    m = load_artifact(artifact).manifest
    rec = m["text"]["tokenizer"]
    assert rec["sha256"] == hashlib.sha256((artifact / "tokenizer.json").read_bytes()).hexdigest()
    assert m["files"]["tokenizer.json"]["sha256"] == rec["sha256"]
    texts = ["a photo of a cat.", "A TIGER_LILY!", "photo " * 30]
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None).eval()
    with torch.no_grad():
        want = model.encode_text(oc_tokenizer(texts), normalize=True).numpy()
    got = TextEncoder.load(artifact).encode(texts)
    assert np.abs(got - want).max() <= 1e-4


def test_tampered_tokenizer_file_is_refused(artifact, tmp_path):
    import shutil

    from coder.text_bank.text_encoder import TextEncoder

    art = tmp_path / "a"
    shutil.copytree(artifact, art)
    path = art / "tokenizer.json"
    data = bytearray(path.read_bytes())
    data[100] = ord("X") if data[100] != ord("X") else ord("Y")
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        TextEncoder.load(art)


def test_unknown_tokenizer_kind_is_a_clear_error(artifact, tmp_path):
    import json
    import shutil

    from coder.manifest import load_artifact
    from coder.text_bank.tokenizer import load_tokenizer

    art = tmp_path / "a"
    shutil.copytree(artifact, art)
    m = json.loads((art / "manifest.json").read_text())
    m["text"]["tokenizer"]["kind"] = "sentencepiece_v9"
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="sentencepiece_v9"):
        load_tokenizer(load_artifact(art))


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"), reason="needs the Hugging Face hub")
@pytest.mark.parametrize("arch", ["ViT-B-16-SigLIP", "ViT-B-16-SigLIP2"])
def test_real_hub_tokenizers(arch, tmp_path):
    import open_clip

    from coder.export.tokenizer_info import save_tokenizer, tokenizer_probe_texts
    from coder.text_bank.tokenizer import HFTokenizer

    oc = open_clip.get_tokenizer(arch)
    record = save_tokenizer(oc, tmp_path, arch)
    texts = tokenizer_probe_texts()
    assert np.array_equal(HFTokenizer.from_record(tmp_path / record["file"], record)(texts), oc(texts).numpy())


def test_runtime_tokenizer_is_torch_and_transformers_free(artifact):
    import json
    import subprocess
    import sys

    code = (f"from coder.text_bank.text_encoder import TextEncoder\n"
            f"TextEncoder.load({str(artifact)!r}).encode(['a photo of a cat'])\n"
            "import sys, json\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'open_clip', 'transformers', 'torchvision'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
