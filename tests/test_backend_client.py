"""The backend client against the real local engine, and against a real local HTTP server
that speaks Ollama's protocol but fails on purpose (devtools/testkit/fake_ollama.py)."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.testkit.fake_ollama import FakeOllama
from devtools.testkit.procs import free_port, refusing_url
from ui.backend_access.auth import denied_message
from ui.backend_access.client import BackendClient, BackendErrors, ReplyDone, TokenDelta
from ui.backend_access.embedded import EngineStartError, resolve_backend
from ui.errors import (
    BackendAuthError,
    BackendBusy,
    BackendError,
    BackendResponseError,
    BackendTimeout,
    BackendUnreachable,
    ModelNotFound,
)
from ui.settings import BackendRoute, Settings

MODEL = "smollm2:135m"
HELLO = [{"role": "user", "content": "Say hello."}]


def make_client(url: str, **overrides: Any) -> BackendClient:
    return BackendClient(Settings(backend_url=url, auth="none", **overrides))


async def collect(client: BackendClient, model: str, **kwargs: Any) -> tuple[list[str], Any]:
    texts: list[str] = []
    done = None
    async for event in client.chat_stream(model, HELLO, **kwargs):
        if isinstance(event, TokenDelta):
            assert done is None, "text after the final event"
            texts.append(event.text)
        else:
            assert isinstance(event, ReplyDone)
            done = event
    return texts, done


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


# === against the real engine ===============================================================
def test_stream_yields_tokens_then_stats_and_honours_num_predict(engine: str) -> None:
    async def run() -> tuple[list[str], Any]:
        client = make_client(engine)
        try:
            return await collect(client, MODEL, options={"num_predict": 5, "temperature": 0})
        finally:
            await client.aclose()

    texts, done = asyncio.run(run())
    assert done is not None, "the stream ended without its final event"
    stats = done.stats
    assert stats.eval_count == 5
    assert stats.done_reason == "length"
    assert 1 <= len(texts) <= 5 and "".join(texts).strip()
    assert stats.tokens_per_second is not None and stats.tokens_per_second > 0
    assert stats.total_seconds is not None and stats.total_seconds > 0
    assert stats.prompt_eval_count and stats.prompt_eval_count > 0


def test_list_models_matches_api_tags(engine: str) -> None:
    tags = httpx.get(f"{engine}/api/tags", timeout=10).json()["models"]

    async def run() -> list[Any]:
        client = make_client(engine)
        try:
            return await client.list_models()
        finally:
            await client.aclose()

    models = asyncio.run(run())
    assert sorted(m.name for m in models) == sorted(t["model"] for t in tags)
    by_name = {m.name: m for m in models}
    assert by_name["gemma3:270m"].family == "gemma"
    assert by_name[MODEL].family == "llama"
    assert by_name["gemma3:270m"].parameter_size == "270M"
    assert all(m.backend_url == engine for m in models)


def test_probe_load_and_running_models(engine: str) -> None:
    async def run() -> tuple[str, Any, list[Any]]:
        client = make_client(engine)
        try:
            version = await client.probe(MODEL)
            stats = await client.load_model(MODEL, keep_alive="5m")
            running = await client.running_models()
            return version, stats, running
        finally:
            await client.aclose()

    version, stats, running = asyncio.run(run())
    assert version and version != "unknown"
    assert stats.eval_count in (None, 0), "loading must not generate"
    assert MODEL in [r.name for r in running]


def test_unknown_model_is_model_not_found(engine: str) -> None:
    async def run() -> None:
        client = make_client(engine)
        try:
            await collect(client, "nonexistent:1b")
        finally:
            await client.aclose()

    with pytest.raises(ModelNotFound) as info:
        asyncio.run(run())
    assert info.value.status_code == 404
    assert "nonexistent:1b" in info.value.user_message


def test_per_family_routing_lists_the_union(engine: str, fake: FakeOllama) -> None:
    """llama models go to the engine, everything else to the default (fake) backend: each
    model is listed from the backend that serves it, and chats are routed the same way."""
    client = make_client(fake.url, backend_routes={"llama": engine})
    assert client.url_for(MODEL) == engine
    assert client.url_for("gemma3:270m") == fake.url
    assert client.backend_urls == [fake.url, engine]

    async def run() -> tuple[list[Any], Any]:
        try:
            models = await client.list_models()
            _, done = await collect(client, MODEL, options={"num_predict": 2})
            return models, done
        finally:
            await client.aclose()

    models, done = asyncio.run(run())
    names = {m.name: m.backend_url for m in models}
    assert names[MODEL] == engine
    assert "gemma3:270m" not in names, "the engine is not the route for gemma models"
    assert names["fake-ok"] == fake.url
    assert done.stats.eval_count == 2


def test_one_client_per_backend_per_loop(fake: FakeOllama) -> None:
    client = make_client(fake.url, connect_timeout=2.5, read_timeout=42.0)

    async def grab() -> Any:
        first = client.clients_for(fake.url)
        assert client.clients_for(fake.url) is first
        # The probe's client is built from the options the ollama client gets.
        probe = first.http
        assert (probe.timeout.connect, probe.timeout.read) == (2.5, 42.0)
        assert probe.timeout.write is not None and probe.timeout.pool is not None
        assert probe.follow_redirects
        assert probe.build_request("GET", "/api/version").url == fake.url + "/api/version"
        await client.aclose()
        assert probe.is_closed
        return first

    assert asyncio.run(grab()) is not asyncio.run(grab()), "a new loop needs a new client"


# === failures, each mapped to one of our errors ===========================================
@pytest.mark.parametrize(
    ("model", "error", "status", "words"),
    [
        ("fake-500", BackendResponseError, 500, "llama runner process has terminated"),
        ("fake-503", BackendBusy, 503, "busy"),
        ("fake-midstream", BackendResponseError, None, "the model runner crashed"),
        ("fake-drop", BackendUnreachable, None, "broke off in the middle of the reply"),
        ("fake-garbage", BackendResponseError, None, "cannot read"),
        ("no-such-model", ModelNotFound, 404, "not found"),
    ],
)
def test_backend_errors_are_mapped(
    fake: FakeOllama, model: str, error: type[BackendError], status: int | None, words: str
) -> None:
    received: list[str] = []

    async def run() -> None:
        client = make_client(fake.url)
        try:
            async for event in client.chat_stream(model, HELLO):
                if isinstance(event, TokenDelta):
                    received.append(event.text)
        finally:
            await client.aclose()

    with pytest.raises(error) as info:
        asyncio.run(run())
    assert info.value.status_code == status
    assert words in info.value.user_message
    if model in ("fake-midstream", "fake-drop", "fake-garbage"):
        assert received, "text before the failure must reach the caller"


def test_auth_denied_uses_the_auth_message(
    fake: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        client = make_client(fake.url)
        try:
            await collect(client, "fake-401")
        finally:
            await client.aclose()

    with pytest.raises(BackendAuthError) as info:
        asyncio.run(run())
    assert info.value.status_code == 401
    # The user learns it is a setup problem; the backend's URL and what to change go to
    # the operators' log.
    assert "refused this app's credentials (HTTP 401)" in info.value.user_message
    assert fake.url not in info.value.user_message
    assert denied_message(401, fake.url) in caplog.text


def test_nothing_listening_is_unreachable() -> None:
    with refusing_url() as url:
        _check_unreachable(url)


def _check_unreachable(url: str) -> None:

    async def run() -> None:
        client = make_client(url)
        try:
            await client.list_models()
        finally:
            await client.aclose()

    with pytest.raises(BackendUnreachable) as info:
        asyncio.run(run())
    assert info.value.status_code is None
    assert "cannot be reached" in info.value.user_message


def test_silent_backend_times_out() -> None:
    """A server that accepts connections but never answers: the probe gives up after
    probe_timeout, and a stream after read_timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        async def run() -> list[BaseException]:
            client = make_client(url, probe_timeout=0.3, read_timeout=0.5)
            errors: list[BaseException] = []
            for call in (client.probe(), collect(client, "fake-ok")):
                try:
                    await call
                except Exception as exc:
                    errors.append(exc)
            await client.aclose()
            return errors

        probe_error, stream_error = asyncio.run(run())
    assert isinstance(probe_error, BackendTimeout)
    assert "0.3 s" in probe_error.user_message
    assert isinstance(stream_error, BackendTimeout)
    assert "0.5 s" in stream_error.user_message


