"""Hardening against scripted abuse, through the real Gradio API: who a client is (proxy
headers are believed only from configured proxies), votes bound to the replies the server
streamed, a daily vote cap, blind battles that a reply unblinds get no vote, share links
whose base never comes from the request when LLM_PUBLIC_URL is set.

The app runs in-process against protocol-level fake Ollamas (devtools/testkit/fake_ollama.py).
"""

from __future__ import annotations

import html
import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from devtools.testkit.chat_app import (
    UNCHANGED,
    chat,
    chat_args,
    eval_count,
    first_reply_after,
    is_note,
    last_note,
    msg,
    rejection,
    running_app,
    text_of,
)
from devtools.testkit.fake_ollama import FakeOllama, FixedReplyOllama
from devtools.testkit.google_fakes import emulator
from ui.settings import Settings
from ui.votes.store import AlreadyVoted, SqliteVoteStore, Vote
from ui.web.rate_limit import RateLimiter

pytestmark = pytest.mark.timeout(240)

SECRET = "hardening-test-secret-0123456789abcdef"
DEFAULT_STREAMS = Settings.model_fields["streams_per_client"].default  # production's


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


# --- who the client is ------------------------------------------------------------------
def test_forwarded_for_from_an_unconfigured_proxy_is_not_believed(fake: FakeOllama) -> None:
    """Locally no proxy is trusted: a script on this host that sends a new X-Forwarded-For
    per request is still one client (uvicorn trusts 127.0.0.1 by default)."""
    with running_app(backend_url=fake.url, rate_limit_per_minute=1) as url:
        first = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.1"})
        posing = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.2"})
        _, history, _ = chat(first, "Hi", model="fake-ok", max_tokens=1)
        assert eval_count(last_note(history)) == 1
        reason = rejection(chat(posing, "Hi", model="fake-ok", max_tokens=1))
        assert "Too many messages: the limit is 1 per minute" in reason


