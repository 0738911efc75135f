"""``--backend auto`` on the CPU measures the installed engines once per machine, artifact and precision,
caches the choice (versioned, atomic; in memory on a read-only artifact) and runs the faster one.
Timings are injected: the tests assert the decision, never a speed."""

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pytest

from coder.errors import BackendError
from coder.manifest import load_artifact
from coder.runtime import cpu_choice
from coder.runtime.cpu_choice import CHOICE_DIR, choose_cpu_engine, pick


@pytest.fixture
def art(tiny_fp32_artifact, tmp_path, monkeypatch):
    monkeypatch.delenv("CODER_CPU_ENGINES")  # conftest pins ONNX Runtime for every other test
    dst = tmp_path / "art"
    shutil.copytree(tiny_fp32_artifact, dst, ignore=shutil.ignore_patterns("engines", CHOICE_DIR))
    return dst


@dataclass
class FakeEngine:
    backend: str
    runs: list

    def run(self, x):
        self.runs.append(x.shape)
        return np.zeros((len(x), 4), np.float32)


@dataclass
class FakeEncoder:
    engine: FakeEngine

    @property
    def backend(self):
        return self.engine.backend

    def close(self):
        pass


def _loader(opened: list, reported=None):
    reported = {"cpu": "cpu", "openvino": "openvino-bf16"} if reported is None else reported

    def load(name):
        opened.append(name)
        if name not in reported:
            raise BackendError(f"{name} does not load here")
        return FakeEncoder(FakeEngine(reported[name], []))
    return load


def _timer(ms: dict, order: list | None = None):
    def timer(name, enc, x):
        assert x.shape[0] == 1  # batch 1
        if order is not None:
            order.append(name)
        return ms[name]
    return timer


def test_pick_needs_a_margin_to_displace_onnx_runtime():
    assert pick({"cpu": 65.0, "openvino": 28.1}) == "openvino"
    assert pick({"cpu": 65.0, "openvino": 64.0}) == "cpu"  # within 3 %: noise, keep ORT
    assert pick({"cpu": 65.0, "openvino": 90.0}) == "cpu"
    assert pick({"openvino": 30.0}) == "openvino"


class SpinningNeighbour:
    """A 2-core machine's contention, modelled: ONNX Runtime (``cpu``) leaves its threads spinning after
    each call, so any other engine called right after it runs ``penalty`` ms slower."""

    def __init__(self, alone: dict, penalty: float):
        self.alone, self.penalty, self.calls = alone, penalty, []

    def engine(self, name: str, backend: str):
        calls = self.calls

        class Engine(FakeEngine):
            def run(self, x):
                calls.append(name)
                return super().run(x)
        return FakeEncoder(Engine(backend, []))

    def timer(self, name, enc, x):
        after = self.calls[-1] if self.calls else None
        enc.engine.run(x)
        return self.alone[name] + (self.penalty if after == "cpu" and name != "cpu" else 0.0)


def test_a_version_1_choice_measured_round_robin_is_neither_used_nor_shown(art):
    """Version 1 choices were measured round-robin (biased against OpenVINO): auto measures again and
    ``coder doctor`` lists only the new one."""
    a = load_artifact(art)
    key = {**cpu_choice.choice_key(a, "fp32", None, ["cpu", "openvino"]), "format_version": 1}
    old = art / CHOICE_DIR / "fp32-0123456789abcdef.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"format": "coder.cpu-engine-choice", "format_version": 1, "key": key,
                               "choice": {"backend": "cpu", "ran": "cpu", "ms": {"cpu": 65.0, "openvino": 78.0}}}))
    opened = []
    c = choose_cpu_engine(a, "fp32", None, _loader(opened), _timer({"cpu": 65.0, "openvino": 28.0}),
                          engines=["cpu", "openvino"])
    assert (c.backend, c.measured) == ("openvino", True)
    assert [d["choice"]["backend"] for d in cpu_choice.cached_choices(a)] == ["openvino"]


