"""A real local HTTP server speaking the chat-completions API, scripted per test, and scorer factories.

The server runs on 127.0.0.1 (a free port) in a background thread (stdlib ``ThreadingHTTPServer``, one
thread per connection, so concurrent calls really overlap). It records every request and answers each
according to the next scripted :class:`Step` (default: grade). Grading follows simple rules applied to
the answers it finds in the prompt's ``<data>`` section, like a well-behaved model would:

* ``specific``: 2 when the answer uses a word (4+ letters) of ``their_words``, 1 when it names the topic,
  else 0;
* ``respectful``: 0 when the answer uses the last word of a boundary (``"no questions about my ex"`` ->
  ``ex``), else 2;
* ``genuine``: 2 for six words or more, else 1.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

_DATA = re.compile(r"<data>\n(.*)\n</data>", re.S)


@dataclass(frozen=True)
class Step:
    """How the server answers one request.

    ``reply``: ``grade`` (by the rules), ``hijacked`` (full marks for every answer, as an injected model
    would), ``malformed`` (content is not JSON), ``not_completion`` (body is not a chat completion),
    ``null_content``, ``wrong_ids``, ``missing_id``, ``duplicate_id``, ``extra_id``, ``out_of_range``,
    ``missing_criterion`` or ``not_object``. ``status`` other than 200 sends that status with an error
    body (and ``retry_after`` as the header when set). ``sleep`` holds the reply that long first.
    """

    reply: str = "grade"
    status: int = 200
    retry_after: str | None = None
    sleep: float = 0.0


@dataclass
class Recorded:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def user_message(self) -> str:
        return next(m["content"] for m in self.body["messages"] if m["role"] == "user")

    @property
    def system_message(self) -> str:
        return next(m["content"] for m in self.body["messages"] if m["role"] == "system")

    @property
    def answers(self) -> list[dict[str, Any]]:
        """The answer items of the prompt's data section."""
        match = _DATA.search(self.user_message)
        assert match is not None, "no <data> section in the user message"
        return json.loads(match.group(1))["answers"]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def grade_by_rules(item: dict[str, Any]) -> dict[str, Any]:
    """The fake model's grade for one answer item."""
    answer = _words(item["answer"])
    theirs = {w for w in _words(item["their_words"]) if len(w) >= 4}
    specific = 2 if answer & theirs else 1 if answer & _words(item["topic"]) else 0
    keywords = {words[-1] for b in item["their_boundaries"] if (words := re.findall(r"[a-z]+", b.lower()))}
    respectful = 0 if answer & keywords else 2
    genuine = 2 if len(item["answer"].split()) >= 6 else 1
    return {"id": item["id"], "specific": specific, "respectful": respectful, "genuine": genuine, "reason": "ok"}


def _content(step: Step, items: list[dict[str, Any]]) -> str | None:
    grades = [grade_by_rules(item) for item in items]
    match step.reply:
        case "grade":
            pass
        case "hijacked":
            grades = [
                {"id": g["id"], "specific": 2, "respectful": 2, "genuine": 2, "reason": "full marks"} for g in grades
            ]
        case "malformed":
            return '{"grades": [{"id": "a1", "specific": 2,'
        case "null_content":
            return None
        case "not_object":
            return json.dumps(grades)
        case "wrong_ids":
            grades = [{**g, "id": f"q-{g['id']}"} for g in grades]
        case "missing_id":
            grades = grades[:-1]
        case "duplicate_id":
            grades = [*grades, grades[0]]
        case "extra_id":
            grades = [*grades, {**grades[0], "id": "a99"}]
        case "out_of_range":
            grades = [{**g, "specific": 5} for g in grades]
        case "missing_criterion":
            grades = [{k: v for k, v in g.items() if k != "genuine"} for g in grades]
        case _:
            raise AssertionError(f"unknown reply {step.reply!r}")
    return json.dumps({"grades": grades})


@dataclass
class FakeChatServer:
    """State shared with the handler threads; tests script it and read what it recorded."""

    default: Step = field(default_factory=Step)
    delay: float = 0.0  # every request is held this long (to measure concurrency)
    script: deque[Step] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> int:
        with self.lock:
            return len(self.requests)

    def then(self, *steps: Step) -> None:
        """Answer the next requests with these steps, then with ``default``."""
        self.script.extend(steps)

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes, float]:
        body = json.loads(raw)
        record = Recorded(path, headers, body)
        with self.lock:
            self.requests.append(record)
            step = self.script.popleft() if self.script else self.default
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                self.stop.wait(self.delay)
            if path != "/v1/chat/completions":
                return 404, {}, b'{"error": "not found"}', step.sleep
            if step.status != 200:
                extra = {"Retry-After": step.retry_after} if step.retry_after is not None else {}
                return step.status, extra, b'{"error": {"message": "scripted failure"}}', step.sleep
            if step.reply == "not_completion":
                return 200, {}, b'{"object": "error", "detail": "nope"}', step.sleep
            completion = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": _content(step, record.answers)},
                        "finish_reason": "stop",
                    }
                ],
            }
            return 200, {}, json.dumps(completion).encode(), step.sleep
        finally:
            with self.lock:
                self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real API
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid the 40 ms stall
    server: _Server

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, payload, sleep = self.server.fake.handle(self.path, headers, raw)
        if sleep:
            self.server.fake.stop.wait(sleep)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (timeout) and closed the connection
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeChatServer) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)


@pytest.fixture
def llm_server() -> Iterator[FakeChatServer]:
    """A running fake chat-completions server, stopped after the test."""
    fake = FakeChatServer()
    server = _Server(fake)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stop.set()  # wakes any handler still sleeping
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
