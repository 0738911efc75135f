"""``coder classify --out`` without Ray: schema, metadata, resume, stale rows, overwrite, and
the inputs it accepts (text files of paths, fsspec URIs); plus the pieces it is built from."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet")  # the [ray] extra
from typer.testing import CliRunner

from coder.cli import app
from coder.cli.common import EXIT_CODES
from coder.deploy.parquet_out import FORMAT, FORMAT_VERSION, SCHEMA
from coder.deploy.sources import expand_sources, is_uri, read_bytes
from coder.errors import ArtifactError, ConfigError, InputError
from tests.batch_data import (BAD, artifact_with_bank, assert_rows_match, hook_command, hook_env, input_digest,
                              json_records, make_images, parquet_rows, wait_for)

runner = CliRunner()
CODE = {cls: code for cls, code, _ in EXIT_CODES}


@pytest.fixture(scope="module")
def art(tiny_artifact, tmp_path_factory):
    return artifact_with_bank(tiny_artifact, tmp_path_factory.mktemp("pq"))


def _label(*args):
    return runner.invoke(app, ["classify", *map(str, args)])


def test_out_rows_equal_classify_json_and_errors_are_rows(art, tmp_path):
    good = make_images(tmp_path / "in")
    out = tmp_path / "labels.parquet"
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--batch-size", "4")
    assert res.exit_code == CODE[InputError], res.output  # bad files: error rows, the rest labeled
    assert "labeled 12 images (3 errors)" in res.stdout
    rows = parquet_rows(out)
    assert len(rows) == len(good) + len(BAD)
    js = _label(tmp_path / "in", "-a", art, "--json")
    records = json_records(js.stdout)
    assert set(records) == {str(p) for p in good}
    assert_rows_match(rows, records)
    errors = {f: r["error"] for f, r in rows.items() if r["error"] is not None}
    assert errors[str(tmp_path / "in" / "bad.jpg")].endswith("not an image (unrecognised format)")
    assert errors[str(tmp_path / "in" / "sub" / "empty.png")].endswith("empty file (0 bytes)")
    assert "cannot decode image" in errors[str(tmp_path / "in" / "sub" / "deep" / "trunc.jpg")]
    assert all(rows[f]["label"] is None and rows[f]["top_k"] is None for f in errors)
    table = pq.read_table(out)
    assert table.schema.remove_metadata().equals(SCHEMA)


def test_metadata_versioned_with_sha256s(art, tmp_path):
    make_images(tmp_path / "in", 2, bad=False)
    out = tmp_path / "o.parquet"
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    meta = json.loads((out / "_coder.json").read_text())
    manifest = json.loads((art / "manifest.json").read_text())
    bank = json.loads((art / "banks" / "cifar10" / "bank.json").read_text())
    assert (meta["format"], meta["format_version"]) == (FORMAT, FORMAT_VERSION)
    s = meta["settings"]
    assert s["artifact_sha256"] == manifest["files"]["image_encoder.fp32.onnx"]["sha256"]
    assert s["adapter_sha256"] is None
    from coder.text_bank.bank import load_bank

    version = load_bank(art / "banks" / "cifar10").content_sha256
    assert bank["content_sha256"] == version != bank["npz_sha256"]  # the content id, not the npz file's hash
    # every row names its bank version, and the metadata names it the same way: rows and metadata match
    assert {r["bank_sha256"] for r in parquet_rows(out).values()} == {version} == {s["bank_sha256"]}
    [part] = list(out.glob("part-*.parquet"))
    assert json.loads(pq.read_schema(part).metadata[b"coder"]) == meta


def test_resume_skips_done_adds_new_and_never_duplicates(art, tmp_path):
    make_images(tmp_path / "in", 4, bad=False)
    out = tmp_path / "o.parquet"
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    parts = sorted(out.glob("part-*"))
    res = _label(tmp_path / "in", "-a", art, "--out", out)
    assert res.exit_code == 0 and "labeled 0 images" in res.stdout and "4 already in" in res.stdout
    assert sorted(out.glob("part-*")) == parts
    make_images(tmp_path / "in", 5, start=4, bad=False)
    res = _label(tmp_path / "in", "-a", art, "--out", out)
    assert "labeled 5 images" in res.stdout
    assert len(parquet_rows(out)) == 9
    # a file that changed since its row was written is redone; its old row goes
    changed = tmp_path / "in" / "img000.jpg"
    os.utime(changed, ns=(1, 1))
    res = _label(tmp_path / "in", "-a", art, "--out", out)
    assert "labeled 1 images" in res.stdout and "1 redone" in res.stdout
    rows = parquet_rows(out)
    assert len(rows) == 9 and rows[str(changed)]["file_mtime_ns"] == 1
    assert _label(tmp_path / "in", "-a", art, "--out", out, "--overwrite").stdout.startswith("labeled 9 images")
    assert len(parquet_rows(out)) == 9


def test_retry_errors_redoes_error_rows_only(art, tmp_path):
    make_images(tmp_path / "in", 2)
    out = tmp_path / "o.parquet"
    _label(tmp_path / "in", "-a", art, "--out", out)
    (tmp_path / "in" / "bad.jpg").unlink()
    make_images(tmp_path / "fix", 1, bad=False)
    os.replace(tmp_path / "fix" / "img000.jpg", tmp_path / "in" / "bad.jpg")  # now a good image, same name
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--retry-errors")
    assert "labeled 3 images" in res.stdout  # the two bad ones left and the fixed one
    rows = parquet_rows(out)
    assert rows[str(tmp_path / "in" / "bad.jpg")]["error"] is None and len(rows) == 5


def test_resume_refuses_other_settings_and_foreign_data(art, tmp_path):
    make_images(tmp_path / "in", 1, bad=False)
    out = tmp_path / "o.parquet"
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--top-k", "3")
    assert res.exit_code == CODE[ConfigError] and "top_k differ" in res.output and "--overwrite" in res.output
    meta = json.loads((out / "_coder.json").read_text())
    (out / "_coder.json").write_text(json.dumps({**meta, "format_version": 99}))
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == CODE[ArtifactError]
    (tmp_path / "file.parquet").write_bytes(b"x")
    assert _label(tmp_path / "in", "-a", art, "--out", tmp_path / "file.parquet").exit_code == CODE[ConfigError]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    res = _label(tmp_path / "in", "-a", art, "--out", tmp_path / "mine", "--overwrite")
    assert res.exit_code == CODE[ConfigError] and (tmp_path / "mine" / "thesis.tex").exists()
    assert _label(tmp_path / "in", "-a", art, "--ray").exit_code == CODE[ConfigError]  # --ray needs --out


def test_interrupted_part_is_invisible_and_cleaned(art, tmp_path):
    make_images(tmp_path / "in", 2, bad=False)
    out = tmp_path / "o.parquet"
    _label(tmp_path / "in", "-a", art, "--out", out)
    (out / ".tmp-part-00001-dead.parquet-x").write_bytes(b"PAR1 half a part")  # a killed writer's leftover
    assert len(parquet_rows(out)) == 2  # readers skip hidden names
    _label(tmp_path / "in", "-a", art, "--out", out)
    assert not list(out.glob(".tmp-*"))


def test_text_file_of_paths_and_file_uri(art, tmp_path):
    good = make_images(tmp_path / "in", 3, bad=False)
    lst = tmp_path / "in" / "todo.txt"
    lst.write_text(f"# frames to label\n{good[0].name}\n\n{good[1]}\nfile://{good[2]}\n")
    out = tmp_path / "o.parquet"
    assert _label(lst, "-a", art, "--out", out).exit_code == 0
    assert set(parquet_rows(out)) == {str(good[0]), str(good[1]), str(good[2])}  # file:// is a local path


def test_sources_fsspec_uri_listing_and_reading(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    mem.pipe("/bucket/a/x.jpg", b"\xff\xd8jpeg")
    mem.pipe("/bucket/a/b/y.png", b"png")
    mem.pipe("/bucket/a/notes.md", b"skip me")
    found = list(expand_sources(["memory://bucket/a"]))
    assert [s.file for s in found] == ["memory://bucket/a/b/y.png", "memory://bucket/a/x.jpg"]
    assert [s.size for s in found] == [3, 6]
    assert [s.file for s in expand_sources(["memory://bucket/a/*.jpg"])] == ["memory://bucket/a/x.jpg"]
    assert read_bytes("memory://bucket/a/x.jpg") == b"\xff\xd8jpeg"
    with pytest.raises(InputError, match="no such file"):
        read_bytes("memory://bucket/a/none.jpg")
    assert [s.size for s in expand_sources(["memory://bucket/none.jpg"])] == [-1]
    assert is_uri("s3://b/k") and is_uri("file:///x") and not is_uri("a/b.jpg") and not is_uri("C:\\x.jpg")


def test_decode_bytes_same_limits_and_messages(tmp_path):
    from PIL import Image

    from coder.runtime.images import decode_image, load_image

    p = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(p)
    with pytest.raises(InputError, match="exceeds the 1000 limit"):
        decode_image(p.read_bytes(), str(p), max_pixels=1000)
    with pytest.raises(InputError, match="exceeds the 1000 limit"):
        load_image(p, max_pixels=1000)
    assert np.array_equal(np.asarray(decode_image(p.read_bytes(), "x")), np.asarray(load_image(p)))
    with pytest.raises(InputError, match="^x.jpg: empty file"):
        decode_image(b"", "x.jpg")


def test_classify_pixels_equals_classify(art, tmp_path):
    from coder.deploy.batch import ClassifyJob, classify_crops, decode_crop
    from coder.runtime.classifier import ClassifierOptions
    from coder.runtime.classifier import Classifier

    paths = make_images(tmp_path / "in", 4, bad=False)
    clf = Classifier.load(art)
    spec = ClassifyJob(ClassifierOptions(str(art)))
    crops = np.stack([decode_crop(p.read_bytes(), str(p), clf.encoder.preprocess_config) for p in paths])
    assert crops.dtype == np.uint8 and crops.shape[1:] == (*clf.encoder.preprocess_config.size, 3)
    got = classify_crops(clf, spec, [str(p) for p in paths], crops)
    want = clf.classify([str(p) for p in paths])
    assert [g["label"] for g in got] == [w.label for w in want]
    np.testing.assert_allclose([g["stage1_scores"] for g in got], [w.stage1_scores for w in want], atol=1e-5)


def _hooked(marker, *cli, **hooks):
    import subprocess

    return subprocess.Popen(hook_command(marker, "classify", *cli, **hooks), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=hook_env())


def test_sigterm_keeps_finished_rows_and_resume_completes(art, tmp_path):
    """Held after 3 rows reached the writer (none flushed yet), SIGTERM: exit 143, those 3 rows committed,
    no temp left; the re-run labels exactly the rest."""
    import signal

    make_images(tmp_path / "in", 8, bad=False)
    out, marker = tmp_path / "o.parquet", tmp_path / "held"
    proc = _hooked(marker, tmp_path / "in", "-a", art, "--out", out, "--batch-size", "1", hold_after_rows=3,
                   rows_per_part=1000)
    assert wait_for(marker, proc) == "3"
    assert not list(out.glob("part-*"))  # still buffered: only the signal path can write them
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "terminated" in stderr and not list(out.glob(".tmp-*"))
    assert len(parquet_rows(out)) == 3
    res = _label(tmp_path / "in", "-a", art, "--out", out)
    assert "labeled 5 images" in res.stdout and "3 already in" in res.stdout
    assert len(parquet_rows(out)) == 8


def test_two_runs_at_once_never_write_a_row_twice(art, tmp_path):
    """A second run on a dataset being written (spelled another way) exits 3 naming the first; nothing
    is written twice, and after the first is stopped a re-run completes with one row per file."""
    import signal
    import subprocess

    make_images(tmp_path / "in", 6, bad=False)
    out, marker = tmp_path / "o.parquet", tmp_path / "held"
    first = _hooked(marker, tmp_path / "in", "-a", art, "--out", out, "--batch-size", "2", hold_after_rows=2,
                    rows_per_part=1000)
    wait_for(marker, first)
    second = subprocess.run(hook_command(tmp_path / "unused", "classify", tmp_path / "in", "-a", art, "--out",
                                         f"{tmp_path}/x/../o.parquet/"),
                            capture_output=True, text=True, env=hook_env(), timeout=240)
    assert second.returncode == CODE[ArtifactError], second.stderr  # StorageError: exit 3
    assert f"being written by pid {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert not list(out.glob("part-*"))
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    assert len(parquet_rows(out)) == 6


def test_one_file_spelled_three_ways_is_one_row(art, tmp_path, monkeypatch):
    good = make_images(tmp_path / "in", 3, bad=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.parquet"
    res = _label("in", tmp_path / "in", "in/../in", f"file://{tmp_path}/in/sub/", "-a", art, "--out", out)
    assert res.exit_code == 0 and "labeled 3 images" in res.stdout, res.output
    assert set(parquet_rows(out)) == {str(p) for p in good}
    (tmp_path / "link").symlink_to(tmp_path / "in")
    res = _label("link/", "./in/sub/../", "-a", art, "--out", out)
    assert "labeled 0 images" in res.stdout and "3 already in" in res.stdout
    assert len(parquet_rows(out)) == 3


def test_damaged_part_is_set_aside_with_a_warning_and_its_rows_redone(art, tmp_path):
    make_images(tmp_path / "in", 2, bad=False)
    out = tmp_path / "o.parquet"
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    make_images(tmp_path / "in", 2, start=2, bad=False)
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    make_images(tmp_path / "in", 1, start=4, bad=False)
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    empty, corrupt, good = sorted(out.glob("part-*"))
    empty.write_bytes(b"")  # e.g. a copy cut short, a full disk outside coder
    corrupt.write_bytes(b"PAR1" + os.urandom(64) + b"PAR1")
    for _ in range(2):  # the first run sets them aside and redoes 4 rows; the next finds nothing to do
        res = _label(tmp_path / "in", "-a", art, "--out", out)
        assert res.exit_code == 0, res.output
    assert "labeled 0 images" in res.stdout and "5 already in" in res.stdout
    assert len(parquet_rows(out)) == 5  # readers see whole parts only
    aside = [f".damaged-{p.name}.bad" for p in (empty, corrupt)]
    assert sorted(p.name for p in out.glob(".damaged-*")) == aside
    assert not [p for p in out.glob("*.parquet") if p.name.startswith(".")]  # DuckDB's *.parquet skips them too
    assert (out / aside[1]).read_bytes().startswith(b"PAR1")  # set aside, not deleted


def test_damaged_part_warning_names_it(art, tmp_path):
    make_images(tmp_path / "in", 1, bad=False)
    out = tmp_path / "o.parquet"
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    [part] = out.glob("part-*")
    part.write_bytes(b"")
    res = _label(tmp_path / "in", "-a", art, "--out", out)
    assert res.exit_code == 0 and "labeled 1 images" in res.stdout
    assert f"warning: {part}: damaged part" in " ".join(res.output.split())


def test_rows_found_twice_are_redone_once(art, tmp_path):
    """A dataset that holds a file twice (parts copied in by hand, an older coder) is repaired on resume."""
    import shutil

    make_images(tmp_path / "in", 2, bad=False)
    out = tmp_path / "o.parquet"
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    [part] = out.glob("part-*")
    shutil.copy(part, out / "part-09999-copy.parquet")
    res = _label(tmp_path / "in", "-a", art, "--out", out)
    assert "labeled 2 images" in res.stdout and "2 redone" in res.stdout
    assert len(parquet_rows(out)) == 2


def test_damaged_metadata_is_taken_from_the_parts(art, tmp_path):
    make_images(tmp_path / "in", 2, bad=False)
    out = tmp_path / "o.parquet"
    assert _label(tmp_path / "in", "-a", art, "--out", out).exit_code == 0
    (out / "_coder.json").write_text("{trunc")
    res = _label(tmp_path / "in", "-a", art, "--out", out)
    assert res.exit_code == 0 and "2 already in" in res.stdout and "damaged" in res.output
    res = _label(tmp_path / "in", "-a", art, "--out", out, "--top-k", "2")  # still refuses other settings
    assert res.exit_code == CODE[ConfigError]


def test_uri_globs_follow_local_glob_rules(tmp_path):
    """`**` is zero or more directories (top-level files included), `*` one level, hidden names skipped:
    the same files as the shell-less local glob, for file:// and fsspec (memory://) URIs."""
    import glob

    fsspec = pytest.importorskip("fsspec")
    names = ["x.jpg", "a/y.jpg", "a/b/z.jpg", "a/q.png", ".h.jpg", "a/.h/w.jpg", "c1.jpg", "c2.jpg"]
    mem = fsspec.filesystem("memory")
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
        mem.pipe(f"/globs/{n}", b"x")
    for pattern in ["**/*.jpg", "*.jpg", "a/**/*.jpg", "a/*", "**/b/*.jpg", "c[!1].jpg", "a/**"]:
        local = sorted(p for p in glob.glob(f"{tmp_path}/{pattern}", recursive=True) if os.path.isfile(p))
        assert local, pattern
        assert [s.file for s in expand_sources([f"{tmp_path}/{pattern}"])] == local, pattern
        assert [s.file for s in expand_sources([f"file://{tmp_path}/{pattern}"])] == local, pattern
        want = sorted(f"memory://globs/{os.path.relpath(p, tmp_path)}" for p in local)
        assert [s.file for s in expand_sources([f"memory://globs/{pattern}"])] == want, pattern


