"""A real local HTTP server that speaks Ollama's API and breaks on purpose.

Protocol-level stand-in for a broken backend in fault tests (the real engine is used for
everything that works). The model name picks the behaviour of /api/chat:

    fake-ok        streams `tokens` words, then a done line with stats
    fake-slow      like fake-ok with `slow_delay` between words (for queue tests)
    fake-500       HTTP 500 with {"error": ...}
    fake-503       HTTP 503 (queue full)
    fake-401       HTTP 401 (auth denied)
    fake-midstream streams 3 words, then an {"error": ...} line inside the 200 stream
    fake-drop      streams 3 words, then closes the connection mid-body
    fake-garbage   streams 2 words, then a line that is not JSON
    anything else  HTTP 404 {"error": "model 'x' not found"}

Subclasses add models of their own (`extra_models`, listed first by /api/tags) and answer
their chats in `answer_chat`: `FixedReplyOllama` below, or a stalling backend in a test.

Every request is recorded in `requests` as (method, path, json body or None); `hangups`
counts streams the client closed early; `generated` lists the last user message of each
fake-ok/fake-slow reply in the order it got a slot (started generating). Answers are the
`ollama` package's own pydantic types (`ChatResponse`, `ListResponse`, ...), serialised: the
client's schema is the fake's schema.
"""

from __future__ import annotations

import contextlib
import io
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ollama import ChatResponse, ListResponse, Message, ProcessResponse, ShowResponse
from pydantic import BaseModel, ByteSize

MODELS = [
    "fake-ok", "fake-slow", "fake-500", "fake-503", "fake-401", "fake-midstream", "fake-drop",
    "fake-garbage",
]  # fmt: skip


def _dumps(obj: BaseModel | dict[str, Any]) -> str:
    """Ollama's JSON: a typed answer without its unset fields; errors are `{"error": ...}`,
    which the ollama package has no type for."""
    if isinstance(obj, BaseModel):
        return obj.model_dump_json(exclude_none=True)
    return json.dumps(obj)


