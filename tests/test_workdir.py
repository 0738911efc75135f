"""Export target handling: staging beside an artifact for --force, recovery of an interrupted swap."""

import json

import pytest

from coder.errors import ArtifactError
from coder.export import workdir
from coder.manifest import FORMAT, MANIFEST_NAME, load_artifact


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


class Stop(Exception):
    """Stands for the process dying at a step of the swap (nothing after it runs)."""


USER = {"texts-mine.json": b'{"name": "mine", "classes": []}\n', "banks/mine/bank.json": b"\x00bank\xff",
        "engines/e.plan": b"engine"}


def _old_and_new(tmp_path):
    """An artifact with the user's files beside it, and a finished replacement in its staging directory."""
    out = _fake_artifact(tmp_path / "art", ("image_encoder.fp32.onnx", "image_encoder.int8.onnx"))
    for name, data in USER.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    work = workdir.plan(out, force=True)
    workdir.open_state(work, {"k": 1}, fresh=False)
    (work / "image_encoder.fp32.onnx").write_text("new")
    (work / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "files": {"image_encoder.fp32.onnx": {}}}))
    return out, work


def _steps(tmp_path):
    seen = []
    out, work = _old_and_new(tmp_path / "dry")
    hook, workdir._hook = workdir._hook, seen.append
    try:
        workdir.swap_in(work, out)
    finally:
        workdir._hook = hook
    return seen


STEPS = ["journal", "carry banks", "carry engines", "carry texts-mine.json", "state", "backup", "swap", "clean",
         "done"]


def test_the_swap_reports_every_step(tmp_path):
    assert _steps(tmp_path) == STEPS


def _assert_recovered(out, tmp_path, new: bool):
    """After the next export's first action: one complete artifact (old or new) and the user's files, unchanged."""
    assert (out / "image_encoder.fp32.onnx").read_text() == ("new" if new else "image_encoder.fp32.onnx")
    assert json.loads((out / MANIFEST_NAME).read_text())["format"] == FORMAT
    for name, data in USER.items():
        assert (out / name).read_bytes() == data, name
    leftovers = {p.name for p in tmp_path.iterdir()} - {"art", workdir.staging_dir(out).name}
    assert not leftovers and not workdir.journal_path(out).exists() and not workdir.backup_dir(out).exists()


@pytest.mark.parametrize("step", STEPS)
def test_swap_stopped_at_any_step_is_finished_by_the_next_export(tmp_path, monkeypatch, step):
    out, work = _old_and_new(tmp_path)

    def stop(at):
        if at == step:
            raise Stop(at)

    monkeypatch.setattr(workdir, "_hook", stop)
    with pytest.raises(Stop):
        workdir.swap_in(work, out)
    monkeypatch.setattr(workdir, "_hook", None)
    again = workdir.plan(out, force=True)  # the re-run: finishes the swap, then stages beside the artifact
    assert again == workdir.staging_dir(out)
    _assert_recovered(out, tmp_path, new=True)  # the journal is written first: every stop rolls forward
    assert sorted(p.name for p in again.iterdir()) == []  # nothing of the user's is left in the staging dir


_KILL_AT = """
import os, signal, sys
from pathlib import Path
from coder.export import workdir
step = sys.argv[1]
workdir._hook = lambda at: os.kill(os.getpid(), signal.SIGKILL) if at == step else None
workdir.swap_in(Path(sys.argv[2]), Path(sys.argv[3]))
"""


@pytest.mark.parametrize("step", STEPS[:-1])
def test_swap_killed_at_any_step_loses_nothing(tmp_path, step):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    out, work = _old_and_new(tmp_path)
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", _KILL_AT, step, str(work), str(out)], cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    if not (out / MANIFEST_NAME).exists():  # killed between the renames: a reader is told how to finish the swap
        with pytest.raises(ArtifactError, match="stopped in the middle of its swap.*without --force"):
            load_artifact(out)
    workdir.plan(out, force=True)
    _assert_recovered(out, tmp_path, new=True)


