"""A small OpenAI-compatible chat-completions client with an on-disk response cache.

Works with OpenAI, vLLM, llama.cpp's server and Ollama (``/v1/chat/completions``).
Every usable answer is cached by (model, messages), so an interrupted generation
resumes without repeating a call; an answer the caller's ``accept`` check rejects
(one that does not parse) is never cached, and a cached one that fails the check
is asked again, so a re-run retries exactly those. Timeouts, connection errors
(including responses cut short: ``IncompleteRead``, ``RemoteDisconnected``,
``BadStatusLine``), 429 and 5xx are retried with exponential backoff
(``Retry-After`` honoured when it is a sane number of seconds or an HTTP date,
clamped to ``[0, max_backoff_s]``). The API key is read from an environment
variable at request time and never written.

>>> client = ChatClient(LLMConfig("http://127.0.0.1:8000/v1", "llama3"), cache_dir)   # doctest: +SKIP
>>> client.ask([{"role": "user", "content": "hi"}])                                    # -> "hello"
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, LLMError
from ..store import atomic_write_json, read_json

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class LLMConfig:
    url: str  # base URL (".../v1") or the full ".../chat/completions" endpoint
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0  # first retry delay; doubles each time, with jitter
    max_backoff_s: float = 30.0
    temperature: float = 0.0
    max_tokens: int = 512

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"


class ResponseCache:
    """One JSON file per (model, messages) under ``directory``."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def _path(self, model: str, messages: list[dict]) -> Path:
        key = hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).hexdigest()
        return self.dir / key[:2] / f"{key}.json"

    def get(self, model: str, messages: list[dict]) -> str | None:
        path = self._path(model, messages)
        try:
            return read_json(path)["response"] if path.is_file() else None
        except (ValueError, KeyError, OSError):
            return None  # a damaged entry is just asked again

    def put(self, model: str, messages: list[dict], response: str) -> None:
        atomic_write_json(self._path(model, messages), {"format": "coder.llm-cache", "format_version": 1,
                                                         "model": model, "messages": messages, "response": response})


class LLMCancelled(LLMError):
    """:meth:`ChatClient.cancel` was called: no new request is started."""


class ChatClient:
    def __init__(self, cfg: LLMConfig, cache: ResponseCache, sleep=None):
        self.cfg = cfg
        self.cache = cache
        self._cancelled = threading.Event()
        # The default sleep wakes up at once on cancel(), so a backoff never delays Ctrl-C.
        self._sleep = sleep or self._cancelled.wait
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            raise ConfigError(f"--api-key-env {cfg.api_key_env}: that environment variable is not set")

    def cancel(self) -> None:
        """Start no new request (thread-safe); requests already on the wire finish. Used on Ctrl-C."""
        self._cancelled.set()

    def ask(self, messages: list[dict], accept: Callable[[str], object] = lambda text: True) -> str:
        """The assistant's text for ``messages``. Raises LLMError after the retries.

        Only an answer for which ``accept(answer)`` is truthy is cached (and only such a cached
        answer is reused), e.g. ``accept=parse_bullets``: a reply that does not parse is returned
        to the caller for its re-ask logic but asked again on the next run.
        """
        hit = self.cache.get(self.cfg.model, messages)
        if hit is not None and accept(hit):
            return hit
        answer = self._post_with_retries(messages)
        if accept(answer):
            self.cache.put(self.cfg.model, messages, answer)
        return answer

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.cfg.api_key_env]}"
        return headers

    def _post_with_retries(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                           "max_tokens": self.cfg.max_tokens}).encode()
        last, retry_after = "no attempt", None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._sleep(self._delay(attempt, retry_after))
            if self._cancelled.is_set():
                raise LLMCancelled("cancelled before the request was sent")
            retry_after = None
            try:
                req = urllib.request.Request(self.cfg.endpoint, data=body, headers=self._headers(), method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    return _content(resp.read())
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if e.code not in RETRY_STATUS:
                    raise LLMError(f"{self.cfg.endpoint}: HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, http.client.HTTPException) as e:
                # HTTPException: the connection dropped mid-response (IncompleteRead, RemoteDisconnected,
                # BadStatusLine); like a 5xx, the next attempt usually succeeds.
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except LLMError as e:  # a 200 with a body that is not a chat completion: transient proxies do this
                last = str(e)
        raise LLMError(f"{self.cfg.endpoint}: gave up after {self.cfg.max_retries + 1} attempts ({last})")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds before ``attempt``: the server's ``Retry-After`` if usable, else jittered backoff."""
        hinted = retry_after_seconds(retry_after)
        if hinted is not None:
            return min(hinted, self.cfg.max_backoff_s)
        base = self.cfg.backoff_s * 2 ** (attempt - 1)
        return min(base * (0.5 + random.random()), self.cfg.max_backoff_s)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds >= 0, or None when absent or unusable.

    Delta-seconds ("3", "1.5") or an HTTP date; negative values count as 0; garbage, NaN and
    infinities are ignored (the caller's own backoff applies).

    >>> retry_after_seconds("-5"), retry_after_seconds("soon"), retry_after_seconds("2")
    (0.0, None, 2.0)
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _content(raw: bytes) -> str:
    """``choices[0].message.content`` of a chat-completions response."""
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMError(f"malformed chat-completions response: {raw[:120]!r}") from None
    if not isinstance(content, str):
        raise LLMError("chat-completions response has no text content")
    return content