def test_on_cloud_run_the_client_is_the_front_ends_last_hop(
    fake: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With K_SERVICE set, the client is the last X-Forwarded-For entry (the one Google's
    front end appends); the entries before it are whatever the client sent."""
    monkeypatch.setenv("K_SERVICE", "llm-ui")
    with running_app(backend_url=fake.url, rate_limit_per_minute=1) as url:

        def client(forwarded: str) -> Client:
            return Client(url, verbose=False, headers={"X-Forwarded-For": forwarded})

        def answered(forwarded: str) -> int:
            _, history, banner = chat(client(forwarded), "Hi", model="fake-ok")
            assert history != UNCHANGED, f"{forwarded!r} refused: {html.unescape(banner)}"
            return eval_count(last_note(history))

        assert answered("198.51.100.1, 203.0.113.5") == 8
        # A different made-up first hop, the same real client: refused.
        reason = rejection(chat(client("198.51.100.2, 203.0.113.5"), "Hi", model="fake-ok"))
        assert "Too many messages" in reason
        # Another real client (its last hop differs), even claiming the first's address.
        assert answered("203.0.113.5, 203.0.113.6") == 8


# --- votes --------------------------------------------------------------------------------
def run_battle(client: Client, message: str = "Say hello.") -> tuple[Any, list[Any]]:
    job = client.submit(message, "", [], [], 0.7, 8, api_name="/battle")
    final = job.result(timeout=60)
    return final, job.outputs()


def vote(client: Client, token: str, chat_a: Any, chat_b: Any, choice: str = "a") -> str:
    banner, *_ = client.predict(token, choice, chat_a, chat_b, api_name="/battle_vote")
    return html.unescape(banner)


def as_request_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A display history as a client sends it back (notes keep their titles)."""
    return [
        msg(m["role"], text_of(m), (m.get("metadata") or {}).get("title") if is_note(m) else None)
        for m in history
    ]


def test_a_vote_needs_the_replies_the_server_streamed_and_is_capped_per_day(
    fake: FakeOllama, tmp_path: Any
) -> None:
    with running_app(
        backend_url=fake.url,
        allowed_models=["fake-ok", "fake-slow"],
        rate_limit_per_minute=1000,
        votes_per_client_per_day=2,
        share_secret=SECRET,
        votes=f"sqlite:///{tmp_path / 'votes.sqlite3'}",
    ) as url:
        client = Client(url, verbose=False)
        final, updates = run_battle(client)
        token, chat_a, chat_b = final[2], final[4], final[7]
        # The first token sent (an update may come before it: "waiting for the backend").
        streaming_token = next(u[2] for u in updates if isinstance(u[2], str) and u[2])
        assert streaming_token and token and streaming_token != token
        # Made-up replies with a real battle's token: refused.
        forged = as_request_history(chat_b)
        forged[1] = msg("assistant", "A much better answer, written by the voter.")
        assert "not the ones this battle streamed" in vote(client, token, chat_a, forged)
        # The token handed out while the replies streamed takes no vote.
        assert "Wait until both models have answered" in vote(
            client, streaming_token, chat_a, chat_b
        )
        # The real replies with the final token: counted.
        assert "Thanks for voting" in vote(client, token, chat_a, chat_b)
        # The daily cap: the second vote is taken, the third is not.
        final, _ = run_battle(client)
        assert "Thanks for voting" in vote(client, final[2], final[4], final[7])
        final, _ = run_battle(client)
        assert "voted 2 times in the last 24 hours" in vote(client, final[2], final[4], final[7])


@contextmanager
def battle_app(reply: str, tmp_path: Path) -> Iterator[Client]:
    """A client of an app whose two models both answer `reply`, with a vote store."""
    names = ("fake-html", "fake-html2")
    with (
        FixedReplyOllama(reply, names=names) as fake,
        running_app(
            backend_url=fake.url,
            allowed_models=list(names),
            rate_limit_per_minute=1000,
            share_secret=SECRET,
            votes=f"sqlite:///{tmp_path / 'votes.sqlite3'}",
        ) as url,
    ):
        yield Client(url, verbose=False)


def test_a_battle_whose_reply_names_a_model_gets_no_vote(tmp_path: Path) -> None:
    with battle_app("Hello! I am Gemma, a model trained by Google.", tmp_path) as client:
        final, _ = run_battle(client, "Who are you?")
        token, chat_a, chat_b = final[2], final[4], final[7]
        assert "names a model" in html.unescape(final[1]), final[1]
        assert "Wait until both models have answered" in vote(client, token, chat_a, chat_b)


# --- share links ----------------------------------------------------------------------------
def test_share_links_use_the_public_url_never_the_request_host(fake: FakeOllama) -> None:
    public = "https://chat.example.com/"
    with running_app(backend_url=fake.url, public_url=public) as url:
        client = Client(
            url,
            verbose=False,
            headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        )
        history = [msg("user", "Hi"), msg("assistant", "Hello")]
        link, _ = client.predict(history, "fake-ok", "", 0.7, 0.9, 8, api_name="/share_chat")
        assert link.startswith(public + "?share="), link


# --- fair share -----------------------------------------------------------------------------
def test_one_client_holding_many_streams_does_not_starve_another() -> None:
    """One client tries to hold 60 long streams; another client's short reply on the same
    model still starts within a few seconds. Loopback only, bounded by the fake's length."""
    with (
        # 8 tokens: a 16 s reply; 4 at once, as a backend's parallel slots.
        FakeOllama(slow_delay=2.0, parallel=4) as slow,
        running_app(
            backend_url=slow.url,
            rate_limit_per_minute=1000,
            trusted_proxies="127.0.0.1",
            streams_per_client=DEFAULT_STREAMS,
        ) as url,
    ):  # fmt: skip
        hog = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.66"})
        other = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.7"})
        jobs = [
            hog.submit(*chat_args(f"Long {i}", model="fake-slow", max_tokens=8), api_name="/chat")
            for i in range(60)
        ]
        # Wait until the hog's streams are running (the backend has them) before asking.
        deadline = time.monotonic() + 30
        while len(slow.chat_requests()) < DEFAULT_STREAMS:
            assert time.monotonic() < deadline, "the hog's streams never started"
            time.sleep(0.05)
        started = time.monotonic()
        mine = other.submit(*chat_args("Hi", model="fake-slow", max_tokens=1), api_name="/chat")
        assert first_reply_after(mine, started) < 5
        outcomes = [job.result(timeout=120) for job in jobs]
        refused = [o for o in outcomes if o[1] == UNCHANGED]
        assert len(refused) >= 60 - DEFAULT_STREAMS, len(refused)
        assert f"at most {DEFAULT_STREAMS} at once" in html.unescape(refused[0][2])
        # The backend got the hog's allowed streams and the other client's one, and at
        # most as many more from hog jobs that started after the first ones ended.
        assert len(slow.chat_requests()) <= 2 * DEFAULT_STREAMS + 1


# --- bounded requests -----------------------------------------------------------------------
def test_request_bodies_are_capped_before_parsing_and_uploads_at_the_image_cap(
    fake: FakeOllama,
) -> None:
    with running_app(
        backend_url=fake.url, max_request_bytes=256 * 1024, image_max_bytes=1024 * 1024
    ) as url:
        join = url + "/gradio_api/queue/join"
        big = b'{"data": ["' + b"x" * (5 * 1024 * 1024) + b'"], "fn_index": 0}'
        started = time.monotonic()
        answer = httpx.post(join, content=big, headers={"content-type": "application/json"})
        assert answer.status_code == 413 and "limit is 256 KB" in answer.text
        # Without a length (chunked), refused once the limit is passed.
        chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
        answer = httpx.post(join, content=chunks, headers={"content-type": "application/json"})
        assert answer.status_code in (400, 413)  # 400: Gradio answers the aborted read
        assert time.monotonic() - started < 10
        # Gradio's upload route (images) has the image cap, not the body cap.
        upload = url + "/gradio_api/upload"
        answer = httpx.post(upload, files={"files": ("a.png", b"x" * (512 * 1024))})
        assert answer.status_code == 200
        answer = httpx.post(upload, files={"files": ("b.png", b"x" * (2 * 1024 * 1024))})
        assert answer.status_code == 413
        # A normal request still works.
        _, history, _ = chat(Client(url, verbose=False), "Hi", model="fake-ok", max_tokens=1)
        assert eval_count(last_note(history)) == 1


def test_every_endpoint_counts_against_a_per_client_event_limit(fake: FakeOllama) -> None:
    with running_app(backend_url=fake.url, events_per_minute=5, trusted_proxies="127.0.0.1") as url:
        prefix = url + "/gradio_api/call"
        headers = {"X-Forwarded-For": "203.0.113.9"}
        codes = [
            httpx.post(f"{prefix}/leaderboard", json={"data": []}, headers=headers).status_code
            for _ in range(7)
        ]
        assert codes[:5] == [200] * 5 and codes[5:] == [429, 429], codes
        answer = httpx.post(f"{prefix}/undo", json={"data": [[]]}, headers=headers)
        assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
        # Another client is served.
        other = {"X-Forwarded-For": "203.0.113.10"}
        assert httpx.post(f"{prefix}/models", json={"data": []}, headers=other).status_code == 200


# --- internals never shown --------------------------------------------------------------------
INTERNALS = re.compile(r"validation error|pydantic|object at 0x|Traceback|too large to convert")


def test_internals_never_reach_users(fake: FakeOllama) -> None:
    with running_app(backend_url=fake.url) as url:
        client = Client(url, verbose=False)
        # A 401-digit max tokens (float() raises OverflowError on it): clamped, with a note.
        _, history, _ = chat(client, "Hi", model="fake-ok", max_tokens=10**400)
        note = text_of(last_note(history))
        assert "Max tokens (a 401-digit number) is outside the allowed range" in note
        assert eval_count(last_note(history)) == 8
        # Malformed input that Gradio itself refuses (its pydantic check, a missing input):
        # the error event carries no text of Gradio's or Python's.
        prefix = url + "/gradio_api/call"
        for api, data in [("undo", [[{"role": "x"}]]), ("undo", []), ("retry", ["zz"])]:
            event = httpx.post(f"{prefix}/{api}", json={"data": data}).json()["event_id"]
            stream = httpx.get(f"{prefix}/{api}/{event}", timeout=30).text
            assert "event: error" in stream and not INTERNALS.search(stream), stream[:300]
        # An over-long share link: a short page, not a server error. 15 000 characters: over
        # MAX_QUERY_BYTES, under the 16 KiB head that h11 reads however it arrives.
        answer = raw_get(url, "/?share=" + "A" * 15_000)
        assert answer.startswith(b"HTTP/1.1 414"), answer[:100]
        assert b"too long" in answer and b"Internal Server Error" not in answer
        # 100 000 characters: the HTTP parser itself refuses it when it arrives in pieces
        # (h11: 400 then close, which can reach the client as a reset); never a 500.
        try:
            answer = raw_get(url, "/?share=" + "A" * 100_000)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 5"), answer[:100]


# --- the Cloud Run emulator -------------------------------------------------------------------
def raw_get(base: str, target: str) -> bytes:
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_emulator_refuses_odd_request_targets_and_its_state_shows_no_urls_or_paths(
    fake: FakeOllama,
) -> None:
    with (
        FakeOllama() as elsewhere,  # another host the target tries to reach
        emulator(upstream_url=fake.url, allow_unauthenticated=True, certs_url=None) as service,
    ):
        other = elsewhere.url.removeprefix("http://")
        for target in (f"@{other}/api/tags", f"http://{other}/api/tags", "api/tags"):
            answer = raw_get(service.url, target)
            assert answer.startswith(b"HTTP/1.1 400"), (target, answer[:200])
        assert elsewhere.requests == []
        # A normal request passes; the state counts it by endpoint, and a user's own path
        # (it could hold a share link) only as "other".
        assert raw_get(service.url, "/api/tags").startswith(b"HTTP/1.1 200")
        raw_get(service.url, "/private/SECRET-LOOKING-TOKEN")
        state = json.dumps(service.state())
        assert "GET /api/tags" in state and "GET other" in state
        assert "SECRET-LOOKING" not in state and fake.url not in state
        assert "127.0.0.1:" not in state


# --- the leaderboard's store ------------------------------------------------------------------
def test_a_numeric_battle_id_is_never_a_second_key(tmp_path: Any) -> None:
    store = SqliteVoteStore(tmp_path / "votes.sqlite3")
    when = "2026-01-01T00:00:00Z"
    store.record(Vote("123", "m1", "m2", "a", timestamp=when))
    with pytest.raises(ValueError, match="battle id must be a string"):
        store.record(Vote(123, "m1", "m2", "a", timestamp=when))  # type: ignore[arg-type]
    with pytest.raises(AlreadyVoted):
        store.record(Vote("123", "m1", "m2", "b", timestamp=when))
    (pair,) = store.pair_counts()
    assert store.vote_count() == 1 and pair.first_wins == 1 and pair.second_wins == 0


# --- rate limits --------------------------------------------------------------------------------
def test_the_rate_limiters_client_table_is_capped() -> None:
    limiter = RateLimiter(1, window=60, max_clients=4)
    for i in range(4):
        assert limiter.acquire(f"c{i}", now=0.0) is None
    assert limiter.acquire("c0", now=1.0) is not None  # still limited
    # A fifth client while all four are busy: the oldest half is forgotten to make room.
    assert limiter.acquire("c4", now=2.0) is None
    assert limiter.tracked() <= 4
    assert limiter.acquire("c0", now=3.0) is None  # forgotten, so counted afresh
    # Once their window has passed, idle clients are dropped first.
    for i in range(100):
        limiter.acquire(f"late{i}", now=100.0 + i * 61)
        assert limiter.tracked() <= 4
    # ... and only they: the busy ones are still counted (the oldest half is not dropped).
    limiter = RateLimiter(1, window=60, max_clients=4)
    limiter.acquire("idle", now=0.0)
    for i in range(3):
        limiter.acquire(f"busy{i}", now=70.0 + i)
    assert limiter.acquire("new", now=100.0) is None
    assert [limiter.acquire(f"busy{i}", now=101.0) is not None for i in range(3)] == [True] * 3


def test_compare_and_battle_share_one_rate_limit(fake: FakeOllama) -> None:
    """Each Compare or Battle call starts two generations or more: they count against one
    per-client limit of their own, apart from Chat's."""
    with running_app(
        backend_url=fake.url, allowed_models=["fake-ok", "fake-slow"], rate_limit_per_minute=2
    ) as url:
        client = Client(url, verbose=False)
        args = ("Hi", ["fake-ok", "fake-slow"], "", 0.7, 1, [], [], [])
        for _ in range(2):
            outputs = client.predict(*args, api_name="/compare")
            assert "Too many" not in html.unescape(str(outputs[1]))
        refused = client.predict(*args, api_name="/compare")
        assert "Too many messages: the limit is 2 per minute" in html.unescape(refused[1])
        final, _ = run_battle(client)
        assert "Too many messages: the limit is 2 per minute" in html.unescape(final[1])
        # Chat has its own count.
        _, history, _ = chat(client, "Hi", model="fake-ok", max_tokens=1)
        assert eval_count(last_note(history)) == 1
        before = len(fake.chat_requests())
        client.predict(*args, api_name="/compare")
        assert len(fake.chat_requests()) == before  # a refused call reaches no backend


# --- no double send -----------------------------------------------------------------------------
class StallingOllama(FakeOllama):
    """FakeOllama plus "fake-stall", which takes a chat request and never answers."""

    extra_models = ("fake-stall",)

    def answer_chat(self, handler: Any, body: dict[str, Any]) -> None:
        time.sleep(4)  # longer than the app's read timeout; then hang up
        handler.close_connection = True


def test_a_stalled_request_is_sent_once_with_the_production_retry_window() -> None:
    """The test apps set connect_retry_window=0; with the production default a request
    whose answer stalls past the read timeout must still reach the backend only once."""
    window = Settings.model_fields["connect_retry_window"].default
    assert window > 0
    with (
        StallingOllama() as fake,
        running_app(
            backend_url=fake.url,
            allowed_models=["fake-stall"],
            read_timeout=1.0,
            connect_retry_window=window,
        ) as url,
    ):
        _, history, _ = chat(Client(url, verbose=False), "Hi", model="fake-stall")
        assert "sent nothing for 1 s" in html.unescape(json.dumps(history)), history[-1]
        sent = [
            b for b in fake.chat_requests() if b.get("model") == "fake-stall" and b.get("messages")
        ]
        assert len(sent) == 1, len(sent)


def test_every_history_message_is_checked_like_a_new_one(fake: FakeOllama) -> None:
    with running_app(backend_url=fake.url, max_message_chars=1000, max_tokens_limit=64) as url:
        client = Client(url, verbose=False)
        before = len(fake.chat_requests())
        long_user = [msg("user", "x" * 1001), msg("assistant", "ok")]
        reason = rejection(chat(client, "Hi", long_user, model="fake-ok"))
        assert "Message 1 of the conversation (your message) is 1,001 characters" in reason
        long_reply = [msg("user", "Hi"), msg("assistant", "y" * (64 * 16 + 1))]
        reason = rejection(chat(client, "Hi", long_reply, model="fake-ok"))
        assert "Message 2 of the conversation (a reply)" in reason
        assert len(fake.chat_requests()) == before  # neither reached the backend
        _, history, _ = chat(client, "Hi", [msg("user", "x" * 1000)], model="fake-ok")
        assert eval_count(last_note(history)) == 8


INDENTED_REPLY = "\n\n    Indented answer\n      second line  \n"


def test_a_reply_gradio_reshapes_can_still_be_voted_on(tmp_path: Path) -> None:
    """Gradio's Chatbot hands a reply back without its leading blank lines and common
    indentation (inspect.cleandoc); the vote still matches the reply the server streamed."""
    with battle_app(INDENTED_REPLY, tmp_path) as client:
        final, _ = run_battle(client)
        assert "Thanks for voting" in vote(client, final[2], final[4], final[7])
