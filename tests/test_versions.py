"""Versioned banks: `coder bank add/remove/versions/rollback`, atomic commits, refusals, fault injection."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coder.cli import app
from coder.text_bank import versions as versions_mod
from coder.text_bank.bank import build_bank, load_bank
from coder.text_bank.texts import names_texts

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tiny_artifact, tmp_path_factory):
    """An artifact copy with one bank "pets" (cat, dog, horse) as `coder bank build` writes it."""
    out = tmp_path_factory.mktemp("ver") / "art"
    shutil.copytree(tiny_artifact, out, ignore=shutil.ignore_patterns("banks"))
    build_bank(out, names_texts(["cat", "dog", "horse"], "pets"))
    runner.invoke(app, ["bank", "add", "-a", str(out), "--bank", "pets", "zebra"])  # warm the embedding cache
    runner.invoke(app, ["bank", "rollback", "-a", str(out), "--bank", "pets"])
    shutil.rmtree(out / "banks" / "pets" / "versions")
    build_bank(out, names_texts(["cat", "dog", "horse"], "pets"))
    return out


@pytest.fixture
def art(base, tmp_path):
    out = tmp_path / "art"
    shutil.copytree(base, out)
    return out


def _bank(art):
    return art / "banks" / "pets"


def _classify(art, images):
    res = runner.invoke(app, ["classify", *map(str, images), "-a", str(art), "--json", "--top-k", "9"])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines()]


def _cli(*args):
    return runner.invoke(app, [*args])


def test_add_remove_versions_and_rollback_restore_identical_predictions(art, sample_images):
    before = _classify(art, sample_images)
    res = _cli("bank", "add", "-a", str(art), "--bank", "pets", "zebra", "tabby_cat", "--json")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["version"] == 2 and rec["added"] == ["zebra", "tabby cat"] and rec["parent"] == 1
    assert rec["texts_encoded"] >= 1  # "zebra" was cached by the fixture; "tabby cat" is new
    assert load_bank(_bank(art)).class_names == ["cat", "dog", "horse", "zebra", "tabby cat"]
    res = _cli("bank", "remove", "-a", str(art), "--bank", "pets", "dog")
    assert res.exit_code == 0, res.output
    after = _classify(art, sample_images)
    assert all(set(r["top_k_names"]) == {"cat", "horse", "zebra", "tabby cat"} for r in after)
    listing = json.loads(_cli("bank", "versions", "-a", str(art), "--bank", "pets", "--json").stdout)
    assert listing["current"] == 3 and [v["version"] for v in listing["versions"]] == [1, 2, 3]
    assert [v["removed"] for v in listing["versions"]] == [[], [], ["dog"]]
    assert listing["versions"][2]["content_sha256"] == listing["content_sha256"] == after[0]["bank_sha256"]
    table = _cli("bank", "versions", "-a", str(art), "--bank", "pets")
    assert table.exit_code == 0 and "tabby" in table.stdout and "* │ 3" in table.stdout
    res = _cli("bank", "rollback", "-a", str(art), "--bank", "pets", "--to", "1")
    assert res.exit_code == 0, res.output
    restored = _classify(art, sample_images)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "timings_ms"} for r in rows]  # noqa: E731
    assert strip(restored) == strip(before)  # byte-identical predictions, same bank version id
    res = _cli("bank", "rollback", "-a", str(art), "--bank", "pets")
    assert res.exit_code == 2 and "no earlier version" in res.output
    assert _cli("bank", "rollback", "-a", str(art), "--bank", "pets", "--to", "3").exit_code == 0
    assert strip(_classify(art, sample_images)) == strip(after)
    assert _cli("bank", "rollback", "-a", str(art), "--bank", "pets", "--to", "9").exit_code == 2


@pytest.mark.parametrize("args,match", [
    (["add", ""], "non-empty"), (["add", "zebra", "Zebra"], "twice"), (["add", "CAT"], "already in the bank"),
    (["add", "horse_"], "already in the bank"), (["remove", "lion"], "not a class"),
    (["remove", "cat", "dog", "horse"], "at least one class"),
])
def test_bad_changes_are_refused_with_the_old_version_current(art, args, match):
    before = (_bank(art) / "bank.json").read_bytes()
    res = _cli("bank", args[0], "-a", str(art), "--bank", "pets", *args[1:])
    assert res.exit_code == 2 and match in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
    assert (_bank(art) / "bank.json").read_bytes() == before and not (_bank(art) / "versions").exists()


class Injected(Exception):
    pass


def _inject(monkeypatch, at: int) -> list:
    """Raise at the ``at``-th file commit of versions.py (atomic_path / atomic_write_json / the npz copy)."""
    calls = []

    def counted(real):
        def wrapper(*a, **k):
            calls.append(real.__name__)
            if len(calls) == at:
                raise Injected(f"write step {at}")
            return real(*a, **k)
        return wrapper

    monkeypatch.setattr(versions_mod, "atomic_path", counted(versions_mod.atomic_path))
    monkeypatch.setattr(versions_mod, "atomic_write_json", counted(versions_mod.atomic_write_json))
    monkeypatch.setattr(versions_mod.shutil, "copyfile", counted(shutil.copyfile))
    return calls


def test_a_failure_at_every_write_step_leaves_the_previous_version_current(base, tmp_path, monkeypatch):
    from coder.text_bank.live import CachingEncoder, change_bank
    from coder.text_bank.text_encoder import TextEncoder

    enc = TextEncoder.load(base)
    step = 0
    while True:
        step += 1
        art = tmp_path / f"a{step}"
        shutil.copytree(base, art)
        with monkeypatch.context() as m:
            calls = _inject(m, step)
            old = load_bank(_bank(art))
            new, change = change_bank(old, CachingEncoder.open(enc, art / "banks"), add=["zebra"])
            try:
                versions_mod.commit_change(_bank(art), old, new, change)
                done = True
            except Injected:
                done = False
        current = load_bank(_bank(art))  # always loadable
        if done:
            assert step == len(calls) + 1 and current.content_sha256 == new.content_sha256
            break
        assert current.content_sha256 == old.content_sha256, f"step {step}"
        for v in versions_mod.list_versions(_bank(art)):  # every listed version is complete
            assert load_bank(_bank(art) / "versions" / str(v["version"])).content_sha256 == v["content_sha256"]
        res = _cli("bank", "add", "-a", str(art), "--bank", "pets", "zebra", "--json")  # a re-run completes it
        assert res.exit_code == 0, res.output
        assert load_bank(_bank(art)).class_names[-1] == "zebra"
        assert not list((_bank(art) / "versions").glob(".tmp-*"))
    assert step >= 7  # snapshot (dir, npz copy, 2 json), new version (dir, 2 json), pointer


KILL = """
import os, signal, sys
from coder.cli import app
from coder.text_bank import versions
where, art = sys.argv[1], sys.argv[2]
real = getattr(versions, where)
def die(*a, **k):
    if where == "_point":  # the new version is on disk, bank.json not yet replaced
        os.kill(os.getpid(), signal.SIGKILL)
    if where == "_write_version" and a[1] == 2:  # inside the new version's write: npz written, no rename yet
        inner = a[2]
        def write_then_die(path):
            inner(path)
            os.kill(os.getpid(), signal.SIGKILL)
        a = (a[0], a[1], write_then_die, *a[3:])
    return real(*a, **k)
