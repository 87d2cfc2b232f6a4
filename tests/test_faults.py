"""Backend faults that tests/test_chat_faults.py does not cover, through the real app.

The app is launched for real and driven with gradio_client. Backends are real HTTP servers:
a protocol-level fake Ollama that fails on purpose (FakeOllama plus the faults below), the
real engine killed in the middle of a reply, and the Cloud Run emulator with the fake
metadata server (Google's token endpoint) failing. Each fault: the partial reply is kept,
the note says what happened, the next request works, and another user streaming at the
same time is served as if nothing happened.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gradio_client import Client
from ollama import ChatResponse, Message

from devtools.fake_metadata import FakeMetadataServer
from devtools.testkit.chat_app import (
    chat_args,
    eval_count,
    is_note,
    last_note,
    note_title,
    replies,
    running_app,
    text_of,
)
from devtools.testkit.fake_ollama import FakeOllama
from devtools.testkit.google_fakes import emulator, shared_metadata
from devtools.testkit.procs import free_port, start_engine

pytestmark = pytest.mark.timeout(180)

READ_TIMEOUT = 1.0  # the app's read timeout: the stalling faults outlast it
STALL = 2.5  # how long a stalling fault stays silent

FAULTS = [
    "fault-429-once",  # 429 "Rate exceeded." (Cloud Run, all instances busy), then served
    "fault-stall-first",  # accepts the request, then sends nothing
    "fault-stall-mid",  # three words, then nothing
    "fault-error-first",  # an {"error": ...} line before any text
    "fault-bad-json-first",  # the first line is not JSON
    "fault-bad-shape",  # JSON of the wrong shape (content is a number)
    "fault-html-200",  # HTTP 200 with a proxy's HTML page
    "fault-no-done",  # three words, then the body ends without the final line
]


class FaultyOllama(FakeOllama):
    """FakeOllama (its fake-ok, fake-slow, ... models) plus the faults in FAULTS."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.busy_answers = 0  # how many more chat requests of fault-429-once get a 429

    def _handler_class(self) -> Any:
        base: Any = super()._handler_class()
        fake = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                body = json.loads(raw or b"{}")
                model = body.get("model", "")
                if self.path != "/api/chat" or model not in FAULTS:
                    self.rfile = io.BytesIO(raw)  # let FakeOllama read the body again
                    super().do_POST()
                    return
                fake._record("POST", self.path, body)
                try:
                    self._fault(model)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _fault(self, model: str) -> None:
                if model == "fault-429-once":
                    with fake._lock:
                        busy = fake.busy_answers > 0
                        fake.busy_answers -= busy
                    if busy:
                        self.send_response(429)
                        self.send_header("content-type", "text/plain")
                        self.send_header("retry-after", "1")
                        self.send_header("content-length", "14")
                        self.end_headers()
                        self.wfile.write(b"Rate exceeded.")
                        return
                    self._stream(model, 4, fake.token_delay, ending="done")
                elif model == "fault-stall-first":
                    time.sleep(STALL)
                    self.close_connection = True
                elif model == "fault-stall-mid":
                    self._start_stream()
                    for i in range(3):
                        self._chunk(_word(model, i))
                    time.sleep(STALL)
                    self.close_connection = True
                elif model == "fault-error-first":
                    self._start_stream()
                    self._chunk({"error": "model requires more system memory than is available"})
                    self._end_stream()
                elif model == "fault-bad-json-first":
                    self._start_stream()
                    self._chunk(b'{"model": "fault", "message": {"content": "hi\n')
                    self._end_stream()
                elif model == "fault-bad-shape":
                    self._start_stream()
                    message = {"role": "assistant", "content": 42}
                    self._chunk({"model": model, "message": message, "done": False})
                    self._end_stream()
                elif model == "fault-html-200":
                    self._send(200, "<html><body>Service Unavailable</body></html>", "text/html")
                elif model == "fault-no-done":
                    self._start_stream()
                    for i in range(3):
                        self._chunk(_word(model, i))
                    self._end_stream()

            def _start_stream(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/x-ndjson")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()

            def _end_stream(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        return Handler


def _word(model: str, i: int) -> ChatResponse:
    return ChatResponse(
        model=model, message=Message(role="assistant", content=f"word{i} "), done=False
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FaultyOllama]:
    with FaultyOllama(slow_delay=0.15) as server:
        yield server


@pytest.fixture(scope="module")
def app_url(fake: FaultyOllama) -> Iterator[str]:
    with running_app(
        backend_url=fake.url,
        allowed_models=["fake-ok", "fake-slow", "fake-500", *FAULTS],
        rate_limit_per_minute=1000,
        read_timeout=READ_TIMEOUT,
        cold_start_deadline=4.0,
    ) as url:
        yield url


def chat(client: Client, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    _, history, _ = client.predict(*chat_args(*args, **kwargs), api_name="/chat")
    return list(history)


class OtherUser:
    """Another user streaming a reply (fake-slow: 8 words, 0.15 s apart) while a fault
    happens; `check()` asserts it got its whole reply and no error."""

    def __init__(self, app_url: str) -> None:
        self.job = Client(app_url, verbose=False).submit(
            *chat_args("Hi", model="fake-slow", max_tokens=8), api_name="/chat"
        )
        deadline = time.monotonic() + 10
        while not any(isinstance(o[1], list) and replies(o[1]) for o in self.job.outputs()):
            assert time.monotonic() < deadline, "the other user's stream did not start"
            time.sleep(0.02)

    def check(self) -> None:
        history = self.job.result(timeout=30)[1]
        assert replies(history) == [" ".join(f"word{i}" for i in range(8)) + " "]
        assert eval_count(last_note(history)) == 8


def assert_error_kept(
    history: list[dict[str, Any]], message: str, words: str, partial: str | None
) -> None:
    """The user's message is kept, the note names the problem, the partial reply stays."""
    assert history[0]["role"] == "user" and text_of(history[0]) == message
    note = history[-1]
    assert is_note(note) and note_title(note).startswith("⚠"), note
    assert words in note_title(note), note_title(note)
    assert "Your message is kept" in text_of(note)
    if partial is None:
        assert replies(history) == []
        assert "incomplete" not in text_of(note)
    else:
        assert replies(history) == [partial]
        assert "The reply above is incomplete." in text_of(note)


@pytest.mark.parametrize(
    ("model", "words", "partial"),
    [
        ("fake-500", "returned an error (HTTP 500)", None),  # with another user streaming
        ("fault-stall-first", f"sent nothing for {READ_TIMEOUT:g} s", None),
        ("fault-stall-mid", f"sent nothing for {READ_TIMEOUT:g} s", "word0 word1 word2 "),
        ("fault-error-first", "model requires more system memory than is available", None),
        ("fault-bad-json-first", "sent an answer the UI cannot read", None),
        ("fault-bad-shape", "sent an answer the UI cannot read", None),
        ("fault-html-200", "sent an answer the UI cannot read", None),
        ("fault-no-done", "ended the reply before it was complete", "word0 word1 word2 "),
    ],
)
def test_fault_is_reported_others_are_served_and_the_next_request_works(
    app_url: str, model: str, words: str, partial: str | None
) -> None:
    other = OtherUser(app_url)
    client = Client(app_url, verbose=False)
    history = chat(client, "Hello there", model=model)
    assert_error_kept(history, "Hello there", words, partial)
    other.check()
    # The same user's next message goes through.
    _, fixed, _ = client.predict(history, "fake-ok", "", 0.7, 0.9, 4, api_name="/retry")
    assert [text_of(m) for m in fixed if m["role"] == "user"] == ["Hello there"]
    assert replies(fixed) == ["word0 word1 word2 word3 "]
    assert not any(note_title(m).startswith("⚠") for m in fixed)


def test_rate_exceeded_is_retried_with_a_busy_banner(app_url: str, fake: FaultyOllama) -> None:
    """Cloud Run's 429 "Rate exceeded." (every instance busy) is retried after a backoff
    while the banner says so; the message is sent again only because a 429 proves it was
    not processed, and the reply then arrives."""
    fake.busy_answers = 1
    before = len(fake.chat_requests())
    other = OtherUser(app_url)
    job = Client(app_url, verbose=False).submit(
        *chat_args("Hi", model="fault-429-once", max_tokens=4), api_name="/chat"
    )
    _, history, banner = job.result(timeout=30)
    banners = [out[2] for out in job.outputs() if isinstance(out[2], str)]
    assert any("busy, retrying" in b for b in banners), banners
    assert banner == ""  # cleared once the reply flowed
    assert replies(history) == ["word0 word1 word2 word3 "]
    assert eval_count(last_note(history)) == 4
    models = [r["model"] for r in fake.chat_requests()[before:]]
    assert models.count("fault-429-once") == 2  # the refused attempt and the served one
    other.check()


def test_busy_beyond_the_deadline_says_so(app_url: str, fake: FaultyOllama) -> None:
    fake.busy_answers = 1000
    try:
        started = time.monotonic()
        history = chat(Client(app_url, verbose=False), "Hi", model="fault-429-once")
        took = time.monotonic() - started
    finally:
        fake.busy_answers = 0
    assert_error_kept(history, "Hi", "did not become ready within 4 s", None)
    assert "busy" in note_title(history[-1]) and "HTTP 429" in note_title(history[-1])
    assert took < 15


# --- the real engine killed in the middle of a reply -------------------------------------
def test_engine_killed_mid_stream_keeps_the_partial_reply() -> None:
    port = free_port()
    engine, url = start_engine(port, name="engine-killed-mid-stream")
    try:
        with running_app(backend_url=url, rate_limit_per_minute=1000) as app:
            client = Client(app, verbose=False)
            # The base Gemma model rambles on: a long reply to cut.
            job = client.submit(
                *chat_args("Once upon a time", model="gemma3:270m", max_tokens=1500),
                api_name="/chat",
            )
            deadline = time.monotonic() + 60
            while not any(
                isinstance(o[1], list) and len("".join(replies(o[1]))) > 40 for o in job.outputs()
            ):
                assert time.monotonic() < deadline and not job.done(), "no reply streamed"
                time.sleep(0.02)
            engine.kill()
            _, history, _ = job.result(timeout=60)
            assert_error_kept(
                history, "Once upon a time", "broke off in the middle of the reply",
                replies(history)[0] if replies(history) else "<none>",
            )  # fmt: skip
            assert len(replies(history)[0]) > 40

            # Back on the same address: retry answers, and so does a new user.
            engine, _ = start_engine(port, name="engine-killed-mid-stream")
            _, back, _ = client.predict(history, "smollm2:135m", "", 0.7, 0.9, 3, api_name="/retry")
            assert eval_count(last_note(back)) == 3
            _, fresh, _ = Client(app, verbose=False).predict(
                *chat_args("Hi", max_tokens=2), api_name="/chat"
            )
            assert eval_count(last_note(fresh)) == 2
    finally:
        engine.stop()


# --- Google's token endpoint down (LLM_AUTH=google against the Cloud Run emulator) ---------
@pytest.fixture(scope="module")
def metadata() -> Iterator[FakeMetadataServer]:
    server = shared_metadata()
    server.reset()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        patch.setenv("GCE_METADATA_IP", server.host)
        yield server
    server.reset()


def test_token_endpoint_down(engine: str, metadata: FakeMetadataServer) -> None:
    """No ID token: the note says so (without any token or key), the message is kept; once
    the token endpoint is back the next message goes through; a later outage does not
    touch users while the cached token is valid."""
    with (
        emulator(upstream_url=engine) as guarded,
        running_app(backend_url=guarded.url, auth="google", rate_limit_per_minute=1000) as app,
    ):
        client = Client(app, verbose=False)
        # 404 is refused at once. (On a 5xx google-auth itself retries 5 times with backoff,
        # about 15 s, before the same error; that wait is google-auth's, not the app's.)
        metadata.identity_failure = 404
        history = chat(client, "Hello there")
        assert_error_kept(history, "Hello there", "could not get the credentials", None)
        assert "metadata server" not in note_title(history[-1])  # the detail is logged
        metadata.identity_failure = None
        _, back, _ = client.predict(history, "smollm2:135m", "", 0.7, 0.9, 2, api_name="/retry")
        assert eval_count(last_note(back)) == 2
        assert guarded.state()["counters"].get("POST /api/chat", 0) >= 1

        metadata.identity_failure = 404  # the cached token keeps serving
        again = chat(Client(app, verbose=False), "Hi", max_tokens=2)
        assert eval_count(last_note(again)) == 2
        metadata.identity_failure = None


# --- connections to the backend are reused ----------------------------------------------
class CountingOllama(FakeOllama):
    """Counts the TCP connections clients open."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connections = 0
        counted = self.server.finish_request
        lock = threading.Lock()

        def finish_request(request: Any, client_address: Any) -> None:
            with lock:
                self.connections += 1
            counted(request, client_address)

        self.server.finish_request = finish_request  # type: ignore[method-assign]


def test_backend_connections_are_reused_between_replies() -> None:
    """Each reply reads its stream to the end, so its connection goes back to the pool:
    to a Cloud Run backend a new connection costs a TLS handshake before the first token."""
    with CountingOllama() as fake, running_app(backend_url=fake.url) as app:
        client = Client(app, verbose=False)
        chat(client, "Hi", model="fake-ok", max_tokens=2)  # model list, first connections
        # The first reply's cold-start check ended with its first token (ui/turn/warming.py
        # cancels it then), so from here on only the replies below connect.
        before = fake.connections
        for _ in range(5):
            assert eval_count(last_note(chat(client, "Hi", model="fake-ok", max_tokens=2))) == 2
        assert fake.connections - before <= 1, f"{fake.connections - before} new connections"
