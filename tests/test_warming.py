"""Cold starts through the Cloud Run emulator: phases, retries, one send, pre-warm."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest

from devtools.cloudrun import EmulatorConfig, RunningEmulator, start_emulator
from devtools.testkit.fake_ollama import FakeOllama
from devtools.testkit.google_fakes import chat_posts
from devtools.testkit.procs import refusing_url
from ui.backend_access.client import BackendClient, ReplyDone, TokenDelta
from ui.errors import BackendError, BackendTimeout, BackendUnreachable
from ui.settings import Settings
from ui.turn.warming import (
    ColdStartTracker,
    PhaseDetector,
    Prewarmer,
    WarmingStatus,
    stream_with_warmup,
)
from ui.view.render import warming_html, warming_text

SMOL = "smollm2:135m"
MSGS = [{"role": "user", "content": "Say hello."}]
START_DELAY = 2.0


def settings_for(url: str, **extra: object) -> Settings:
    return Settings(
        backend_url=url, auth="none", probe_timeout=0.5, cold_start_deadline=60, **extra
    )


def scaled_to_zero(concurrency: int) -> RunningEmulator:
    """A scaled-to-zero backend: the first request waits START_DELAY plus engine start."""
    return start_emulator(
        EmulatorConfig(
            start_delay=START_DELAY,
            idle_timeout=60,
            concurrency=concurrency,
            queue_timeout=0.3,
            allow_unauthenticated=True,
            engine_args=("--num-parallel", str(concurrency)),
        )
    )


@pytest.fixture()
def cold_backend() -> Iterator[RunningEmulator]:
    """One request at a time, so a second one meets 429."""
    with scaled_to_zero(concurrency=1) as emu:
        yield emu


@pytest.fixture()
def cold_backend_4() -> Iterator[RunningEmulator]:
    """Ollama's usual concurrency of 4 per instance."""
    with scaled_to_zero(concurrency=4) as emu:
        yield emu


async def collect(client: BackendClient, tracker: ColdStartTracker, **kw: object) -> list:
    return [
        e
        async for e in stream_with_warmup(
            client, SMOL, MSGS, tracker=tracker, options={"num_predict": 6}, tick=0.25, **kw
        )
    ]


async def test_cold_start_reports_phases_then_streams_and_sends_once(
    cold_backend_4: RunningEmulator,
) -> None:
    cold_backend = cold_backend_4
    client = BackendClient(settings_for(cold_backend.url))
    tracker = ColdStartTracker(default=30.0)
    t0 = time.monotonic()
    events = await collect(client, tracker)
    took = time.monotonic() - t0

    statuses = [e for e in events if isinstance(e, WarmingStatus)]
    tokens = [e for e in events if isinstance(e, TokenDelta)]
    assert statuses[0].phase == "starting"
    assert statuses[0].typical == 30.0  # the default before any cold start was seen
    waiting = [s for s in statuses if s.phase != "ready"]
    assert len(waiting) >= 4  # ticks every 0.25 s during >= 2 s of start
    elapsed = [s.elapsed for s in waiting]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= START_DELAY - 0.5
    assert "GPU instance" in warming_text(waiting[0])
    assert f"{waiting[-1].elapsed:.0f} s" in warming_html(waiting[-1])
    # The banner's last word before the first token is "ready", then only tokens follow.
    ready_at = next(i for i, e in enumerate(events) if getattr(e, "phase", "") == "ready")
    assert all(not isinstance(e, WarmingStatus) for e in events[ready_at + 1 :])
    assert tokens and isinstance(events[-1], ReplyDone)
    assert chat_posts(cold_backend) == 1  # sent once, held by the emulator until ready
    assert tracker.observed == 1 and 0 < tracker.typical <= took

    # Warm now: no banner at all.
    again = await collect(client, tracker)
    assert not any(isinstance(e, WarmingStatus) for e in again)
    assert chat_posts(cold_backend) == 2
    await client.aclose()