setattr(versions, where, die)
sys.argv = ["coder", "bank", "add", "-a", art, "--bank", "pets", "zebra"]
app()
"""


@pytest.mark.parametrize("where", ["_write_version", "_point"])
def test_sigkill_during_bank_add_keeps_the_previous_version(art, where):
    before = load_bank(_bank(art)).content_sha256
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", KILL, where, str(art)], env=env, capture_output=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-500:]
    assert load_bank(_bank(art)).content_sha256 == before
    assert (_bank(art) / "versions" / "1").is_dir()  # the snapshot of the build was committed
    written = [v["version"] for v in versions_mod.list_versions(_bank(art))]
    assert written == ([1] if where == "_write_version" else [1, 2])  # 2 complete but never made current
    assert bool(list((_bank(art) / "versions").glob(".tmp-*"))) == (where == "_write_version")
    res = _cli("bank", "add", "-a", str(art), "--bank", "pets", "zebra", "--json")
    assert res.exit_code == 0, res.output
    assert load_bank(_bank(art)).class_names == ["cat", "dog", "horse", "zebra"]
    assert not list((_bank(art) / "versions").glob(".tmp-*"))


def test_a_rebuild_after_versions_is_recorded_before_the_next_change(art):
    assert _cli("bank", "add", "-a", str(art), "--bank", "pets", "zebra").exit_code == 0
    build_bank(art, names_texts(["cat", "dog", "horse", "lion"], "pets"))  # `coder bank build` over it
    listing = json.loads(_cli("bank", "versions", "-a", str(art), "--bank", "pets", "--json").stdout)
    assert listing["current"] is None and [v["version"] for v in listing["versions"]] == [1, 2]
    rec = json.loads(_cli("bank", "remove", "-a", str(art), "--bank", "pets", "dog", "--json").stdout)
    assert rec["version"] == 4 and rec["parent"] == 3
    v3 = versions_mod.list_versions(_bank(art))[2]
    assert v3["note"].startswith("built") and v3["added"] == ["lion"]  # relative to version 2
    assert v3["removed"] == ["zebra"]
    assert _cli("bank", "rollback", "-a", str(art), "--bank", "pets").exit_code == 0  # back to the rebuild
    assert load_bank(_bank(art)).class_names == ["cat", "dog", "horse", "lion"]
