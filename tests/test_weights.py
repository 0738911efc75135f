"""Local checkpoints (.pt/.bin/.safetensors) and offline tags, with a model the test saves."""

import time

import pytest
import torch

from coder.errors import WeightsError
from coder.export.registry import PretrainedSpec, parse_pretrained
from coder.export.weights import load_model
from coder.store import sha256_file


@pytest.fixture(scope="module")
def tiny_state(tiny_arch):
    model, _ = load_model(tiny_arch, PretrainedSpec("random", "none", 123))
    return model.state_dict()


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, tiny_arch, tiny_state, suffix):
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    else:
        torch.save({"state_dict": tiny_state} if suffix == ".pt" else tiny_state, path)
    model, record = load_model(tiny_arch, parse_pretrained(str(path), tiny_arch))
    assert record == {"kind": "file", "file": path.name, "sha256": sha256_file(path), "path": str(path.resolve())}
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_state[k]), k


def test_random_init_is_seeded(tiny_arch, tiny_state):
    again, record = load_model(tiny_arch, PretrainedSpec("random", "none", 123))
    assert record == {"kind": "random", "seed": 123}
    other, _ = load_model(tiny_arch, PretrainedSpec("random", "none", 124))
    key = "visual.proj"
    assert torch.equal(again.state_dict()[key], tiny_state[key])
    assert not torch.equal(other.state_dict()[key], tiny_state[key])


def test_corrupt_checkpoint(tmp_path, tiny_arch):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(WeightsError, match="cannot load checkpoint"):
        load_model(tiny_arch, parse_pretrained(str(path), tiny_arch))


def test_wrong_architecture_checkpoint(tmp_path, tiny_state):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_state, path)
    with pytest.raises(WeightsError, match="ViT-S-32"):
        load_model("ViT-S-32", parse_pretrained(str(path), "ViT-S-32"))


def test_offline_tag_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    t0 = time.monotonic()
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        load_model("ViT-B-32", parse_pretrained("openai", "ViT-B-32"))
    assert time.monotonic() - t0 < 30


def test_rebuild_from_a_local_checkpoint_checks_its_sha256(tmp_path, tiny_arch, tiny_state):
    """coder bench's torch reference for an artifact exported from a checkpoint file."""
    from coder.errors import WeightsError
    from coder.export.weights import rebuild_from_manifest

    path = tmp_path / "ckpt.pt"
    torch.save(tiny_state, path)
    _, record = load_model(tiny_arch, PretrainedSpec("file", str(path)))
    manifest = {"architecture": tiny_arch, "pretrained": record}
    model = rebuild_from_manifest(manifest)
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_state[k]), k
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in tiny_state.items()}, path)
    with pytest.raises(WeightsError, match="sha256"):
        rebuild_from_manifest(manifest)
    path.unlink()
    with pytest.raises(WeightsError, match="recorded path"):
        rebuild_from_manifest(manifest)
