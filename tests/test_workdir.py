"""Export target handling: staging beside an artifact for --force, recovery of an interrupted swap."""

import json

import pytest

from coder.errors import ArtifactError
from coder.export import workdir
from coder.manifest import FORMAT, MANIFEST_NAME


def _fake_artifact(d, files=("image_encoder.fp32.onnx",)):
    d.mkdir(parents=True)
    for f in files:
        (d / f).write_text(f)
    (d / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "files": {f: {} for f in files}}))
    return d


def test_force_builds_beside_and_swap_carries_user_files(tmp_path):
    out = _fake_artifact(tmp_path / "art", ("image_encoder.fp32.onnx", "image_encoder.int8.onnx"))
    (out / "texts-mine.json").write_text("{}")
    with pytest.raises(ArtifactError, match="--force"):
        workdir.plan(out, force=False)
    work = workdir.plan(out, force=True)
    assert work == tmp_path / ".art.coder-new" and work.is_dir()
    state = workdir.open_state(work, {"k": 1}, fresh=False)
    assert (work / workdir.STATE_NAME).is_file() and state["files"] == {}
    (work / "image_encoder.fp32.onnx").write_text("new")
    (work / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "files": {"image_encoder.fp32.onnx": {}}}))
    workdir.swap_in(work, out)
    assert (out / "image_encoder.fp32.onnx").read_text() == "new"
    assert (out / "texts-mine.json").is_file()  # the user's file is carried over
    assert not (out / "image_encoder.int8.onnx").exists()  # an old encoder the new manifest does not list is not
    assert not (out / workdir.STATE_NAME).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_interrupted_swap_is_recovered(tmp_path):
    out = tmp_path / "art"
    _fake_artifact(workdir.backup_dir(out))  # stopped between the two renames: only the backup exists
    assert workdir.plan(out, force=True) == workdir.staging_dir(out)
    assert (out / MANIFEST_NAME).is_file() and not workdir.backup_dir(out).exists()


def test_state_is_written_before_any_file_and_resets_on_a_new_key(tmp_path):
    out = tmp_path / "new"
    assert workdir.plan(out, force=False) == out
    workdir.open_state(out, {"k": 1}, fresh=False)["files"]["x"] = {}
    assert workdir.plan(out, force=False) == out  # a partial export is accepted
    assert workdir.open_state(out, {"k": 2}, fresh=False)["key"] == {"k": 2}


def test_staging_restarted_for_another_key_is_emptied(tmp_path):
    out = _fake_artifact(tmp_path / "art")
    work = workdir.plan(out, force=True)
    workdir.open_state(work, {"k": 1}, fresh=False)
    (work / "image_encoder.int8.onnx").write_text("from an earlier attempt")
    workdir.open_state(work, {"k": 1}, fresh=False)
    assert (work / "image_encoder.int8.onnx").exists()  # same key: resumable, kept
    workdir.open_state(work, {"k": 2}, fresh=False)
    assert sorted(p.name for p in work.iterdir()) == [workdir.STATE_NAME]
