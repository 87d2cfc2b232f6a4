"""The OpenAI-compatible kind of backend (LLM_BACKEND_API=openai, openai+ routes): the
backend client against llama-cpp-python's own server (a real third-party OpenAI-compatible
server, the session fixture `llama_server`) and, for what that server cannot do, a real local
HTTP server speaking the OpenAI API (devtools/testkit/openai_servers.py `FakeOpenAI`)."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.testkit.google_fakes import emulator, metadata_for_test
from devtools.testkit.openai_servers import LLAMA_CPP_MODEL, FakeOpenAI
from devtools.testkit.procs import refusing_url
from ui.backend_access.client import BackendClient, ReplyDone, ReplyStats, TokenDelta
from ui.backend_access.models import ModelDirectory
from ui.backend_access.status import BackendWatch, GpuPrice
from ui.errors import (
    BackendAuthError,
    BackendBusy,
    BackendError,
    BackendMisconfigured,
    BackendResponseError,
    BackendTimeout,
    BackendUnreachable,
    ModelNotFound,
)
from ui.settings import BackendRoute, Settings
from ui.turn.warming import ColdStartTracker, WarmingStatus, stream_with_warmup

GREETING = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Say hello."},
]


def openai_client(url: str, **settings: Any) -> BackendClient:
    return BackendClient(
        Settings(**{"backend_url": url, "backend_api": "openai", "auth": "none", **settings})
    )


async def reply_of(
    client: BackendClient, model: str, options: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[str, ReplyStats]:
    text, stats = "", None
    async for event in client.chat_stream(model, kwargs.get("messages", GREETING), options=options):
        if isinstance(event, TokenDelta):
            assert stats is None, "text after the reply's end"
            text += event.text
        else:
            assert isinstance(event, ReplyDone)
            stats = event.stats
    assert stats is not None, "no ReplyDone"
    return text, stats


async def error_of(url: str, model: str, **settings: Any) -> BackendError:
    """The error a reply from `model` at `url` raises."""
    client = openai_client(url, **settings)
    try:
        with pytest.raises(BackendError) as info:
            await reply_of(client, model)
        return info.value
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


# === llama-cpp-python's server ===========================================================
def test_chat_list_and_probe_against_llama_cpp_python_server(llama_server: str) -> None:
    async def scenario() -> tuple[Any, ...]:
        client = openai_client(llama_server)
        try:
            version = await client.probe()
            models = [m.name for m in await client.list_models()]
            options = {"temperature": 0.0, "top_p": 0.9, "num_predict": 6}
            text, stats = await reply_of(client, LLAMA_CPP_MODEL, options)
            again, _ = await reply_of(client, LLAMA_CPP_MODEL, options)
            running = await client.running_models()
            loaded = await client.load_model(LLAMA_CPP_MODEL)
            return version, models, text, again, stats, running, loaded
        finally:
            await client.aclose()

    version, models, text, again, stats, running, loaded = asyncio.run(scenario())
    assert version == "unknown"  # no /health there: its 404 proves it is up
    assert models == [LLAMA_CPP_MODEL]
    assert text and text == again  # temperature 0 reached the server: greedy, repeatable
    # No usage from this server (it ignores stream_options): each piece is one token, and
    # max_tokens (from num_predict) stopped it.
    assert stats.eval_count == 6 and stats.done_reason == "length"
    assert stats.tokens_per_second is not None and stats.tokens_per_second > 0
    assert stats.load_seconds is None and stats.total_seconds is None  # no timings sent
    assert running == [] and loaded == ReplyStats()


def test_stop_closes_the_stream_and_the_server_serves_the_next_reply(llama_server: str) -> None:
    async def scenario() -> tuple[str, str]:
        client = openai_client(llama_server)
        try:
            stream = client.chat_stream(
                LLAMA_CPP_MODEL,
                [{"role": "user", "content": "Write a long story about the sea."}],
                options={"temperature": 0.0, "num_predict": 400},
            )
            first = await anext(stream)
            await stream.aclose()  # Stop: the HTTP stream closes
            # The server serves one request at a time: this one gets the model only once
            # the stopped reply let go of it.
            text, _ = await reply_of(client, LLAMA_CPP_MODEL, {"num_predict": 3})
            assert isinstance(first, TokenDelta)
            return first.text, text
        finally:
            await client.aclose()

    first, text = asyncio.run(scenario())
    assert first and text


def test_an_ollama_route_and_an_openai_route_in_one_client(engine: str, llama_server: str) -> None:
    settings = Settings(
        backend_url=engine, auth="none", backend_routes=f"llama=openai+{llama_server}"
    )
    assert settings.backend_routes["llama"] == BackendRoute(url=llama_server, api="openai")

    async def scenario() -> tuple[dict[str, str], str, str, bool, bool]:
        client = BackendClient(settings)
        try:
            models = {m.name: m.backend_url for m in await client.list_models()}
            smol, _ = await reply_of(client, "smollm2:135m", {"num_predict": 3})
            gemma, _ = await reply_of(client, "gemma3:270m", {"num_predict": 3})
            return (models, smol, gemma, client.reports_loads("smollm2:135m"),
                    client.reports_loads("gemma3:270m"))  # fmt: skip
        finally:
            await client.aclose()

    models, smol, gemma, smol_loads, gemma_loads = asyncio.run(scenario())
    # Each model from the backend its family routes to: smollm2 (llama) from llama_cpp's
    # server, gemma from the engine; the engine's own smollm2 is not offered.
    assert models == {"smollm2:135m": llama_server, "gemma3:270m": engine}
    assert smol and gemma
    assert (smol_loads, gemma_loads) == (False, True)


def test_the_google_id_token_reaches_an_openai_backend_behind_cloud_run(
    llama_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Cloud Run emulator (IAM on: real google-auth verification of the ID token from
    the fake metadata server) in front of llama-cpp-python's server."""

    async def scenario(url: str) -> tuple[str, list[str], str]:
        client = openai_client(url, auth="google")
        try:
            version = await client.probe()
            models = [m.name for m in await client.list_models()]
            text, _ = await reply_of(client, LLAMA_CPP_MODEL, {"num_predict": 3})
            return version, models, text
        finally:
            await client.aclose()

    with metadata_for_test(monkeypatch) as metadata, emulator(upstream_url=llama_server) as run:
        version, models, text = asyncio.run(scenario(run.url))
        assert metadata.issued_for(run.url) <= 1  # one token for the probe, list and chat
    assert version == "unknown" and models == [LLAMA_CPP_MODEL] and text


