"""``coder export --force`` over an existing artifact: stopped at every step of its swap, on a symlinked
artifact (also across filesystems), from inside the artifact, with the user's files beside the encoders.

Whatever happens, the next export finishes with exit 0, one complete artifact, and the user's ``banks/`` and
texts files byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coder.cli import app
from coder.export import workdir
from coder.export.pipeline import ExportOptions, export_artifacts
from coder.export.registry import PretrainedSpec
from coder.manifest import load_artifact

runner = CliRunner()
SPEC = PretrainedSpec("random", "none", 0)
ROOT = Path(__file__).resolve().parents[1]
USER = {"texts-mine.json": b'{"name": "mine", "note": "edited by hand"}\n',
        "banks/mine/bank.json": b'{"format": "coder.bank", "mine": true}\n', "banks/mine/rows.npz": b"\x00\xff" * 64}


class Stop(Exception):
    """Stands for the process dying at a step of the swap."""


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_arch) -> Path:
    out = tmp_path_factory.mktemp("good") / "art"
    export_artifacts(ExportOptions(tiny_arch, SPEC, out, ("fp32",), validate=False))
    return out


def _with_user_files(good: Path, art: Path) -> Path:
    shutil.copytree(good, art, symlinks=True)
    for name, data in USER.items():
        (art / name).parent.mkdir(parents=True, exist_ok=True)
        (art / name).write_bytes(data)
    return art


def _export_force(arch: str, out: Path | str, *extra: str):
    return runner.invoke(app, ["export", "-b", arch, "--pretrained", "none", "--out", str(out), "--force",
                               "--precision", "fp32", "--no-validate", "--classes", "none", *extra])


def _assert_complete(art: Path) -> None:
    m = load_artifact(art).manifest  # every listed file present with its size and sha256
    assert m["encoders"]["image"] == ["fp32"]
    for name, data in USER.items():
        assert (art / name).read_bytes() == data, name
    leftovers = [p.name for p in art.parent.iterdir() if p.name.startswith(f".{art.name}.")]
    assert leftovers == [], leftovers


# Every step is stopped at on a small stand-in in test_workdir.py (exception and SIGKILL); here a real export.
@pytest.mark.parametrize("step", ["journal", "carry banks", "backup", "clean"])
def test_force_stopped_at_every_step_of_the_swap_then_rerun(good, tmp_path, tiny_arch, monkeypatch, step):
    art = _with_user_files(good, tmp_path / "art")

    def stop(at):
        if at == step:
            raise Stop(at)

    monkeypatch.setattr(workdir, "_hook", stop)
    with pytest.raises(Stop):
        export_artifacts(ExportOptions(tiny_arch, SPEC, art, ("fp32",), force=True, validate=False))
    monkeypatch.setattr(workdir, "_hook", None)
    res = _export_force(tiny_arch, art)  # the re-run
    assert res.exit_code == 0, res.output
    _assert_complete(art)


_KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from coder.export import workdir
from coder.export.pipeline import ExportOptions, export_artifacts
from coder.export.registry import PretrainedSpec, register_model_config
arch = register_model_config(Path(sys.argv[1]))
workdir._hook = lambda at: os.kill(os.getpid(), signal.SIGKILL) if at == sys.argv[3] else None
export_artifacts(ExportOptions(arch, PretrainedSpec("random", "none", 1), Path(sys.argv[2]), ("fp32",),
                               force=True, validate=False))
"""


def test_force_killed_mid_swap_then_rerun_as_a_subprocess(good, tmp_path):
    """SIGKILL (nothing runs after it) between moving the user's files and renaming the artifact."""
    from tests.conftest import TINY_CONFIG

    art = _with_user_files(good, tmp_path / "art")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(TINY_CONFIG), str(art), "backup"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == -9, res.stderr[-2000:]
    assert not art.exists()  # killed between the two renames: the artifact is the backup, the new one staged
    res = subprocess.run([sys.executable, "-m", "coder", "export", "-b", "coder-tiny", "--model-config",
                          str(TINY_CONFIG), "--pretrained", "none", "--seed", "1", "--out", str(art), "--force",
                          "--no-validate", "--classes", "none"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    _assert_complete(art)


def test_force_on_a_symlinked_artifact_on_another_filesystem(good, tmp_path, tiny_arch):
    shm = Path("/dev/shm")
    other = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path / "disk"
    try:
        target = _with_user_files(good, other / "real")
        link = tmp_path / "art"
        link.symlink_to(target)
        for _ in range(2):  # the second export used to fail too (the link had become a broken state)
            res = _export_force(tiny_arch, link)
            assert res.exit_code == 0, res.output
            assert link.is_symlink() and link.resolve() == target.resolve()
            _assert_complete(target)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_force_with_out_dot_from_inside_the_artifact(good, tmp_path, tiny_arch, monkeypatch):
    art = _with_user_files(good, tmp_path / "art")
    monkeypatch.chdir(art)
    for _ in range(2):
        res = _export_force(tiny_arch, ".")
        assert res.exit_code == 0, res.output
        _assert_complete(art)
        assert Path.cwd().resolve() == art.resolve()  # the process stands in the new artifact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_force_keeps_the_users_edited_texts_file_byte_for_byte(tmp_path, tiny_arch):
    art = tmp_path / "art"
    res = runner.invoke(app, ["export", "-b", tiny_arch, "--pretrained", "none", "--out", str(art), "--precision",
                              "fp32", "--no-validate", "--classes", "cifar10"])
    assert res.exit_code == 0, res.output
    texts = art / "texts-cifar10.json"
    data = json.loads(texts.read_text())
    data["classes"][0].setdefault("att", []).extend(["with wings", "with a tail", "on a runway"])
    edited = (json.dumps(data, indent=1) + "\n").encode()
    texts.write_bytes(edited)
    res = _export_force(tiny_arch, art, "--classes", "cifar10")
    assert res.exit_code == 0, res.output
    assert texts.read_bytes() == edited
    bank = json.loads(next((art / "banks").glob("*/bank.json")).read_text())
    assert "with wings" in json.dumps(bank)


def test_a_second_export_of_the_same_artifact_exits_3_naming_the_first(good, tmp_path, tiny_arch):
    """Two exports of one artifact at once (here: another spelling of it, through a symlink) never interleave."""
    from tests.test_store import _hold_lock_in_child

    art = tmp_path / "art"
    shutil.copytree(good, art)
    (tmp_path / "link").symlink_to(art)
    ready, release = tmp_path / "ready", tmp_path / "release"
    child = _hold_lock_in_child(art, ready, release)
    try:
        while not ready.exists():  # written only once the child holds the artifact's lock
            assert child.poll() is None
        res = _export_force(tiny_arch, tmp_path / "link")
        assert res.exit_code == 3 and f"pid {child.pid}" in res.output, res.output
        assert load_artifact(art).manifest == load_artifact(good).manifest  # untouched
    finally:
        release.write_text("go")
        child.wait(timeout=60)