def test_fault_injection_every_commit_point(art, tmp_path):
    """SIGKILL at every commit point of a resuming run (_coder.json, a dropped stale row, each part: written
    to its temporary name, renamed), then a plain re-run: exactly one row per file, every file labeled,
    inputs unchanged, no temporary left, never exit 70."""
    import shutil
    import subprocess

    make_images(tmp_path / "in", 3, bad=False)
    base = tmp_path / "base.parquet"
    assert _label(tmp_path / "in", "-a", art, "--out", base).exit_code == 0
    os.utime(tmp_path / "in" / "img000.jpg", ns=(1, 1))  # changed since: its row is dropped, then redone
    make_images(tmp_path / "in", 2, start=3, bad=False)
    files = {str(p) for p in (tmp_path / "in").rglob("img*")}
    digest = input_digest(tmp_path / "in")
    killed = []
    for k in range(1, 40):
        out, marker = tmp_path / f"o{k}.parquet", tmp_path / f"killed{k}"
        shutil.copytree(base, out)
        res = subprocess.run(hook_command(marker, "classify", tmp_path / "in", "-a", art, "--out", out,
                                          "--batch-size", "1", kill_at=k, rows_per_part=1),
                             capture_output=True, text=True, env=hook_env(), timeout=240)
        if res.returncode != -9:
            assert res.returncode == 0 and not marker.exists(), res.stderr
            break
        killed.append(marker.read_text())
        again = _label(tmp_path / "in", "-a", art, "--out", out)
        assert again.exit_code == 0, (killed[-1], again.output)
        rows = parquet_rows(out)  # asserts one row per file
        assert set(rows) == files and all(r["error"] is None for r in rows.values()), killed[-1]
        assert rows[str(tmp_path / "in" / "img000.jpg")]["file_mtime_ns"] == 1, killed[-1]
        assert not list(out.glob(".tmp-*")) and input_digest(tmp_path / "in") == digest
        shutil.rmtree(out)
    # _coder.json (2 points), the part holding the stale row rewritten (2), 3 new parts (2 each)
    assert len(killed) == 10, killed