# === what the API check says =============================================================
def test_an_openai_server_behind_the_ollama_setting_is_named(llama_server: str) -> None:
    async def scenario() -> list[BackendError]:
        client = BackendClient(Settings(backend_url=llama_server, auth="none"))
        errors = []
        try:
            for call in (client.probe(), client.list_models(), reply_of(client, "smollm2:135m")):
                try:
                    await call
                except BackendError as exc:
                    errors.append(exc)
        finally:
            await client.aclose()
        return errors

    errors = asyncio.run(scenario())
    assert len(errors) == 3
    for error in errors:
        assert isinstance(error, BackendMisconfigured)
        assert error.user_message == (
            "The model backend speaks the OpenAI API, but this app is set up to talk to it "
            "with Ollama's API: set LLM_BACKEND_API=openai."
        )
        assert "That model" not in error.user_message and "http" not in error.user_message


def test_an_ollama_backend_behind_the_openai_setting_is_named(engine: str) -> None:
    async def scenario() -> BackendError:
        # The engine (Ollama's API) routed as openai: the message names that route.
        client = BackendClient(
            Settings(
                backend_url="http://127.0.0.1:9", auth="none",
                backend_routes=f"gemma=openai+{engine}",
            )
        )  # fmt: skip
        try:
            with pytest.raises(BackendMisconfigured) as info:
                await reply_of(client, "gemma3:270m")
            return info.value
        finally:
            await client.aclose()

    error = asyncio.run(scenario())
    assert error.user_message == (
        "The model backend speaks Ollama's API, but this app is set up to talk to it with the "
        "OpenAI API: in LLM_BACKEND_ROUTES, write gemma=ollama+URL."
    )


