"""coder pack: a portable, verified copy of an artifact; no engines, no caches."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from coder.cli import app
from coder.cli.common import EXIT_CODES
from coder.errors import ArtifactError

CODE = {cls: code for cls, code, _ in EXIT_CODES}


@pytest.fixture
def art(tiny_fp32_artifact, tmp_path):
    """A copy with the clutter a used artifact has: engines, caches, an engine record."""
    a = tmp_path / "src"
    shutil.copytree(tiny_fp32_artifact, a)
    (a / "engines").mkdir(exist_ok=True)
    (a / "engines" / "image_encoder.fp16.engine").write_bytes(b"engine")
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["engines"] = {"image_encoder.fp16.engine": {"path": str(a / "engines")}}
    (a / "manifest.json").write_text(json.dumps(manifest))
    return a


def test_pack_copies_what_runs_and_checks_it(art, tmp_path, sample_images):
    dest = tmp_path / "usb" / "copy"
    res = CliRunner().invoke(app, ["pack", str(art), str(dest), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["banks"] == ["cifar10"] and summary["files"] >= 3
    names = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    manifest = json.loads((dest / "manifest.json").read_text())
    assert names == {"manifest.json", *manifest["files"], "banks/cifar10/bank.json", "banks/cifar10/bank.npz"}
    assert "engines" not in manifest
    r = CliRunner().invoke(app, ["classify", str(sample_images[0]), "-a", str(dest), "--json"])
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.joinpath("usb").glob(".tmp-*"))


def test_pack_refuses_a_corrupt_source_and_a_used_destination(art, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("keep")
    res = CliRunner().invoke(app, ["pack", str(art), str(used)])
    assert res.exit_code == CODE[ArtifactError] and (used / "x").read_text() == "keep"
    enc = art / "image_encoder.fp32.onnx"
    data = bytearray(enc.read_bytes())
    data[len(data) // 2] ^= 0xFF
    enc.write_bytes(bytes(data))
    (art / ".coder-verified.json").unlink(missing_ok=True)
    dest = tmp_path / "copy"
    res = CliRunner().invoke(app, ["pack", str(art), str(dest)])
    assert res.exit_code == CODE[ArtifactError], res.output
    assert not dest.exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_copy_changed_in_transit_is_refused(art, tmp_path):
    from coder.pack import pack_artifact, verify_copy

    dest = tmp_path / "copy"
    pack_artifact(art, dest)
    npz = dest / "banks" / "cifar10" / "bank.npz"
    data = bytearray(npz.read_bytes())
    data[-100] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        verify_copy(dest)


def test_pack_into_an_existing_empty_directory_stays_on_its_filesystem(art, tmp_path, monkeypatch):
    """An empty mount point: the copy is built inside it, never in its parent (another filesystem) and renamed
    across (which failed with exit 70 after copying everything to the wrong disk)."""
    import os

    import coder.pack as pack

    mount = tmp_path / "mnt"
    mount.mkdir()
    real_replace = os.replace

    def same_device_only(src, dst):
        if not str(src).startswith(str(mount)) and str(dst).startswith(str(mount)):
            raise OSError(18, "Invalid cross-device link", str(src))  # EXDEV, as across a mount point
        return real_replace(src, dst)

    monkeypatch.setattr(pack.os, "replace", same_device_only)
    res = CliRunner().invoke(app, ["pack", str(art), str(mount), "--json"])
    assert res.exit_code == 0, res.output
    assert (mount / "manifest.json").is_file() and not list(mount.glob(".tmp-*")) and not list(tmp_path.glob(".tmp-*"))
    assert json.loads(res.stdout)["banks"] == ["cifar10"]


@pytest.mark.parametrize("when", ["before", "during"])
def test_pack_onto_a_full_disk_is_one_line_exit_3_and_leaves_nothing(art, tmp_path, monkeypatch, when):
    import errno
    from collections import namedtuple

    import coder.pack as pack

    if when == "before":
        monkeypatch.setattr(pack.shutil, "disk_usage", lambda p: namedtuple("u", "total used free")(10, 10, 0))
    else:
        def full(src, dst):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        monkeypatch.setattr(pack.shutil, "copy2", full)
    dest = tmp_path / "usb" / "copy"
    res = CliRunner().invoke(app, ["pack", str(art), str(dest)])
    assert res.exit_code == CODE[ArtifactError], res.output
    assert "no space left on" in res.output and "Traceback" not in res.output
    assert not dest.exists() and not list((tmp_path / "usb").glob(".tmp-*"))


def test_pack_checks_every_copied_file_and_leaves_a_damaged_cache_behind(art, tmp_path, monkeypatch):
    import numpy as np

    import coder.pack as pack

    np.savez(art / "banks" / "cifar10" / "clip_w.npz", clip_w=np.ones((10, 4), np.float32))
    data = bytearray((art / "banks" / "cifar10" / "clip_w.npz").read_bytes())
    data[len(data) // 3] ^= 0xFF
    (art / "banks" / "cifar10" / "clip_w.npz").write_bytes(bytes(data))
    res = CliRunner().invoke(app, ["pack", str(art), str(tmp_path / "c1")])
    assert res.exit_code == 0, res.output
    assert "damaged" in res.output and not (tmp_path / "c1" / "banks" / "cifar10" / "clip_w.npz").exists()
    real_copy = shutil.copy2

    def flaky(src, dst):  # a medium that flips a byte on the way
        real_copy(src, dst)
        if str(dst).endswith("bank.json"):
            with open(dst, "ab") as f:
                f.write(b" ")

    monkeypatch.setattr(pack.shutil, "copy2", flaky)
    res = CliRunner().invoke(app, ["pack", str(art), str(tmp_path / "c2")])
    assert res.exit_code == CODE[ArtifactError] and "differs" in res.output
    assert not (tmp_path / "c2").exists()


_KILL_PACK_AT = """
import os, signal, sys
from pathlib import Path
import coder.pack as pack
step = sys.argv[1]
kill = lambda at: os.kill(os.getpid(), signal.SIGKILL) if at == step else None
pack._hook = kill
pack.pack_artifact(sys.argv[2], Path(sys.argv[3]), kill)
"""


def _pack_steps(art, tmp_path, mount: bool) -> list[str]:
    import coder.pack as pack

    dest = tmp_path / "seen"
    if mount:
        dest.mkdir()
    seen = []
    pack._hook = seen.append
    try:
        pack.pack_artifact(art, dest, seen.append)
    finally:
        pack._hook = None
    return seen


@pytest.mark.parametrize("mount", [False, True], ids=["beside", "inside-mount-point"])
def test_pack_killed_at_every_step_loses_nothing(art, tmp_path, mount):
    """SIGKILL at each report and each durable step of the commit: DIR is then nothing, or the complete copy, or
    (killed while moving in) a journal the next `coder pack` finishes from; the source is never touched."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from coder.manifest import load_artifact
    from coder.pack import verify_copy

    steps = _pack_steps(art, tmp_path, mount)
    assert "journal" in steps if mount else "renamed" in steps
    from tests.batch_data import input_digest  # pyarrow-free: the lowest-versions venv runs this test

    before = input_digest(art)
    root = Path(__file__).resolve().parents[1]
    for i, step in enumerate(dict.fromkeys(steps)):
        dest = tmp_path / f"d{i}"
        if mount:
            dest.mkdir()
        res = subprocess.run([sys.executable, "-c", _KILL_PACK_AT, step, str(art), str(dest)], cwd=root,
                             env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120)
        assert res.returncode == -signal.SIGKILL, (step, res.stderr)
        journal, manifest = (dest / ".coder-pack-journal.json").exists(), (dest / "manifest.json").is_file()
        if journal and not manifest:
            with pytest.raises(ArtifactError, match="stopped while moving the copy in"):
                load_artifact(dest)
        again = CliRunner().invoke(app, ["pack", str(art), str(dest), "--json"])
        if manifest and not journal:
            assert again.exit_code == CODE[ArtifactError], (step, again.output)  # a finished copy is kept as is
        else:  # nothing there yet, or a journal: the copy is made, or its move finished
            assert again.exit_code == 0, (step, again.output)
            assert json.loads(again.stdout).get("finished_stopped_pack", False) == journal, step
        assert verify_copy(dest)["banks"] == ["cifar10"], step
        assert not list(dest.glob(".tmp-pack-*")) and not list(tmp_path.glob(f".tmp-pack-d{i}-*")), step
        assert not (dest / ".coder-pack-journal.json").exists(), step
    assert input_digest(art) == before
