"""Backend trouble as the user sees it: the app launched for real against (a) a real local
HTTP server speaking Ollama's protocol that fails on purpose and (b) a real engine that is
killed and restarted. The partial reply and the user's message stay, an error line says what
happened, retry works, and other users keep being served."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from gradio_client import Client
from gradio_client.client import Job
from gradio_client.exceptions import AppError

from devtools.testkit.chat_app import (
    UNCHANGED,
    chat,
    chat_args,
    eval_count,
    is_note,
    last_note,
    msg,
    note_title,
    rejection,
    replies,
    running_app,
    text_of,
)
from devtools.testkit.fake_ollama import FakeOllama
from devtools.testkit.procs import free_port, refusing_url, start_engine


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(slow_delay=0.4) as server:
        yield server


@pytest.fixture(scope="module")
def app_url(fake: FakeOllama) -> Iterator[str]:
    with running_app(
        backend_url=fake.url, rate_limit_per_minute=1000, max_message_chars=100
    ) as url:
        yield url


@pytest.mark.parametrize(
    ("model", "words", "partial"),
    [
        ("fake-500", "returned an error (HTTP 500): llama runner process has terminated", False),
        ("fake-503", "busy right now", False),
        ("fake-401", "refused this app's credentials (HTTP 401)", False),
        ("fake-midstream", "error in the middle of the reply: the model runner crashed", True),
        ("fake-drop", "broke off in the middle of the reply", True),
        ("fake-garbage", "sent an answer the UI cannot read", True),
    ],
)
def test_backend_error_is_shown_and_the_message_kept(
    client: Client, model: str, words: str, partial: bool
) -> None:
    _, history, _ = chat(client, "Hello there", model=model)
    assert history[0]["role"] == "user" and text_of(history[0]) == "Hello there"
    note = history[-1]
    assert is_note(note) and words in note_title(note)
    assert "Your message is kept" in text_of(note)
    if partial:
        assert replies(history) and replies(history)[0].startswith("word0 ")
        assert "The reply above is incomplete." in text_of(note)
    else:
        assert replies(history) == []


def test_retry_after_an_error_recovers(client: Client) -> None:
    _, broken, _ = chat(client, "Hello there", model="fake-midstream")
    _, fixed, _ = client.predict(broken, "fake-ok", "", 0.7, 0.9, 4, api_name="/retry")
    assert [text_of(m) for m in fixed if m["role"] == "user"] == ["Hello there"]
    assert replies(fixed) == ["word0 word1 word2 word3 "]
    assert not any(note_title(m).startswith("⚠") for m in fixed), "the error line is gone"
    assert eval_count(last_note(fixed)) == 4


def test_rejected_input_never_reaches_the_backend(client: Client, fake: FakeOllama) -> None:
    before = len(fake.chat_requests())
    rejected: list[tuple[str, dict[str, Any]]] = [
        ("x" * 101, {"model": "fake-ok"}),
        ("Hi", {"model": "not-on-the-backend"}),
        ("Hi", {"model": "fake-ok", "temperature": "warm"}),
        ("Hi", {"model": "fake-ok", "max_tokens": [5]}),
    ]
    for message, overrides in rejected:
        rejection(chat(client, message, **overrides))
    box, history, banner = chat(client, "   ", model="fake-ok")
    assert (box, history) == (UNCHANGED, UNCHANGED) and "Type a message first" in banner
    assert len(fake.chat_requests()) == before


def test_options_reach_the_backend(client: Client, fake: FakeOllama) -> None:
    earlier = [
        msg("user", "Before"),
        msg("assistant", "Earlier reply"),
        msg("assistant", "0.1 s total", title="0.1 s total"),
    ]
    options = {"temperature": 0.3, "top_p": 0.5, "max_tokens": 3}
    chat(client, "Hi", earlier, model="fake-ok", system_prompt="Be brief.", **options)
    sent = fake.chat_requests()[-1]
    assert sent["options"] == {"temperature": 0.3, "top_p": 0.5, "num_predict": 3}
    # Notes (stats and error lines) are for people, not for the model.
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Before"},
        {"role": "assistant", "content": "Earlier reply"},
        {"role": "user", "content": "Hi"},
    ]
    assert sent["stream"] is True


def wait_for_reply_text(job: Job) -> None:
    """Until the chat `job` has streamed some of its reply."""
    deadline = time.monotonic() + 10
    while not any(isinstance(out[1], list) and replies(out[1]) for out in job.outputs()):
        assert time.monotonic() < deadline, "the reply did not start streaming"
        time.sleep(0.05)


def test_other_users_are_served_during_a_slow_stream(app_url: str) -> None:
    other_user = Client(app_url, verbose=False)  # connected first: only the chat is timed
    slow = Client(app_url, verbose=False).submit(
        *chat_args("Hi", model="fake-slow", max_tokens=8), api_name="/chat"
    )
    wait_for_reply_text(slow)  # the slow stream is running
    _, history, _ = other_user.predict(
        *chat_args("Hi", model="fake-ok", max_tokens=4), api_name="/chat"
    )
    assert eval_count(last_note(history)) == 4
    # The behaviour itself, with no wall-clock bound: the quick reply came first.
    assert not slow.done(), "the quick chat had to wait for the slow one"
    assert eval_count(last_note(slow.result(timeout=30)[1])) == 8


def test_full_queue_says_busy(fake: FakeOllama) -> None:
    with running_app(backend_url=fake.url, concurrency_limit=1, max_queue=1) as url:
        # Clients first (each takes 0.1-0.3 s to build), so the three requests arrive while
        # the first one still streams: one runs, one waits, one finds the queue full.
        clients = [Client(url, verbose=False) for _ in range(3)]
        before = len(fake.chat_requests())
        args = chat_args("Hi", model="fake-slow", max_tokens=4)  # 1.6 s: time to join
        jobs = [clients[0].submit(*args, api_name="/chat")]
        deadline = time.monotonic() + 10
        while len(fake.chat_requests()) == before:  # the first one runs (the backend has it)
            assert time.monotonic() < deadline, "the first chat never reached the backend"
            time.sleep(0.02)
        jobs += [client.submit(*args, api_name="/chat") for client in clients[1:]]
        outcomes: list[str] = []
        for job in jobs:
            try:
                job.result(timeout=30)
                outcomes.append("served")
            except Exception as exc:
                outcomes.append(str(exc))
    assert outcomes.count("served") == 2, outcomes
    assert any("Queue is full" in o for o in outcomes), outcomes


def test_rate_limit_per_client(fake: FakeOllama) -> None:
    with running_app(
        backend_url=fake.url, rate_limit_per_minute=2, trusted_proxies="127.0.0.1"
    ) as url:
        # A configured local proxy (LLM_TRUSTED_PROXIES) names the client in X-Forwarded-For.
        first = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.1"})
        other = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.2"})
        for _ in range(2):
            chat(first, "Hi", model="fake-ok", max_tokens=1)
        reason = rejection(chat(first, "Hi", model="fake-ok", max_tokens=1))
        assert "Too many messages: the limit is 2 per minute. Try again in" in reason
        _, history, _ = chat(other, "Hi", model="fake-ok", max_tokens=1)
        assert eval_count(last_note(history)) == 1


def test_backend_down_at_page_load_offers_the_allow_list() -> None:
    """A backend that cannot be asked (down, or still starting) still gets a usable picker
    from the allow-list, and a chat says what is wrong."""
    with (
        refusing_url() as dead,
        running_app(backend_url=dead, allowed_models=["gemma3:4b", "llama3.2:3b"]) as url,
    ):
        client = Client(url, verbose=False)
        models = client.predict(api_name="/models")
        assert [m["label"] for m in models] == [
            "Gemma 3 4B — Gemma · 4.3B",
            "Llama 3.2 3B — Llama · 3.2B",
        ]
        _, history, _ = chat(client, "Hi", model="gemma3:4b")
        assert "cannot be reached" in note_title(history[-1])


def test_engine_stopped_and_back(tmp_path: Any) -> None:
    """Kill the engine mid-session: the UI says it cannot reach it and keeps the message;
    once the engine is back on the same address, retry answers."""
    port = free_port()
    engine, url = start_engine(port, name="engine-faults")
    try:
        with running_app(backend_url=url, rate_limit_per_minute=1000) as app:
            client = Client(app, verbose=False)
            _, history, _ = chat(client, "Hi", max_tokens=2)
            assert eval_count(last_note(history)) == 2

            engine.kill()
            _, down, _ = chat(client, "Are you there?", history, max_tokens=2)
            assert text_of(down[-2]) == "Are you there?"
            assert "cannot be reached" in note_title(down[-1])
            # Other requests are still answered while the backend is down.
            assert client.predict(history, api_name="/undo")[1] == "Hi"

            engine, _ = start_engine(port, name="engine-faults")
            _, back, _ = client.predict(down, "smollm2:135m", "", 0.7, 0.9, 2, api_name="/retry")
            assert [text_of(m) for m in back if m["role"] == "user"] == ["Hi", "Are you there?"]
            assert eval_count(last_note(back)) == 2
    finally:
        engine.stop()


def test_stop_ends_the_reply_and_the_backend_stream(app_url: str, fake: FakeOllama) -> None:
    """/stop (the Stop button) ends the running reply of the same session: the partial
    reply stays with a "Stopped" note, and the backend request is closed."""
    hangups = fake.hangups
    client = Client(app_url, verbose=False)
    job = client.submit(*chat_args("Hi", model="fake-slow", max_tokens=8), api_name="/chat")
    wait_for_reply_text(job)
    client.predict(api_name="/stop")
    _, history, _ = job.result(timeout=10)
    assert replies(history) and len(replies(history)[0].split()) < 8
    assert note_title(history[-1]).startswith("Stopped")
    assert "s to first token" in note_title(history[-1])
    deadline = time.monotonic() + 10
    while fake.hangups == hangups:
        assert time.monotonic() < deadline, "the backend stream was not closed"
        time.sleep(0.05)
    # Nothing runs any more: a second stop says so (silently in the page).
    with pytest.raises(AppError):
        client.predict(api_name="/stop")


def test_cancelled_job_closes_the_backend_stream(app_url: str, fake: FakeOllama) -> None:
    """An API client cancelling its job (Gradio's cancel) also ends the backend request, so
    the model stops generating for nobody."""
    hangups = fake.hangups
    job = Client(app_url, verbose=False).submit(
        *chat_args("Hi", model="fake-slow", max_tokens=8), api_name="/chat"
    )
    wait_for_reply_text(job)
    job.cancel()
    deadline = time.monotonic() + 10
    while fake.hangups == hangups:
        assert time.monotonic() < deadline, "the backend stream was not closed"
        time.sleep(0.05)