def test_slow_stream_hits_the_read_timeout(fake: FakeOllama) -> None:
    async def run() -> list[str]:
        client = make_client(fake.url, read_timeout=0.2)
        texts: list[str] = []
        try:
            async for event in client.chat_stream("fake-slow", HELLO):
                if isinstance(event, TokenDelta):
                    texts.append(event.text)
        finally:
            await client.aclose()
        return texts

    with pytest.raises(BackendTimeout, match=r"sent nothing for 0\.2 s"):
        asyncio.run(run())


SECRET_URL = "https://user:secret@backend.example"


@pytest.mark.parametrize(
    ("raised", "error", "words"),
    [
        # Subclasses before their bases: each timeout names its own deadline.
        (httpx.ConnectTimeout("x"), BackendTimeout, "accept a connection within 2.5 s."),
        (httpx.PoolTimeout("x"), BackendTimeout, "accept a connection within 2.5 s."),
        (httpx.ReadTimeout("x"), BackendTimeout, "sent nothing for 42 s."),
        (httpx.WriteTimeout("x"), BackendTimeout, "sent nothing for 42 s."),
        (TimeoutError(), BackendTimeout, "did not answer within 7 s."),
        (ConnectionError("x"), BackendUnreachable, "(the connection was refused)."),
        (httpx.ConnectError("x"), BackendUnreachable, "(the connection was refused)."),
        (httpx.WriteError("x"), BackendUnreachable, "backend broke off."),
        (httpx.UnsupportedProtocol("x"), BackendUnreachable, "failed (UnsupportedProtocol)."),
        (KeyError("version"), BackendResponseError, "an answer the UI cannot read."),
        (AttributeError("x"), BackendResponseError, "failed (AttributeError)."),
    ],
)
def test_each_failure_becomes_its_error(
    raised: Exception, error: type[BackendError], words: str
) -> None:
    client = make_client(SECRET_URL, connect_timeout=2.5, read_timeout=42.0)
    with pytest.raises(error) as info, BackendErrors(client, SECRET_URL, deadline=7.0):
        raise raised
    assert type(info.value) is error
    assert info.value.user_message.endswith(words)
    assert info.value.__cause__ is raised
    assert "secret" not in info.value.user_message and "backend.example" not in str(info.value)