def test_an_engine_timed_after_onnx_runtime_is_not_charged_for_its_spinning_threads(art):
    """Round-robin timing charged OpenVINO (28 ms alone) for ONNX Runtime's spinning threads (78 ms after it)
    and kept ONNX Runtime (65 ms); in blocks OpenVINO's timed calls follow its own and it wins."""
    machine = SpinningNeighbour({"cpu": 65.0, "openvino": 28.0}, penalty=50.0)
    reported = {"cpu": "cpu", "openvino": "openvino-bf16"}
    c = choose_cpu_engine(load_artifact(art), "fp32", None, lambda name: machine.engine(name, reported[name]),
                          machine.timer, engines=["cpu", "openvino"])
    assert (c.backend, c.ms) == ("openvino", {"cpu": 65.0, "openvino": 28.0})


def test_measures_in_blocks_picks_the_faster_and_caches(art):
    a, opened, order = load_artifact(art), [], []
    c = choose_cpu_engine(a, "fp32", None, _loader(opened), _timer({"cpu": 65.0, "openvino": 28.0}, order),
                          engines=["cpu", "openvino"])
    assert (c.backend, c.ran, c.ms, c.measured) == ("openvino", "openvino-bf16", {"cpu": 65.0, "openvino": 28.0}, True)
    # in blocks: every timed call of one engine before the next engine starts, BLOCKS rounds in turn
    one, other = ["cpu"] * cpu_choice.ROUNDS, ["openvino"] * cpu_choice.ROUNDS
    assert cpu_choice.BLOCKS == 2 and order == one + other + other + one
    files = list((art / CHOICE_DIR).glob("fp32-*.json"))
    assert len(files) == 1
    d = json.loads(files[0].read_text())
    assert (d["format"], d["format_version"], d["choice"]["backend"]) == ("coder.cpu-engine-choice", 3, "openvino")
    assert d["key"]["cpu"]["cores"] >= 1 and d["key"]["precision"] == "fp32"
    # cached: a second load measures nothing, even with timings that would choose otherwise
    again = choose_cpu_engine(a, "fp32", None, _loader(opened), _timer({"cpu": 1.0, "openvino": 99.0}),
                              engines=["cpu", "openvino"])
    assert (again.backend, again.measured) == ("openvino", False) and opened == ["cpu", "openvino"]
    assert "openvino-bf16 (b1 28.0 ms; cpu 65.0 ms)" == again.describe()


def test_slower_openvino_is_not_chosen(art):
    c = choose_cpu_engine(load_artifact(art), "fp32", None, _loader([]), _timer({"cpu": 50.0, "openvino": 70.0}),
                          engines=["cpu", "openvino"])
    assert (c.backend, c.ran) == ("cpu", "cpu")


def test_key_changes_with_machine_and_precision(art, monkeypatch):
    a, opened = load_artifact(art), []
    timer = _timer({"cpu": 50.0, "openvino": 20.0})
    choose_cpu_engine(a, "fp32", None, _loader(opened), timer, engines=["cpu", "openvino"])
    monkeypatch.setattr(cpu_choice, "cpu_identity", lambda: {"machine": "x86_64", "model": "Other CPU", "cores": 8})
    choose_cpu_engine(a, "fp32", None, _loader(opened), timer, engines=["cpu", "openvino"])
    assert opened == ["cpu", "openvino"] * 2 and len(list((art / CHOICE_DIR).glob("*.json"))) == 2


def test_an_engine_that_does_not_load_is_reported_not_fatal(art):
    c = choose_cpu_engine(load_artifact(art), "fp32", None, _loader([], {"cpu": "cpu"}), _timer({"cpu": 50.0}),
                          engines=["cpu", "openvino"])
    assert c.backend == "cpu" and "does not load" in c.failed["openvino"]
    with pytest.raises(BackendError, match="no CPU engine could load"):
        choose_cpu_engine(load_artifact(art), "fp32", 3, _loader([], {}), _timer({}),
                          engines=["cpu", "openvino"])


def test_one_engine_installed_measures_nothing(art):
    opened = []
    c = choose_cpu_engine(load_artifact(art), "fp32", None, _loader(opened), _timer({}), engines=["cpu"])
    assert (c.backend, c.measured, opened) == ("cpu", False, [])
    assert not (art / CHOICE_DIR).exists()