class QuietHTTPServer(ThreadingHTTPServer):
    """A threading test server that does not print the errors of clients hanging up
    (also devtools/testkit/openai_servers.py)."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-stream is what fault tests do


class FakeOllama:
    extra_models: tuple[str, ...] = ()  # a subclass's own models, answered by answer_chat

    def __init__(
        self, *, token_delay: float = 0.01, slow_delay: float = 0.5, parallel: int | None = None
    ) -> None:
        self.token_delay = token_delay
        self.slow_delay = slow_delay
        # Like OLLAMA_NUM_PARALLEL: at most this many replies generate at once, the others
        # wait for a slot (None: no limit).
        self._slots = threading.BoundedSemaphore(parallel) if parallel else None
        self.requests: list[tuple[str, str, Any]] = []
        self.hangups = 0  # streams the client closed before their end
        self.generated: list[str] = []  # each reply's last user message, in slot order
        self._lock = threading.Lock()
        self.server = QuietHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOllama:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [body for method, path, body in self.requests if path == "/api/chat"]

    def answer_chat(self, handler: Any, body: dict[str, Any]) -> None:
        """Answer a chat for one of `extra_models` (already recorded) through `handler`
        (its `_json`, `_chunk`, `send_response`...)."""
        handler._json(404, {"error": f"model '{body.get('model')}' not found"})

    def _record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self.requests.append((method, path, body))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                fake._record("GET", self.path, None)
                if self.path == "/":
                    self._send(200, "Ollama is running", "text/plain")
                elif self.path == "/api/version":
                    self._json(200, {"version": "0.0.0-fake"})
                elif self.path == "/api/tags":
                    # Dicts: the client's public models validate them into its ModelDetails.
                    details: Any = {"family": "fake", "parameter_size": "1M"}
                    own: Any = {"family": "fake"}
                    models = [
                        ListResponse.Model(model=m, size=ByteSize(1000), details=own)
                        for m in fake.extra_models
                    ] + [
                        ListResponse.Model(model=m, size=ByteSize(1000), details=details)
                        for m in MODELS
                    ]
                    self._json(200, ListResponse(models=models))
                elif self.path == "/api/ps":
                    self._json(200, ProcessResponse(models=[]))
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake._record("POST", self.path, body)
                if self.path != "/api/chat":
                    self._json(404, {"error": "not found"})
                    return
                model = body.get("model", "")
                if model in fake.extra_models:
                    fake.answer_chat(self, body)
                    return
                limit = int((body.get("options") or {}).get("num_predict") or 8)
                if model == "fake-500":
                    self._json(500, {"error": "llama runner process has terminated"})
                elif model == "fake-503":
                    self._json(503, {"error": "server busy, please try again"})
                elif model == "fake-401":
                    self._json(401, {"error": "unauthorized"})
                elif model in ("fake-ok", "fake-slow"):
                    delay = fake.slow_delay if model == "fake-slow" else fake.token_delay
                    prompt = str(((body.get("messages") or [{}])[-1]).get("content", ""))
                    slot = fake._slots or contextlib.nullcontext()
                    with slot:
                        with fake._lock:
                            fake.generated.append(prompt)
                        self._stream(model, min(limit, 8), delay, ending="done")
                elif model == "fake-midstream":
                    self._stream(model, 3, fake.token_delay, ending="error")
                elif model == "fake-drop":
                    self._stream(model, 3, fake.token_delay, ending="drop")
                elif model == "fake-garbage":
                    self._stream(model, 2, fake.token_delay, ending="garbage")
                else:
                    self._json(404, {"error": f"model '{model}' not found"})

            # --- helpers ----------------------------------------------------------------
            def _send(self, status: int, text: str, ctype: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _json(self, status: int, obj: BaseModel | dict[str, Any]) -> None:
                self._send(status, _dumps(obj), "application/json")

            def _chunk(self, obj: BaseModel | dict[str, Any] | bytes) -> None:
                data = obj if isinstance(obj, bytes) else (_dumps(obj) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _client_left_within(self, seconds: float) -> bool:
                """Wait `seconds`; True as soon as the client closes the connection (it
                sends nothing more on a streamed answer, so readable means closed)."""
                deadline = time.monotonic() + seconds
                readable, _, _ = select.select([self.connection], [], [], seconds)
                if not readable:
                    return False
                try:
                    closed = self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True
                if not closed:  # a pipelined request: not ours to read; just wait
                    time.sleep(max(0.0, deadline - time.monotonic()))
                return closed

            def _stream(self, model: str, words: int, delay: float, ending: str) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/x-ndjson")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                started = time.monotonic()
                try:
                    for i in range(words):
                        if self._client_left_within(delay):
                            raise ConnectionResetError  # seen at once, not at the next write
                        message = Message(role="assistant", content=f"word{i} ")
                        self._chunk(ChatResponse(model=model, message=message, done=False))
                    if ending == "error":
                        self._chunk({"error": "the model runner crashed"})
                    elif ending == "garbage":
                        self._chunk(b"<html>proxy error</html>\n")
                    elif ending == "drop":
                        # Promise a chunk, send half of it, hang up.
                        self.wfile.write(b'40\r\n{"model": ')
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    else:
                        elapsed = int((time.monotonic() - started) * 1e9)
                        self._chunk(
                            ChatResponse(
                                model=model,
                                message=Message(role="assistant", content=""),
                                done=True,
                                done_reason="length" if words >= 8 else "stop",
                                total_duration=elapsed,
                                load_duration=1000,
                                prompt_eval_count=5,
                                eval_count=words,
                                eval_duration=max(elapsed, 1),
                            )
                        )
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client hung up (stop pressed)
                    with fake._lock:
                        fake.hangups += 1

        return Handler


HELD = "fake-held"


class HeldOllama(FakeOllama):
    """FakeOllama plus `fake-held`, whose replies write a word only when `release()` says
    so: a reply stays in one state (not started: the cold-start banner, /api/ps listing no
    model; or half-written) for as long as a test needs, however slow the machine. Each
    `release()` lets every waiting reply write one more word. A one-token request (the UI's
    pre-warm) is answered at once, so only the test's own requests wait."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._steps = 0  # releases so far
        self._released = threading.Condition()

    def release(self, words: int = 1) -> None:
        """Let every waiting fake-held reply write `words` more words."""
        with self._released:
            self._steps += words
            self._released.notify_all()

    def _wait_for_step(self, step: int) -> None:
        with self._released:
            self._released.wait_for(lambda: self._steps >= step, timeout=60)

    def __exit__(self, *exc: object) -> None:
        self.release(100)  # nothing stays held past the test
        super().__exit__(*exc)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler_class()
        fake = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:
                if self.path != "/api/tags":
                    super().do_GET()
                    return
                details: Any = {"family": "fake", "parameter_size": "1M"}
                models = [
                    ListResponse.Model(model=m, size=ByteSize(1000), details=details)
                    for m in [*MODELS, HELD]
                ]
                self._json(200, ListResponse(models=models))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw or b"{}")
                limit = int((body.get("options") or {}).get("num_predict") or 8)
                if self.path != "/api/chat" or body.get("model") != HELD:
                    setattr(self, "rfile", io.BytesIO(raw))  # noqa: B010  (the base reads it again)
                    super().do_POST()
                    return
                fake._record("POST", self.path, body)
                with fake._released:
                    start = fake._steps
                self.send_response(200)
                self.send_header("content-type", "application/x-ndjson")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                words = min(limit, 8)
                try:
                    for i in range(words):
                        if limit > 1:
                            fake._wait_for_step(start + i + 1)
                        message = Message(role="assistant", content=f"word{i} ")
                        self._chunk(ChatResponse(model=HELD, message=message, done=False))
                    done = ChatResponse(
                        model=HELD, message=Message(role="assistant", content=""), done=True,
                        done_reason="length" if words >= limit else "stop",
                        total_duration=10**8, load_duration=1000, prompt_eval_count=5,
                        eval_count=words, eval_duration=10**8,
                    )  # fmt: skip
                    self._chunk(done)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client hung up (stop pressed)

        return Handler