def test_http_status_answers_become_errors_by_status() -> None:
    client = make_client(SECRET_URL)
    request = httpx.Request("GET", SECRET_URL + "/api/version")
    answers = {
        404: (ModelNotFound, "The model “m” is not available on the backend (gone)."),
        429: (BackendBusy, "All model backends are busy right now (HTTP 429: gone)."),
        403: (BackendAuthError, "refused this app's credentials (HTTP 403)."),
        500: (BackendResponseError, "The model backend returned an error (HTTP 500): gone"),
    }
    for status, (error, words) in answers.items():
        response = httpx.Response(status, json={"error": "gone"}, request=request)
        raised = httpx.HTTPStatusError("x", request=request, response=response)
        with pytest.raises(error) as info, BackendErrors(client, SECRET_URL, model="m"):
            raise raised
        assert info.value.status_code == status
        assert words in info.value.user_message
        assert "secret" not in info.value.user_message


def test_our_errors_and_cancellation_pass_through_unchanged() -> None:
    client = make_client(SECRET_URL)
    busy = BackendBusy("already ours", status_code=503)
    with pytest.raises(BackendBusy) as info, BackendErrors(client, SECRET_URL):
        raise busy
    assert info.value is busy
    with pytest.raises(asyncio.CancelledError), BackendErrors(client, SECRET_URL):
        raise asyncio.CancelledError


