"""Fair share of the backend between clients, through the real Gradio API (raw HTTP for
what no well-behaved client does): a job whose event stream is never opened, or is dropped,
ends and gives its stream budget back; a model's slots go round-robin by client, so one
client's many queued streams do not push another client's reply back.

The backend is a protocol-level fake Ollama (devtools/testkit/fake_ollama.py) with parallel
slots like OLLAMA_NUM_PARALLEL; what it saw (requests, hang-ups, the order replies got a
slot) is the evidence.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from gradio_client import Client

from devtools.testkit.chat_app import (
    UNCHANGED,
    chat,
    chat_args,
    first_reply_after,
    rejection,
    running_app,
)
from devtools.testkit.fake_ollama import FakeOllama
from ui.turn.fair_slots import FairSlots

pytestmark = pytest.mark.timeout(120)

GRACE = 1.0  # the event stream's grace period in these apps (production: 5 s)
TOKEN_S = 2.0  # seconds between a slow reply's tokens


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until it holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


class RawQueue:
    """Gradio's queue over plain HTTP: join an event, open (or never open) its stream."""

    def __init__(self, base_url: str) -> None:
        self.config = httpx.get(base_url + "/config", timeout=10).json()
        self.prefix = base_url + self.config.get("api_prefix", "/gradio_api")

    def fn_index(self, api_name: str) -> int:
        for i, dep in enumerate(self.config["dependencies"]):
            if dep.get("api_name") == api_name:
                return int(dep.get("id", i))
        raise KeyError(api_name)

    def join(self, api_name: str, data: tuple[Any, ...], session: str) -> str:
        body = {"data": list(data), "fn_index": self.fn_index(api_name), "session_hash": session}
        answer = httpx.post(self.prefix + "/queue/join", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["event_id"])

    def read_then_hang_up(self, session: str, seen: Callable[[dict[str, Any]], bool]) -> None:
        """Open the session's event stream, read messages until `seen` says yes, hang up."""
        params = {"session_hash": session}
        with (
            httpx.Client(timeout=30) as http,
            http.stream("GET", self.prefix + "/queue/data", params=params) as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("data:") and seen(json.loads(line[5:])):
                    return


def budget_is_free(client: Client) -> bool:
    """Whether this client may start a reply (LLM_STREAMS_PER_CLIENT=1 in these apps): a
    one-token chat is accepted, or refused because a reply is still being written."""
    outputs = chat(client, "Hi", model="fake-ok", max_tokens=1)
    if outputs[1] != UNCHANGED:
        return True
    assert "at most 1 at once" in rejection(outputs)
    return False


@pytest.fixture
def slow() -> Iterator[FakeOllama]:
    with FakeOllama(slow_delay=TOKEN_S) as server:  # 8 tokens: a 16 s reply
        yield server


def long_chat(text: str) -> tuple[Any, ...]:
    return chat_args(text, model="fake-slow", max_tokens=8)


def test_a_job_whose_event_stream_is_never_opened_is_cancelled(slow: FakeOllama) -> None:
    """A script joins the queue and never reads its events. The job ends within the grace
    period without reaching the backend, and the client's stream budget comes back."""
    with running_app(
        backend_url=slow.url,
        streams_per_client=1,
        rate_limit_per_minute=1000,
        event_stream_grace=GRACE,
    ) as url:
        RawQueue(url).join("chat", long_chat("Never read"), session=uuid.uuid4().hex)
        client = Client(url, verbose=False)
        # Today the unread job holds the budget for its whole 16 s reply.
        wait_until(lambda: budget_is_free(client), GRACE + 4, "the budget came back")
        prompts = [str(body["messages"][-1]["content"]) for body in slow.chat_requests()]
        assert "Never read" not in prompts  # the backend never generated for it


def test_a_job_whose_event_stream_is_dropped_is_cancelled(slow: FakeOllama) -> None:
    """The client reads its stream until the reply flows, then hangs up: the backend request
    is closed at once (the model stops generating), not at the reply's next token, when
    Gradio would notice, and the stream budget comes back."""
    with running_app(
        backend_url=slow.url,
        streams_per_client=1,
        rate_limit_per_minute=1000,
        event_stream_grace=GRACE,
    ) as url:
        raw = RawQueue(url)
        session = uuid.uuid4().hex
        raw.join("chat", long_chat("Drop me"), session=session)
        # The reply is flowing: hang up.
        raw.read_then_hang_up(
            session, lambda m: m["msg"] == "process_generating" and "word0" in json.dumps(m)
        )
        hung_up = wait_until(lambda: slow.hangups == 1, 4 * TOKEN_S, "the backend saw the hang-up")
        assert hung_up < TOKEN_S / 2, hung_up
        client = Client(url, verbose=False)
        wait_until(lambda: budget_is_free(client), 4, "the budget came back")


def test_a_reply_dropped_while_waiting_for_a_slot_is_never_sent(slow: FakeOllama) -> None:
    """With the model's one slot taken, a client opens its stream, sees its message shown
    (its reply waits for the slot) and hangs up: the reply leaves the line unsent, and the
    slot goes to the next reply when the first one ends."""
    with running_app(backend_url=slow.url, model_slots=1, event_stream_grace=GRACE) as url:
        first = Client(url, verbose=False)
        running = first.submit(*chat_args("First", model="fake-slow", max_tokens=2),
                               api_name="/chat")  # fmt: skip
        wait_until(lambda: "First" in slow.generated, 30, "the first reply took the slot")
        raw = RawQueue(url)
        session = uuid.uuid4().hex
        raw.join("chat", long_chat("Dropped waiter"), session=session)
        # Its message is shown: the reply waits for the slot; hang up.
        raw.read_then_hang_up(session, lambda m: "Dropped waiter" in json.dumps(m))
        running.result(timeout=30)
        chat(first, "After", model="fake-slow", max_tokens=1)
        assert "After" in slow.generated
        prompts = [str(body["messages"][-1]["content"]) for body in slow.chat_requests()]
        assert "Dropped waiter" not in prompts, prompts


def test_replies_streamed_by_gradios_rest_api_are_read_too(slow: FakeOllama) -> None:
    """POST /call/chat, then GET /call/chat/<event id> (the API page's curl recipe): that
    stream counts as reading the events, so a reply longer than the grace period ends
    with all its tokens."""
    with running_app(backend_url=slow.url, event_stream_grace=GRACE) as url:
        prefix = url + RawQueue(url).config.get("api_prefix", "/gradio_api")
        body = {"data": list(chat_args("Via REST", model="fake-slow", max_tokens=2))}
        event_id = httpx.post(prefix + "/call/chat", json=body, timeout=10).json()["event_id"]
        answer = httpx.get(f"{prefix}/call/chat/{event_id}", timeout=30).text
        assert "event: complete" in answer and "word1" in answer, answer[-500:]
        assert slow.hangups == 0


def test_a_models_slots_go_round_robin_by_client() -> None:
    """One client queues ten long replies on a model with two slots (both taken); another
    client's short reply gets the next free slot instead of waiting behind all ten."""
    slots, hog_jobs = 2, 10
    with (
        FakeOllama(slow_delay=0.25, parallel=slots) as fake,  # 8 tokens: a 2 s reply
        running_app(
            backend_url=fake.url,
            rate_limit_per_minute=1000,
            trusted_proxies="127.0.0.1",  # the X-Forwarded-For below names two clients
            streams_per_client=hog_jobs,  # the per-client budget is not what is tested here
            model_slots=slots,
        ) as url,
    ):
        hog = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.66"})
        other = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.7"})
        jobs = [hog.submit(*long_chat(f"Long {i}"), api_name="/chat") for i in range(hog_jobs)]
        # Every hog job is streaming (it showed its message) and the slots are full.
        wait_until(lambda: all(job.outputs() for job in jobs), 30, "the hog's jobs started")
        wait_until(lambda: len(fake.generated) >= slots, 30, "the slots filled")
        started, served = time.monotonic(), len(fake.generated)
        mine = other.submit(*chat_args("Hi", model="fake-slow", max_tokens=1), api_name="/chat")
        waited = first_reply_after(mine, started, timeout=30)
        # The next free slot went to the other client (normally index `served`; a loaded
        # machine may let a round of hog replies in before its request arrives), not the
        # slot after all ten hog replies.
        assert fake.generated.index("Hi") <= served + slots, (served, fake.generated)
        assert waited < 6, waited  # a hog reply (2 s) or two at most, not five rounds
        for job in jobs:
            job.result(timeout=60)
        # While they waited, the hog's replies said so (the banner above the chat).
        banners = [html.unescape(str(out[2])) for job in jobs for out in job.outputs()]
        assert any("Waiting for fake-slow: its 2 slots are busy" in b for b in banners)


# --- the slots on their own --------------------------------------------------------------
async def _take(slots: FairSlots, model: str, client: str, order: list[str]) -> None:
    async with slots.slot(model, client):
        order.append(client)
        await asyncio.sleep(0)


def test_fair_slots_serve_the_client_holding_fewest_first() -> None:
    async def scenario() -> list[str]:
        slots = FairSlots(capacity=1)
        order: list[str] = []
        async with slots.slot("m", "hog"):
            waiting = [asyncio.create_task(_take(slots, "m", "hog", order)) for _ in range(3)]
            await asyncio.sleep(0)
            waiting.append(asyncio.create_task(_take(slots, "m", "other", order)))
            await asyncio.sleep(0)
            assert slots.waiting("m") == 4
        await asyncio.gather(*waiting)
        return order

    # "other" arrived last and holds none; the hog's waiting replies alternate with nobody.
    assert asyncio.run(scenario()) == ["other", "hog", "hog", "hog"]


def test_a_cancelled_waiter_gives_its_place_up() -> None:
    async def scenario() -> tuple[list[str], int]:
        slots = FairSlots(capacity=1)
        order: list[str] = []
        async with slots.slot("m", "a"):
            async with asyncio.timeout(5), slots.slot("n", "a"):  # another model: free
                assert (slots.held("m"), slots.held("n")) == (1, 1)
            gone = asyncio.create_task(_take(slots, "m", "b", order))
            stays = asyncio.create_task(_take(slots, "m", "c", order))
            await asyncio.sleep(0)
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)
        await stays
        return order, slots.held("m")

    assert asyncio.run(scenario()) == (["c"], 0)


def test_a_waiter_cancelled_just_as_it_is_served_passes_the_slot_on() -> None:
    async def scenario() -> tuple[list[str], int]:
        slots = FairSlots(capacity=1)
        order: list[str] = []
        holding = slots.slot("m", "a")
        await holding.__aenter__()
        served = asyncio.create_task(_take(slots, "m", "b", order))
        later = asyncio.create_task(_take(slots, "m", "c", order))
        await asyncio.sleep(0)
        await holding.__aexit__(None, None, None)  # "b" is granted the slot...
        served.cancel()  # ...and cancelled before it runs: the slot goes on to "c"
        await asyncio.gather(served, return_exceptions=True)
        async with asyncio.timeout(5):  # a slot lost with "b" would leave "c" waiting
            await later
        return order, slots.held("m")

    assert asyncio.run(scenario()) == (["c"], 0)