def test_a_model_unknown_to_an_openai_server_stays_not_found_and_is_checked_once(
    fake: FakeOpenAI,
) -> None:
    async def scenario() -> list[BackendError]:
        client = openai_client(fake.url)
        errors = []
        try:
            for _ in range(2):
                with pytest.raises(ModelNotFound) as info:
                    await reply_of(client, "ghost:1b")
                errors.append(info.value)
        finally:
            await client.aclose()
        return errors

    before = fake.calls("/v1/models")
    errors = asyncio.run(scenario())
    assert errors[0].user_message == (
        "The model “ghost:1b” is not available on the backend (The model `ghost:1b` does not "
        "exist.)."
    )
    assert fake.calls("/v1/models") == before + 1  # the API check asked once


# === the protocol, as sent and as read ====================================================
def test_parameters_messages_and_images_as_the_openai_api_takes_them(fake: FakeOpenAI) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is this?", "images": [png]},
    ]

    async def scenario() -> None:
        client = openai_client(fake.url)
        try:
            options = {"temperature": 0.2, "top_p": 0.8, "num_predict": 3}
            await reply_of(client, "fake-ok", options, messages=messages)
        finally:
            await client.aclose()

    asyncio.run(scenario())
    method, path, headers, body = fake.requests[-1]
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.8, 3)
    assert "num_predict" not in body and "options" not in body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
            ],
        },
    ]
    # No placeholder credentials: with LLM_AUTH=none nothing authorizes the call.
    assert "authorization" not in {name.lower() for name in headers}


def test_whether_a_model_sees_comes_from_the_catalog_on_an_openai_backend(
    fake: FakeOpenAI,
) -> None:
    """The OpenAI API has no /api/show: nothing is asked, the catalog decides (gemma3:4b,
    the vLLM deploy's model, sees; a model the catalog does not know does not), once."""

    async def scenario() -> tuple[bool, bool, bool]:
        settings = Settings(backend_url=fake.url, backend_api="openai", auth="none")
        client = BackendClient(settings)
        directory = ModelDirectory(settings, client)
        try:
            return (
                await directory.can_see("gemma3:4b"),
                await directory.can_see("fake-ok"),
                await directory.can_see("gemma3:4b"),
            )
        finally:
            await client.aclose()

    before = len(fake.requests)
    assert asyncio.run(scenario()) == (True, False, True)
    assert fake.requests[before:] == []


@pytest.mark.parametrize(
    ("model", "tokens", "prompt"), [("fake-ok", 10, 7), ("fake-nousage", 5, None)]
)
def test_usage_when_sent_else_pieces_counted_and_the_rate_from_the_uis_clock(
    fake: FakeOpenAI, model: str, tokens: int, prompt: int | None
) -> None:
    ticks = itertools.count()  # each piece one second after the last

    async def scenario() -> ReplyStats:
        client = BackendClient(
            Settings(backend_url=fake.url, backend_api="openai", auth="none"),
            clock=lambda: float(next(ticks)),
        )
        try:
            return (await reply_of(client, model))[1]
        finally:
            await client.aclose()

    stats = asyncio.run(scenario())
    assert (stats.eval_count, stats.prompt_eval_count, stats.done_reason) == (
        tokens,
        prompt,
        "length",
    )
    # 5 pieces over 4 s; the tokens after the first piece: 4/5 of the count.
    assert stats.tokens_per_second == pytest.approx(tokens * 4 / 5 / 4)