class FixedReplyOllama(FakeOllama):
    """FakeOllama plus models (`names`) that reply with `reply`, streamed in pieces of 7
    characters like tokens; a chat without messages (a pre-warm's load) only loads."""

    def __init__(self, reply: str, names: tuple[str, ...] = ("fake-html",)) -> None:
        super().__init__()
        self.reply = reply
        self.extra_models = names

    def answer_chat(self, handler: Any, body: dict[str, Any]) -> None:
        model = str(body.get("model"))
        if not body.get("messages"):
            loaded = ChatResponse(
                model=model, message=Message(role="assistant", content=""), done=True,
                done_reason="load",
            )  # fmt: skip
            handler._json(200, loaded)
            return
        handler.send_response(200)
        handler.send_header("content-type", "application/x-ndjson")
        handler.send_header("transfer-encoding", "chunked")
        handler.end_headers()
        pieces = [self.reply[i : i + 7] for i in range(0, len(self.reply), 7)]
        for piece in pieces:
            message = Message(role="assistant", content=piece)
            handler._chunk(ChatResponse(model=model, message=message, done=False))
        final = ChatResponse(
            model=model, message=Message(role="assistant", content=""), done=True,
            done_reason="stop", eval_count=len(pieces), eval_duration=10**8,
            total_duration=10**8,
        )  # fmt: skip
        handler._chunk(final)
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()


VISION = "fake-vision"
VISION_TOO = "fake-vision-2"
TEXT_ONLY = "fake-text"


class VisionOllama(FixedReplyOllama):
    """FixedReplyOllama whose `fake-vision` and `fake-vision-2` report the vision capability
    in /api/show (`["completion", "vision"]`, as Ollama's server/images.go
    Model.Capabilities does for a model with a projector) and `fake-text` does not
    (`["completion"]`). All reply with `reply`; every /api/chat body is recorded
    (`chat_requests()`), images included."""

    def __init__(self, reply: str = "I see it.") -> None:
        super().__init__(reply, names=(VISION, VISION_TOO, TEXT_ONLY))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler_class()
        fake = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:
                if self.path != "/api/show":
                    super().do_POST()
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                fake._record("POST", self.path, body)
                model = body.get("model") or body.get("name")
                if model not in fake.extra_models:
                    self._json(404, {"error": f"model '{model}' not found"})
                    return
                sees = model in (VISION, VISION_TOO)
                capabilities = ["completion", "vision"] if sees else ["completion"]
                shown = ShowResponse(model_info={}, capabilities=capabilities)
                self._json(200, shown.model_dump(mode="json", by_alias=True, exclude_none=True))

        return Handler