def test_a_timeout_in_a_call_without_a_deadline_names_the_read_timeout() -> None:
    client = make_client(SECRET_URL)
    with pytest.raises(BackendTimeout) as info, BackendErrors(client, SECRET_URL):
        raise TimeoutError
    limit = client.settings.read_timeout
    assert info.value.user_message == f"The model backend did not answer within {limit:g} s."


# === the settings' environment variables (ui/settings.py) ==================================
# Every variable a setting is read from: (variable, value set, field, value expected). Each
# value differs from the field's default, so a variable that misses its field fails the test.
SETTINGS_ENVIRONMENT: list[tuple[str, str, str, object]] = [
    ("LLM_BACKEND_URL", "10.1.2.3:8000", "backend_url", "http://10.1.2.3:8000"),
    ("LLM_BACKEND_API", "openai", "backend_api", "openai"),
    (
        "LLM_BACKEND_ROUTES",
        "gemma=10.1.2.4,llama=openai+10.1.2.5:8000",
        "backend_routes",
        {
            "gemma": BackendRoute(url="http://10.1.2.4:11434", api="ollama"),
            "llama": BackendRoute(url="http://10.1.2.5:8000", api="openai"),
        },
    ),
    ("LLM_ALLOWED_MODELS", "a:1, b:2", "allowed_models", ["a:1", "b:2"]),
    ("LLM_AUTH", "google", "auth", "google"),
    ("LLM_AUTH_AUDIENCE", "https://audience.example", "auth_audience", "https://audience.example"),
    ("LLM_UI_HOST", "127.0.0.9", "host", "127.0.0.9"),
    ("PORT", "7861", "port", 7861),
    ("LLM_CONCURRENCY", "7", "concurrency_limit", 7),
    ("LLM_MAX_QUEUE", "8", "max_queue", 8),
    ("LLM_RATE_LIMIT", "9", "rate_limit_per_minute", 9),
    ("LLM_GRADIO_SHARE", "1", "gradio_share", True),
    ("LLM_MAX_MESSAGE_CHARS", "1001", "max_message_chars", 1001),
    ("LLM_MAX_TOKENS_LIMIT", "1002", "max_tokens_limit", 1002),
    ("LLM_CONTEXT_TOKENS", "1003", "context_tokens", 1003),
    ("LLM_CONNECT_TIMEOUT", "1.25", "connect_timeout", 1.25),
    ("LLM_READ_TIMEOUT", "2.5", "read_timeout", 2.5),
    ("LLM_PROBE_TIMEOUT", "0.75", "probe_timeout", 0.75),
    ("LLM_COLD_START_DEADLINE", "61", "cold_start_deadline", 61.0),
    ("LLM_CONNECT_RETRY_WINDOW", "3.5", "connect_retry_window", 3.5),
    ("LLM_TYPICAL_COLD_START", "12.5", "typical_cold_start", 12.5),
    ("LLM_GPU_PRICE_PER_HOUR", "2.25", "gpu_price_per_hour", 2.25),
    ("LLM_GPU_CONCURRENCY", "6", "gpu_concurrency", 6),
    ("LLM_BACKEND_IDLE_TIMEOUT", "120", "backend_idle_timeout", 120.0),
    (
        "LLM_SHARE_SECRET",
        "an-environment-secret-0123456789",
        "share_secret",
        "an-environment-secret-0123456789",
    ),
    ("LLM_PUBLIC_URL", "https://chat.example.com", "public_url", "https://chat.example.com"),
    ("LLM_MAX_REQUEST_BYTES", "131072", "max_request_bytes", 131072),
    ("LLM_IMAGE_MAX_BYTES", "5000000", "image_max_bytes", 5_000_000),
    ("LLM_EVENTS_PER_MINUTE", "601", "events_per_minute", 601),
    ("LLM_STREAMS_PER_CLIENT", "4", "streams_per_client", 4),
    ("LLM_EVENT_STREAM_GRACE", "2.5", "event_stream_grace", 2.5),
    ("LLM_MODEL_SLOTS", "5", "model_slots", 5),
    ("LLM_VOTES_PER_CLIENT_PER_DAY", "201", "votes_per_client_per_day", 201),
    ("LLM_TRUSTED_PROXIES", "10.0.0.0/8", "trusted_proxies", "10.0.0.0/8"),
    ("LLM_VOTES", "firestore", "votes", "firestore"),
    # Ollama's own variable, read when LLM_BACKEND_URL is unset (it wins when both are set).
    ("OLLAMA_HOST", "10.1.2.5", "backend_url", "http://10.1.2.5:11434"),
]
README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_read_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    variables = {variable for variable, *_ in SETTINGS_ENVIRONMENT}
    assert {field for *_, field, _ in SETTINGS_ENVIRONMENT} == set(Settings.model_fields), (
        "every setting needs its variable in SETTINGS_ENVIRONMENT"
    )
    for variable, value, field, expected in SETTINGS_ENVIRONMENT:
        for other in variables - {variable}:
            monkeypatch.delenv(other, raising=False)
        monkeypatch.setenv(variable, value)
        assert getattr(Settings(), field) == expected, f"{variable} did not reach {field}"