@pytest.mark.parametrize(
    ("model", "error", "words"),
    [
        ("fake-429", BackendBusy, "All model backends are busy right now (HTTP 429: Too many"),
        ("fake-503", BackendBusy, "busy right now or not ready (HTTP 503: Service unavailable"),
        ("fake-401", BackendAuthError, "refused this app's credentials (HTTP 401)"),
        ("fake-500", BackendResponseError, "returned an error (HTTP 500): fake failure 500"),
        ("fake-midstream", BackendResponseError, "middle of the reply: the engine died"),
        ("fake-drop", BackendUnreachable, "broke off in the middle of the reply"),
        ("fake-garbage", BackendResponseError, "sent an answer the UI cannot read"),
    ],
)
def test_errors_become_the_same_messages_as_ollamas(
    fake: FakeOpenAI, model: str, error: type[BackendError], words: str
) -> None:
    raised = asyncio.run(error_of(fake.url, model))
    assert type(raised) is error and words in raised.user_message


def test_refused_and_silent_backends(fake: FakeOpenAI) -> None:
    with refusing_url() as dead:
        refused = asyncio.run(error_of(dead, "fake-ok"))
    assert isinstance(refused, BackendUnreachable) and "refused" in refused.user_message
    fake.hold()
    try:
        silent = asyncio.run(error_of(fake.url, "fake-held", read_timeout=0.3))
    finally:
        fake.release()
    assert isinstance(silent, BackendTimeout)
    assert silent.user_message == "The model backend sent nothing for 0.3 s."


# === cold-start status ====================================================================
def test_a_cold_openai_backend_shows_starting_then_ready_never_loading(
    fake: FakeOpenAI,
) -> None:
    """/health held (an instance starting), then answering while the first token is still
    held: "starting", then "ready" (the instance answers; it tells no load)."""
    fake.health_held.set()
    fake.hold()

    async def scenario() -> list[object]:
        client = openai_client(fake.url, probe_timeout=0.2, cold_start_deadline=30)
        seen: list[object] = []
        try:
            stream = stream_with_warmup(
                client, "fake-held", GREETING, tracker=ColdStartTracker(30.0), tick=0.1
            )
            async for event in stream:
                seen.append(event)
                phases = [e.phase for e in seen if isinstance(e, WarmingStatus)]
                if phases and phases[-1] == "starting" and fake.health_held.is_set():
                    fake.health_held.clear()  # the instance is up
                elif phases and phases[-1] == "ready" and not isinstance(event, TokenDelta):
                    fake.release()  # and now the first token
        finally:
            await client.aclose()
        return seen

    seen = asyncio.run(scenario())
    phases = [e.phase for e in seen if isinstance(e, WarmingStatus)]
    assert phases[0] == "starting" and "ready" in phases and "loading" not in phases
    assert any(isinstance(e, TokenDelta) for e in seen) and isinstance(seen[-1], ReplyDone)


def test_the_status_line_says_ready_not_loading_for_a_backend_that_reports_no_loads() -> None:
    now = [0.0]
    for reports_loads, after_start in ((True, "loading"), (False, "ready")):
        watch = BackendWatch(
            GpuPrice(1.0, 4), idle_timeout=900, typical=lambda: 30.0, clock=lambda: now[0],
            reports_loads=lambda _model, answer=reports_loads: answer,
        )  # fmt: skip
        watch.waking()
        now[0] += 12
        watch.answered()
        assert watch.view().state == after_start


# === settings =============================================================================
def test_route_syntax() -> None:
    settings = Settings(
        backend_api="openai",
        backend_url="https://vllm.run.app",
        backend_routes="gemma=ollama+https://ollama.run.app,mistral=localhost:8000",
    )
    assert settings.backend_routes == {
        "gemma": BackendRoute(url="https://ollama.run.app", api="ollama"),
        "mistral": BackendRoute(url="http://localhost:8000", api="openai"),  # inherits
    }
    json_form = Settings(backend_routes='{"llama": "openai+https://x.run.app"}')
    assert json_form.backend_routes["llama"].api == "openai"
    with pytest.raises(ValueError, match="'vllm' is not a backend API"):
        Settings(backend_routes="gemma=vllm+https://x.run.app")
    with pytest.raises(ValueError, match="one server speaks one API"):
        Settings(backend_url="https://x.run.app", backend_routes="gemma=openai+https://x.run.app")