async def test_busy_backend_retries_until_capacity_frees(cold_backend: RunningEmulator) -> None:
    client = BackendClient(settings_for(cold_backend.url))
    tracker = ColdStartTracker(default=10.0)
    await collect(client, tracker)  # wake it up
    # Occupy the only slot (concurrency 1) with a long reply; ask once it is streaming.
    # (150 tokens: seconds of work, well inside the 60 s deadline on a loaded machine.)
    streaming = asyncio.Event()
    long_reply = asyncio.create_task(
        collect_plain(client, "gemma3:270m", {"num_predict": 150}, streaming)
    )
    await asyncio.wait_for(streaming.wait(), timeout=60)
    events = await collect(client, tracker)
    phases = [e.phase for e in events if isinstance(e, WarmingStatus)]
    assert "busy" in phases
    busy = next(e for e in events if isinstance(e, WarmingStatus) and e.phase == "busy")
    assert "busy, retrying" in warming_text(busy)
    assert isinstance(events[-1], ReplyDone)
    assert cold_backend.state()["counters"].get("429", 0) >= 1
    await long_reply
    await client.aclose()


async def collect_plain(
    client: BackendClient, model: str, options: dict, streaming: asyncio.Event | None = None
) -> list:
    """A reply without warm-up handling (the base Gemma model rarely stops early);
    `streaming` is set at its first event."""
    msgs = [{"role": "user", "content": "Once upon a time"}]
    events = []
    async for event in client.chat_stream(model, msgs, options=options):
        events.append(event)
        if streaming is not None:
            streaming.set()
    return events


async def test_refused_connection_is_retried_briefly_then_named() -> None:
    with refusing_url() as url:
        await _refused_then_named(url)


async def _refused_then_named(url: str) -> None:
    client = BackendClient(settings_for(url).model_copy(update={"connect_retry_window": 4.0}))
    t0 = time.monotonic()
    seen: list[object] = []
    with pytest.raises(BackendUnreachable) as err:
        async for event in stream_with_warmup(
            client, SMOL, MSGS, tracker=ColdStartTracker(5), tick=0.25
        ):
            seen.append(event)
    assert 3.0 < time.monotonic() - t0 < 7  # retried after 1 s and 2 s, then gave up
    assert "cannot be reached" in err.value.user_message
    retrying = [e for e in seen if isinstance(e, WarmingStatus) and e.phase == "unreachable"]
    assert retrying and "connection refused), retrying in" in warming_text(retrying[0])
    await client.aclose()


async def test_cold_start_deadline_bounds_busy_retries(cold_backend: RunningEmulator) -> None:
    """429 until the deadline: a clear error naming the deadline, not an endless wait."""
    client = BackendClient(settings_for(cold_backend.url))
    await collect(client, ColdStartTracker(5))  # wake it up
    hog = asyncio.create_task(collect_plain(client, "gemma3:270m", {"num_predict": 2000}))
    deadline = time.monotonic() + 30
    while cold_backend.state()["in_flight"] < 1:  # the hog holds the one request slot
        assert time.monotonic() < deadline, "the long request never reached the backend"
        await asyncio.sleep(0.05)
    short = BackendClient(
        settings_for(cold_backend.url).model_copy(update={"cold_start_deadline": 2.5})
    )
    with pytest.raises(BackendTimeout) as err:
        await collect(short, ColdStartTracker(5))
    assert "did not become ready within 2 s" in err.value.user_message
    hog.cancel()
    await asyncio.gather(hog, return_exceptions=True)
    await short.aclose()
    await client.aclose()


async def test_prewarm_makes_the_first_message_warm(cold_backend_4: RunningEmulator) -> None:
    cold_backend = cold_backend_4
    client = BackendClient(settings_for(cold_backend.url))
    warmer = Prewarmer(client)
    assert warmer.warm(SMOL) is True
    assert warmer.warm(SMOL) is False  # one warm-up in flight per model, not a stampede
    deadline = time.monotonic() + 60
    while SMOL not in {m.name for m in await _running(client)}:
        assert time.monotonic() < deadline, "pre-warm did not load the model"
        await asyncio.sleep(0.3)
    events = await collect(client, ColdStartTracker(30))
    assert not any(isinstance(e, WarmingStatus) for e in events)
    assert chat_posts(cold_backend) == 2  # the load-only request and the message
    await client.aclose()