def test_a_stopped_swap_is_named_when_the_artifact_is_missing(tmp_path):
    out, work = _old_and_new(tmp_path)

    def stop(at):
        if at == "backup":
            raise Stop(at)

    workdir._hook = stop
    try:
        with pytest.raises(Stop):
            workdir.swap_in(work, out)
    finally:
        workdir._hook = None
    assert not out.exists()
    with pytest.raises(ArtifactError, match=r"coder export --backbone ARCH --out .*art` \(without --force\)"):
        load_artifact(out)
    with pytest.raises(ArtifactError, match="already holds an exported artifact"):
        workdir.plan(out, force=False)  # what that command does first: the swap is finished
    _assert_recovered(out, tmp_path, new=True)


def test_a_signal_during_the_swap_waits_for_it(tmp_path, monkeypatch):
    import os
    import signal

    from coder.store import Interrupted, stop_on_signals

    out, work = _old_and_new(tmp_path)
    monkeypatch.setattr(workdir, "_hook", lambda at: os.kill(os.getpid(), signal.SIGTERM) if at == "backup" else None)
    with pytest.raises(Interrupted) as stopped, stop_on_signals():
        workdir.swap_in(work, out)
    assert stopped.value.exit_code == 143
    assert (out / "image_encoder.fp32.onnx").read_text() == "new" and not workdir.journal_path(out).exists()
    assert all((out / name).read_bytes() == data for name, data in USER.items())


def test_swap_of_an_older_coder_without_journal_gets_the_old_artifact_back(tmp_path):
    out = tmp_path / "art"
    _fake_artifact(workdir.backup_dir(out))  # an older coder stopped between its two renames
    assert workdir.plan(out, force=True) == workdir.staging_dir(out)
    assert (out / MANIFEST_NAME).is_file() and not workdir.backup_dir(out).exists()


def test_symlinked_artifact_keeps_its_link_and_stages_beside_the_target(tmp_path):
    target = _fake_artifact(tmp_path / "disk" / "real")
    (target / "texts-mine.json").write_bytes(b"mine")
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "art"
    link.symlink_to(target)
    work = workdir.plan(link, force=True)
    assert work == workdir.staging_dir(target.resolve())
    (work / "image_encoder.fp32.onnx").write_text("new")
    (work / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "files": {"image_encoder.fp32.onnx": {}}}))
    workdir.swap_in(work, link)
    assert link.is_symlink() and (link / "image_encoder.fp32.onnx").read_text() == "new"
    assert (link / "texts-mine.json").read_bytes() == b"mine"
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == ["art"]


def test_out_dot_inside_the_artifact_stages_beside_it(tmp_path, monkeypatch):
    from pathlib import Path

    out = _fake_artifact(tmp_path / "art")
    monkeypatch.chdir(out)
    work = workdir.plan(Path("."), force=True)
    assert work == workdir.staging_dir(out.resolve())
    (work / "image_encoder.fp32.onnx").write_text("new")
    (work / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "files": {"image_encoder.fp32.onnx": {}}}))
    workdir.swap_in(work, Path("."))
    assert Path("image_encoder.fp32.onnx").read_text() == "new"  # the process now stands in the new artifact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


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


def test_a_carried_entry_left_in_the_backup_is_never_deleted(tmp_path):
    """A power cut may keep the renames of the artifact but not a move before them: recovery puts it back."""
    import os

    out, work = _old_and_new(tmp_path)
    carry = ["banks", "engines", "texts-mine.json"]
    workdir.atomic_write_json(workdir.journal_path(out), {"format": workdir.SWAP_FORMAT, "format_version": 1,
                                                          "carry": carry})
    os.replace(out / "engines", work / "engines")  # kept; "banks" and the texts file were not
    os.replace(out, workdir.backup_dir(out))
    os.replace(work, out)
    workdir.plan(out, force=True)
    _assert_recovered(out, tmp_path, new=True)