def test_any_decoder_or_storage_failure_is_an_error_row_not_a_crash(monkeypatch, tmp_path):
    from coder.deploy import batch

    def broken(*_):
        raise TypeError("bad tile\nsecond line")

    monkeypatch.setattr(batch, "decode_crop", broken)
    assert batch.decode_or_error(b"x", "a.tif", None) == (None, "a.tif: decode failed (TypeError: bad tile)")
    monkeypatch.setattr(batch, "read_bytes", lambda f: (_ for _ in ()).throw(RuntimeError("throttled")))
    assert batch.read_or_error("s3://b/k.jpg") == (None, "s3://b/k.jpg: read failed (RuntimeError: throttled)")


def test_input_without_images_is_reported_and_the_rest_labeled(art, tmp_path):
    make_images(tmp_path / "in", 1, bad=False)
    (tmp_path / "none").mkdir()
    out = tmp_path / "o.parquet"
    res = _label(tmp_path / "in", tmp_path / "none", tmp_path / "*.nothing", "-a", art, "--out", out)
    assert res.exit_code == CODE[InputError]
    assert "directory holds no image files" in res.output and "pattern matches no file" in res.output
    assert len(parquet_rows(out)) == 1
    res = _label(tmp_path / "none", "-a", art, "--out", tmp_path / "o2.parquet")
    assert res.exit_code == CODE[InputError] and "no images found" in res.output


def test_out_and_ray_get_every_classifier_option(art, tmp_path, monkeypatch):
    """`--out` / `--ray` build the same ClassifierOptions as plain classify: --engine-dir, --rebuild-stale, --tau,
    --adapter... are never dropped (they once were: exit 10 where plain classify worked)."""
    import coder.cli.batch as cli_batch

    seen = {}
    monkeypatch.setattr(cli_batch, "classify_to_parquet", lambda paths, job, *a: seen.setdefault("job", job))
    monkeypatch.chdir(tmp_path)
    res = _label("x.jpg", "--artifacts", art, "--out", "o", "--engine-dir", "eng", "--rebuild-stale", "--tau", "0.5",
                   "--backend", "cpu", "--no-fused-head")
    assert res.exit_code == 0, res.output
    o = seen["job"].options
    assert o.engines.engine_dir == os.path.realpath(tmp_path / "eng") and o.engines.rebuild_stale
    assert (o.tau, o.backend, o.fused_head, o.artifacts) == (0.5, "cpu", False, os.path.realpath(art))