async def _running(client: BackendClient) -> list:
    try:
        return await client.running_models()
    except Exception:
        return []


# --- the retry rule, against a protocol-level fake Ollama --------------------------------
async def test_busy_answers_are_retried_on_the_backoff_schedule_then_named() -> None:
    """503 every time: sent at 0, 1 and 3 s (waits of 1 and 2 s), then a wait of 4 s would
    pass the 4 s deadline, so it stops there and says why; each wait counts down."""
    with FakeOllama() as fake:
        client = BackendClient(
            settings_for(fake.url).model_copy(update={"cold_start_deadline": 4.0})
        )
        seen: list[object] = []
        with pytest.raises(BackendTimeout, match="did not become ready within 4 s"):
            async for event in stream_with_warmup(
                client, "fake-503", MSGS, tracker=ColdStartTracker(5), tick=0.25
            ):
                seen.append(event)
        await client.aclose()
        assert len(fake.chat_requests()) == 3
    waits = [e for e in seen if isinstance(e, WarmingStatus) and e.retry_in]
    assert waits
    assert all(e.phase == "busy" and "busy, retrying in" in warming_text(e) for e in waits)
    assert not [e for e in seen if not isinstance(e, WarmingStatus)], "no reply events"
    # Two countdowns: from 1 s and from 2 s, each going down tick by tick.
    countdown = [e.retry_in for e in waits if e.retry_in is not None]
    starts = [countdown[0]] + [b for a, b in itertools.pairwise(countdown) if b > a]
    assert len(starts) == 2 and starts[0] <= 1.0 < starts[1] <= 2.0, countdown


async def test_a_reply_broken_after_its_first_token_is_not_sent_again() -> None:
    """Part of the reply arrived, so the backend processed the message: no second send."""
    with FakeOllama() as fake:
        client = BackendClient(settings_for(fake.url))
        seen: list[object] = []
        with pytest.raises(BackendError):
            async for event in stream_with_warmup(
                client, "fake-drop", MSGS, tracker=ColdStartTracker(5), tick=0.25
            ):
                seen.append(event)
        await client.aclose()
        assert len(fake.chat_requests()) == 1
    assert [e for e in seen if isinstance(e, TokenDelta)], "the first words arrived"


def _ours(task: asyncio.Task[object]) -> bool:
    """A task running this project's code (not a library's helper task)."""
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and "/ui/" in code.co_filename


async def test_the_cold_start_check_stops_when_cancelled_as_an_answer_arrives() -> None:
    """The check runs beside a request until its first token, which cancels it, and the
    request waits for it to stop. Python 3.11's asyncio.wait_for returned an inner answer
    that came in the same loop turn as the cancel and dropped the cancel: the check went on
    looking every second, and the reply's first token never reached the page."""
    with FakeOllama() as fake:
        client = BackendClient(settings_for(fake.url))
        mine = asyncio.current_task()
        hooked = 0
        for _ in range(20):
            check = asyncio.create_task(PhaseDetector(client, SMOL).detect())
            while not check.done():
                steps = [t for t in asyncio.all_tasks() if t not in (check, mine) and _ours(t)]
                if steps:  # cancel the check the moment a step of it ends
                    steps[0].add_done_callback(lambda _, c=check: c.cancel())
                    hooked += 1
                    break
                await asyncio.sleep(0)
            await asyncio.wait({check}, timeout=5)
            assert check.done() and (check.cancelled() or not hooked), "the cancel was lost"
        # And a cancel while it waits for the backend's answer stops it too.
        check = asyncio.create_task(PhaseDetector(client, SMOL).detect())
        while not any(path == "/api/version" for _, path, _ in fake.requests):
            await asyncio.sleep(0.001)
        check.cancel()
        await asyncio.wait({check}, timeout=5)
        assert check.cancelled()
        await client.aclose()