def test_environment_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "10.1.2.5")
    monkeypatch.setenv("LLM_BACKEND_URL", "http://10.1.2.3:8000")
    monkeypatch.setenv("PORT", "7861")
    monkeypatch.setenv("LLM_MAX_QUEUE", "8")
    assert Settings().backend_url == "http://10.1.2.3:8000"  # LLM_BACKEND_URL beats OLLAMA_HOST
    explicit = Settings(backend_url="http://10.9.9.9:1", port=7999, max_queue=9)
    assert explicit.backend_url == "http://10.9.9.9:1"  # a keyword beats every variable
    assert explicit.port == 7999 and explicit.max_queue == 9


def test_the_readme_configuration_table_names_only_real_variables() -> None:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row)}
    assert len(documented) >= 20, "the README's configuration table was not found"
    assert documented <= {variable for variable, *_ in SETTINGS_ENVIRONMENT}


# === picking the backend at startup (ui/backend_access/embedded.py) ===============================
def test_resolve_backend_keeps_a_configured_url() -> None:
    settings = Settings(backend_url="http://10.0.0.1:9999", auth="none")
    resolved, engine = resolve_backend(settings, local_url=f"http://127.0.0.1:{free_port()}")
    assert resolved.backend_url == "http://10.0.0.1:9999" and engine is None


def test_resolve_backend_uses_an_ollama_that_answers(fake: FakeOllama) -> None:
    resolved, engine = resolve_backend(Settings(backend_url=None, auth="none"), fake.url)
    assert resolved.backend_url == fake.url and engine is None


class _NotOllama(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>some other web app</html>"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_resolve_backend_refuses_a_port_held_by_something_else() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotOllama)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(EngineStartError, match="not Ollama answers"):
            resolve_backend(Settings(backend_url=None, auth="none"), url)
    finally:
        server.shutdown()
        server.server_close()


class _VersionDown(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"error": "no instance is ready"}'
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("handler", "error", "words"),
    [
        (_VersionDown, BackendBusy, "not ready (HTTP 503: no instance is ready)"),
        (_NotOllama, BackendResponseError, "an answer the UI cannot read"),
    ],
)
def test_probe_maps_what_its_http_client_gets(
    handler: type[BaseHTTPRequestHandler], error: type[BackendError], words: str
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def run() -> str:
        client = make_client(f"http://127.0.0.1:{server.server_address[1]}")
        try:
            return await client.probe()
        finally:
            await client.aclose()

    try:
        with pytest.raises(error) as info:
            asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()
    assert words in info.value.user_message


def test_resolve_backend_starts_and_stops_the_embedded_engine() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    resolved, engine = resolve_backend(Settings(backend_url=None, auth="none"), url)
    assert engine is not None
    try:
        assert resolved.backend_url == url
        tags = httpx.get(f"{url}/api/tags", timeout=10).json()["models"]
        assert {t["model"] for t in tags} == {"gemma3:270m", "smollm2:135m"}
    finally:
        engine.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/", timeout=2)
