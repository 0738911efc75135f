"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

It answers ATG questions deterministically and can misbehave on demand:
garbage answers for some classes, 429/500 for the first requests (with any
``Retry-After``), a slow first response or slow responses throughout, going away
after N requests, or cutting the first responses short on the wire ("incomplete":
fewer body bytes than Content-Length; "drop": connection closed before a status
line; "badstatus": a garbage status line), or holding every request after the first
``hold_after`` without an answer (``held`` is set once ``hold_count`` of them wait; ``release``
closes them unanswered), so a signal test acts at a known point instead of racing the work.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Script:
    def __init__(self, garbage_for=(), fail_first=0, fail_status=429, slow_first=0.0, die_after=None,
                 similar=None, garbage_once_for=(), retry_after="0", delay=0.0, cut_first=0, cut_mode="incomplete",
                 hold_after=None, hold_count=1):
        self.garbage_for = set(garbage_for)
        self.garbage_once_for = set(garbage_once_for)
        self.fail_first, self.fail_status = fail_first, fail_status
        self.slow_first = slow_first
        self.die_after = die_after
        self.similar = similar or {}
        self.retry_after, self.delay = retry_after, delay
        self.cut_first, self.cut_mode = cut_first, cut_mode
        self.answered = 0  # complete 200 responses written
        self.calls = 0
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        self.hold_after, self.hold_count, self.waiting = hold_after, hold_count, 0
        self.held, self.release = threading.Event(), threading.Event()

    def check_held(self) -> None:
        """Under ``lock``: ``held`` once the first ``hold_after`` answers are written AND ``hold_count`` requests
        wait (an answer's count may land after the next request arrived)."""
        if self.hold_after is not None and self.answered >= self.hold_after and self.waiting >= self.hold_count:
            self.held.set()

    def answer(self, question: str) -> str:
        m = re.search(r"distinguishing an? (.+?) in a photo", question)
        if m:
            c = m.group(1)
            if c in self.garbage_for or (c in self.garbage_once_for and "ONLY" not in question):
                return "I'm sorry, as a language model I cannot see images."
            return f"- {c} feature one\n- {c} feature two\n- {c} feature three"
        m = re.search(r"What other objects are (.+?) visually similar to\?", question)
        if m:
            c = m.group(1)
            exclude = question.split("Do not name any of: ")[1] if "Do not name" in question else ""
            options = self.similar.get(c, [f"{c}-like thing {i}" for i in range(3)])
            return "\n".join(f"- {g}" for g in options if g not in exclude) or "- something else entirely"
        m = re.search(r"between the (.+?) and the (.+?) in a photo", question)
        if m:
            a, b = m.groups()
            if a in self.garbage_for or b in self.garbage_for:
                return "They are different."
            return f"{a}:\n- {a} has trait x\n- {a} has trait y\n{b}:\n- {b} has trait z"
        return "unrecognised question"


def serve(script: Script):
    """Start a server; returns (base_url, stop())."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.calls += 1
                n = script.calls
                script.auth.append(self.headers.get("Authorization"))
            if script.hold_after is not None and n > script.hold_after:
                with script.lock:
                    script.waiting += 1
                    script.check_held()
                script.release.wait()
                self.close_connection = True
                return
            if script.die_after is not None and n > script.die_after:
                threading.Thread(target=server.shutdown, daemon=True).start()
                self.close_connection = True
                return
            if n <= script.fail_first:
                self.send_response(script.fail_status)
                if script.retry_after is not None:
                    self.send_header("Retry-After", script.retry_after)
                self.end_headers()
                return
            if n == 1 and script.slow_first:
                time.sleep(script.slow_first)
            if script.delay:
                time.sleep(script.delay)
            text = script.answer(body["messages"][-1]["content"])
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
            if n <= script.fail_first + script.cut_first:
                self._cut(payload)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            with script.lock:
                script.answered += 1
                script.check_held()

        def _cut(self, payload: bytes):
            self.close_connection = True
            if script.cut_mode == "badstatus":
                self.wfile.write(b"HTTX/9 what\r\n\r\n")
            elif script.cut_mode == "incomplete":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload[:len(payload) // 2])
            self.wfile.flush()  # "drop": nothing at all

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}/v1", stop
