"""ATG against a real HTTP server on 127.0.0.1: parsing, retries, cache, resume, failures."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from coder.cli import EXIT_CODES, app
from coder.errors import ConfigError, LLMError
from coder.text_bank.text_encoder import TextEncoder
from coder.text_bank.atg import GenerateOptions, generate, nearest_pairs, read_pairs_file
from coder.text_bank.llm import ChatClient, LLMConfig, ResponseCache
from coder.text_bank.texts import init_texts, load_texts, save_texts
from tests.llm_server import Script, serve

CODE = {cls: code for cls, code, _ in EXIT_CODES}
FAST = dict(timeout_s=2.0, max_retries=3, backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
def server():
    stops = []

    def start(**kw):
        script = Script(**kw)
        url, stop = serve(script)
        stops.append(stop)
        return script, url

    yield start
    for stop in stops:
        try:
            stop()
        except Exception:
            pass


@pytest.fixture(scope="module")
def encoder(tiny_artifact):
    return TextEncoder.load(tiny_artifact)


def _client(url, tmp_path, **kw):
    return ChatClient(LLMConfig(url, "test-model", **{**FAST, **kw}), ResponseCache(tmp_path / "cache"))


def test_full_generation_and_cache(server, tmp_path, encoder):
    script, url = server()
    t = init_texts("cifar10")
    opts = GenerateOptions(pairs_per_class=1, concurrency=4)
    new, report = generate(t, _client(url, tmp_path), encoder, opts)
    assert not report.failures
    cat = new.classes[3]
    assert cat.att == ("cat feature one", "cat feature two", "cat feature three")
    assert cat.ana == tuple(f"cat-like thing {i}" for i in range(3))
    assert new.pairs and all((j, i) in new.pairs for i, j in new.pairs)
    i, j = next(iter(new.pairs))
    assert new.pairs[(i, j)][0].startswith(new.class_names[i])
    assert new.provenance["llm_model"] == "test-model" and new.provenance["prompt_version"]
    calls = script.calls
    again, report2 = generate(t, _client(url, tmp_path), encoder, opts)
    assert script.calls == calls and again == new and not report2.failures  # all from the cache


def test_garbage_is_reasked_then_recorded(server, tmp_path, encoder):
    script, url = server(garbage_for={"dog"}, garbage_once_for={"cat"})
    new, report = generate(init_texts("cifar10"), _client(url, tmp_path), encoder,
                           GenerateOptions(kinds=("att",), reasks=2))
    assert [f["task"] for f in report.failures] == ["att:dog"]
    assert new.classes[3].att  # cat recovered on the re-ask
    assert new.classes[5].att == ()
    assert new.provenance["failures"][0]["task"] == "att:dog"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retries_on_429_and_5xx(server, tmp_path, status):
    script, url = server(fail_first=2, fail_status=status)
    assert "feature one" in _client(url, tmp_path).ask(
        [{"role": "user", "content": "What are useful visual features for distinguishing a cat in a photo?"}])
    assert script.calls == 3


def test_non_retryable_status_fails_at_once(server, tmp_path):
    script, url = server(fail_first=5, fail_status=401)
    with pytest.raises(LLMError, match="HTTP 401"):
        _client(url, tmp_path).ask([{"role": "user", "content": "hi"}])
    assert script.calls == 1


def test_slow_response_times_out_and_retries(server, tmp_path):
    script, url = server(slow_first=1.5)
    client = _client(url, tmp_path, timeout_s=0.5)
    assert "feature" in client.ask([{"role": "user", "content":
                                     "What are useful visual features for distinguishing a cat in a photo?"}])
    assert script.calls >= 2


def test_server_dying_mid_run_records_failures_and_resumes(server, tmp_path, encoder):
    script, url = server(die_after=6)
    t = init_texts("cifar10")
    opts = GenerateOptions(kinds=("att",), concurrency=1)
    partial, report = generate(t, _client(url, tmp_path, max_retries=1), encoder, opts)
    assert report.done == 6 and len(report.failures) == 4
    assert sum(bool(c.att) for c in partial.classes) == 6
    script2, url2 = server()
    full, report2 = generate(t, _client(url2, tmp_path), encoder, opts)
    assert not report2.failures and script2.calls == 4  # only the failed ones were asked again


class _WordEncoder:
    """Embeds 'a photo of X.' as a one-hot of X: cosine 1 for the same word, 0 otherwise."""

    def __init__(self):
        self.vocab = {}

    def encode(self, texts):
        out = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            out[i, self.vocab.setdefault(t, len(self.vocab) % 64)] = 1.0
        return out


def test_analogous_filter_drops_other_class_names(server, tmp_path):
    script, url = server(similar={"cat": ["dog", "lynx", "truck", "ocelot", "cougar"]})
    new, report = generate(init_texts("cifar10"), _client(url, tmp_path), _WordEncoder(),
                           GenerateOptions(kinds=("ana",), min_ana=3))
    assert not report.failures
    assert "dog" not in new.classes[3].ana and "truck" not in new.classes[3].ana
    assert {"lynx", "ocelot", "cougar"} <= set(new.classes[3].ana)


def test_api_key_from_env_never_written(server, tmp_path, monkeypatch):
    script, url = server()
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-123")
    client = ChatClient(LLMConfig(url, "m", "MY_LLM_KEY", **FAST), ResponseCache(tmp_path / "cache"))
    client.ask([{"role": "user", "content": "What are useful visual features for distinguishing a cat in a photo?"}])
    assert script.auth[-1] == "Bearer sk-secret-123"
    for f in (tmp_path / "cache").rglob("*.json"):
        assert "sk-secret" not in f.read_text()
    monkeypatch.delenv("MY_LLM_KEY")
    with pytest.raises(ConfigError, match="MY_LLM_KEY"):
        ChatClient(LLMConfig(url, "m", "MY_LLM_KEY"), ResponseCache(tmp_path / "c2"))


def test_pairs_sources(tmp_path):
    emb = np.eye(4, dtype=np.float32) + 0.1
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert len(nearest_pairs(emb, 1)) >= 2
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"format": "coder.confusions", "format_version": 1,
                                "pairs": [{"true": "cat", "predicted": "dog", "count": 3},
                                          {"true": "dog", "predicted": "cat", "count": 1},
                                          {"true": "cat", "predicted": "unicorn", "count": 1}]}))
    names = init_texts("cifar10").class_names
    pairs, unknown = read_pairs_file(conf, names)
    assert pairs == [(3, 5)] and unknown == ["unicorn"]
    lines = tmp_path / "pairs.txt"
    lines.write_text("ship, airplane\nTruck\tautomobile\n")
    assert read_pairs_file(lines, names)[0] == [(0, 8), (1, 9)]


def test_cli_generate_against_server(server, tmp_path, tiny_artifact):
    script, url = server(garbage_for={"frog"})
    texts = tmp_path / "t.json"
    save_texts(texts, init_texts("cifar10"))
    res = CliRunner().invoke(app, ["texts", "generate", str(texts), "--llm-url", url, "--model", "m",
                                   "--kinds", "att,pair", "--pairs-per-class", "1", "-a", str(tiny_artifact),
                                   "--timeout", "2"])
    assert res.exit_code == CODE[LLMError], res.output
    assert "att:frog" in res.output
    t = load_texts(texts)
    assert sum(bool(c.att) for c in t.classes) == 9 and t.pairs


CAT_Q = [{"role": "user", "content": "What are useful visual features for distinguishing a cat in a photo?"}]


@pytest.mark.parametrize("mode", ["incomplete", "drop", "badstatus"])
def test_responses_cut_short_are_retried(server, tmp_path, mode):
    script, url = server(cut_first=2, cut_mode=mode)
    assert "cat feature one" in _client(url, tmp_path).ask(CAT_Q)
    assert script.calls == 3


def test_cut_short_after_all_retries_is_an_llm_error(server, tmp_path):
    script, url = server(cut_first=10, cut_mode="incomplete")
    with pytest.raises(LLMError, match="IncompleteRead"):
        _client(url, tmp_path, max_retries=1).ask(CAT_Q)


@pytest.mark.parametrize("value", ["-5", "soon", "nan", "inf", "-inf", "", "Wed, 21 Oct 2015 07:28:00 GMT", "1e400"])
def test_odd_retry_after_never_crashes(server, tmp_path, value):
    script, url = server(fail_first=1, fail_status=503, retry_after=value)
    sleeps = []
    client = ChatClient(LLMConfig(url, "m", **FAST), ResponseCache(tmp_path / "cache"), sleep=sleeps.append)
    assert "cat feature one" in client.ask(CAT_Q)
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= FAST["max_backoff_s"]


def test_retry_after_seconds():
    from coder.text_bank.llm import retry_after_seconds

    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("-5") == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds("nan") is None and retry_after_seconds(None) is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_unparsable_answers_are_not_cached_and_a_rerun_retries_them(server, tmp_path, encoder):
    script, url = server(garbage_for={"dog"})
    t = init_texts("cifar10")
    opts = GenerateOptions(kinds=("att",), reasks=2)
    _, report = generate(t, _client(url, tmp_path), encoder, opts)
    assert [f["task"] for f in report.failures] == ["att:dog"] and script.calls == 12  # 9 + dog asked 3 times
    script2, url2 = server()  # the LLM now answers dog properly
    new, report2 = generate(t, _client(url2, tmp_path), encoder, opts)
    assert not report2.failures and script2.calls == 1  # only dog's first question, the rest from the cache
    assert new.classes[5].att == ("dog feature one", "dog feature two", "dog feature three")


def test_unparsable_pair_answers_are_not_cached(server, tmp_path):
    script, url = server(garbage_for={"dog"})
    t = init_texts("cifar10")
    opts = GenerateOptions(kinds=("pair",), pairs=((3, 5),), reasks=1)
    _, report = generate(t, _client(url, tmp_path), None, opts)
    assert len(report.failures) == 1 and script.calls == 2
    _, report2 = generate(t, _client(url, tmp_path), None, opts)
    assert len(report2.failures) == 1 and script.calls == 4  # asked again, not served from the cache


def test_ctrl_c_cancels_queued_prompts_saves_answers_and_a_rerun_asks_only_the_rest(server, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    # Two answers, then the server holds every request: once both workers wait on a held request, the run is at
    # a known point (2 answered, 2 on the wire, 6 queued), whatever the machine's load. No sleep, no race.
    script, url = server(hold_after=2, hold_count=2)
    texts = tmp_path / "t.json"
    save_texts(texts, init_texts("cifar10"))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "coder", "texts", "generate", str(texts), "--llm-url", url, "--model", "m",
           "--kinds", "att", "--concurrency", "2", "--timeout", "5"]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert script.held.wait(120), "the server was never asked"
        assert (script.answered, script.calls) == (2, 4)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)  # the two held requests end at their --timeout
    finally:
        script.release.set()
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert script.calls == 4  # nothing queued was sent after the signal, and the held two were not re-asked
    saved = load_texts(texts)
    answered = sum(bool(c.att) for c in saved.classes)
    assert answered == script.answered == 2  # every answered prompt was saved
    script2, url2 = server()
    res = CliRunner().invoke(app, ["texts", "generate", str(texts), "--llm-url", url2, "--model", "m",
                                   "--kinds", "att", "--timeout", "5"])
    assert res.exit_code == 0, res.output
    assert script2.calls == 10 - answered  # only what was missing
    assert all(c.att for c in load_texts(texts).classes)