def test_read_only_artifact_keeps_the_choice_in_memory(art):
    (art / CHOICE_DIR).write_text("not a directory")  # unwritable even as root
    a, opened = load_artifact(art), []
    with pytest.warns(RuntimeWarning, match="kept in memory"):
        c = choose_cpu_engine(a, "fp32", None, _loader(opened), _timer({"cpu": 50.0, "openvino": 20.0}),
                              engines=["cpu", "openvino"])
    again = choose_cpu_engine(a, "fp32", None, _loader(opened), _timer({"cpu": 1.0, "openvino": 20.0}),
                              engines=["cpu", "openvino"])
    assert c.backend == again.backend == "openvino" and opened == ["cpu", "openvino"]


def test_damaged_cache_is_measured_again(art):
    a, opened = load_artifact(art), []
    choose_cpu_engine(a, "fp32", None, _loader(opened), _timer({"cpu": 50.0, "openvino": 20.0}),
                      engines=["cpu", "openvino"])
    [f] = list((art / CHOICE_DIR).glob("*.json"))
    f.write_text("{truncated")
    with pytest.warns(RuntimeWarning, match="damaged"):
        c = choose_cpu_engine(a, "fp32", None, _loader(opened), _timer({"cpu": 10.0, "openvino": 20.0}),
                              engines=["cpu", "openvino"])
    assert c.backend == "cpu" and len(opened) == 4


def test_auto_runs_the_measured_engine(art, monkeypatch):
    """Through Classifier.load(backend="auto"): the loaded encoder is the one the timings favour."""
    pytest.importorskip("openvino")
    from coder.runtime import classifier

    real = classifier.choose_cpu_engine
    for ms, want in (({"cpu": 50.0, "openvino": 20.0}, "openvino-"), ({"cpu": 20.0, "openvino": 50.0}, "cpu")):
        shutil.rmtree(art / CHOICE_DIR, ignore_errors=True)
        monkeypatch.setattr(classifier, "choose_cpu_engine",
                            lambda a, p, t, load, ms=ms: real(a, p, t, load, _timer(ms)))
        clf = classifier.Classifier.load(art, backend="auto")
        assert clf.backend.startswith(want), clf.backend
        assert clf.classify_pixels(np.zeros((1, 3, *clf.encoder.preprocess_config.size), np.float32))[0].backend \
            == clf.backend


def test_doctor_shows_the_cached_choice(art):
    from typer.testing import CliRunner

    from coder.cli import app

    res = CliRunner().invoke(app, ["doctor", "--json", "--artifacts", str(art)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["auto_cpu"] == []
    choose_cpu_engine(load_artifact(art), "fp32", None, _loader([]), _timer({"cpu": 50.0, "openvino": 20.0}),
                      engines=["cpu", "openvino"])
    res = CliRunner().invoke(app, ["doctor", "--json", "--artifacts", str(art)])
    [c] = json.loads(res.stdout)["auto_cpu"]
    assert c["precision"] == "fp32" and c["this_machine"] and c["choice"]["ran"] == "openvino-bf16"
    table = CliRunner().invoke(app, ["doctor", "--artifacts", str(art)], terminal_width=200)
    assert "openvino-bf16 (b1 20.0 ms; cpu 50.0 ms)" in table.output and "this machine" in table.output


def test_pinned_engines(monkeypatch, art):
    from coder.errors import ConfigError

    monkeypatch.setenv("CODER_CPU_ENGINES", "cpu")
    opened = []
    c = choose_cpu_engine(load_artifact(art), "fp32", None, _loader(opened), _timer({}))
    assert (c.backend, c.measured, opened) == ("cpu", False, [])
    monkeypatch.setenv("CODER_CPU_ENGINES", "cpu,metal")
    with pytest.raises(ConfigError, match="CODER_CPU_ENGINES"):
        choose_cpu_engine(load_artifact(art), "fp32", None, _loader(opened), _timer({}))
