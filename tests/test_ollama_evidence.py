"""What the UI reads from Ollama's answers holds for the pinned Ollama and the newer line
(issue 16): cold-start phases, load_duration, pre-token 503s, and keep_alive left alone.

Driven against the real engine in both /api/ps modes: "list" (the session engine, as the
pinned Ollama 0.24.0 lists a loading model) and "wait" (as Ollama 0.32.4+ holds /api/ps
until a load is done). See tests/test_engine_ollama.py for the Ollama source of each.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from gradio_client import Client

from devtools.testkit.chat_app import chat_args, running_app
from devtools.testkit.fake_ollama import FakeOllama
from devtools.testkit.procs import Proc, refusing_url, start_engine
from ui.backend_access.client import BackendClient, ReplyDone, TokenDelta
from ui.backend_access.status import BackendWatch, GpuPrice
from ui.errors import BackendBusy
from ui.settings import Settings
from ui.turn.figures import ReplyFigures
from ui.turn.warming import (
    ColdStartTracker,
    PhaseDetector,
    Prewarmer,
    WarmingStatus,
    stream_with_warmup,
)
from ui.view.notes import stats_note

GEMMA = "gemma3:270m"
SMOL = "smollm2:135m"
HELLO = [{"role": "user", "content": "Say hello"}]
TWO = {"num_predict": 2, "temperature": 0}


@pytest.fixture(scope="module")
def forever_hold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file exists, forever_engine's loads do not finish (see `load_hold`)."""
    return tmp_path_factory.mktemp("forever") / "hold-loads"


@pytest.fixture(scope="module")
def forever_engine(forever_hold: Path) -> Iterator[str]:
    """The GPU image's settings (OLLAMA_KEEP_ALIVE=-1), one slot and a queue of one, and
    /api/ps held during loads as in Ollama 0.32.4+."""
    proc: Proc
    proc, url = start_engine(
        None,
        "--keep-alive",
        "-1",
        "--num-parallel",
        "1",
        "--max-queue",
        "1",
        "--ps-while-loading",
        "wait",
        "--hold-loads-while",
        str(forever_hold),
        name="engine-forever",
    )
    try:
        yield url
    finally:
        proc.stop()


def client_for(url: str, **extra: object) -> BackendClient:
    return BackendClient(
        Settings(backend_url=url, auth="none", probe_timeout=0.5, cold_start_deadline=60, **extra)
    )


async def _unload(url: str, model: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        await c.post("/api/chat", json={"model": model, "messages": [], "keep_alive": 0})


async def _phases_during_a_load(url: str, hold: Path) -> list[str | None]:
    """PhaseDetector's findings, looked up every 0.1 s while a request loads Gemma, then
    twice after the model has served it. The load is held (the engine's --hold-loads-while)
    until the detector has said "loading" or 30 s of looks have passed, so the outcome does
    not depend on how fast this machine loads a model."""
    await _unload(url, GEMMA)
    client = client_for(url)
    detector = PhaseDetector(client, GEMMA)
    hold.touch()
    try:
        chat = asyncio.ensure_future(_plain_reply(client, GEMMA))
        seen: list[str | None] = []
        for _ in range(300):
            seen.append(await detector.detect())
            if seen[-1] == "loading" or chat.done():
                break
            await asyncio.sleep(0.1)
    finally:
        hold.unlink(missing_ok=True)
    await chat
    seen += ["|", await detector.detect()]
    await asyncio.sleep(0.2)
    seen.append(await detector.detect())
    await client.aclose()
    return seen


async def _plain_reply(client: BackendClient, model: str) -> list:
    return [e async for e in client.chat_stream(model, HELLO, options=TWO)]


async def test_loading_then_warm_when_ps_lists_loading_models(engine: str, load_hold: Path) -> None:
    seen = await _phases_during_a_load(engine, load_hold)
    during, after = seen[: seen.index("|")], seen[seen.index("|") + 1 :]
    assert "loading" in during, seen
    # Served a request: expires_at is set (the look across that change may still see it
    # move), then stays put: warm.
    assert after[-1] is None, seen


async def test_loading_then_warm_when_ps_waits_for_loads(
    forever_engine: str, forever_hold: Path
) -> None:
    seen = await _phases_during_a_load(forever_engine, forever_hold)
    during, after = seen[: seen.index("|")], seen[seen.index("|") + 1 :]
    assert "loading" in during, seen
    assert after[-1] is None, seen


async def test_replies_finishing_between_looks_are_not_a_load(engine: str) -> None:
    """On a warm, busy backend other users' replies end between the looks and move the
    model's expires_at (sched.go sets it to finish time + keep_alive, v0.24.0), but not at
    a constant distance to the clock, as a loading model's is: still warm, no banner."""
    client = client_for(engine)
    await _plain_reply(client, SMOL)  # loaded and served: expires_at is set

    async def traffic() -> None:
        lengths = random.Random(7)  # other users' replies: of any length, one after another
        while True:
            options = {"num_predict": lengths.randint(4, 48)}
            [e async for e in client.chat_stream(SMOL, HELLO, options=options)]

    others = asyncio.create_task(traffic())
    detector = PhaseDetector(client, SMOL)
    seen = []
    try:
        for _ in range(8):
            seen.append(await detector.detect())
            await asyncio.sleep(0.3)
    finally:
        others.cancel()
        await asyncio.gather(others, return_exceptions=True)
        await client.aclose()
    assert seen == [None] * 8, seen


class ScriptedPs(FakeOllama):
    """/api/ps lists `fake-ok` with the expires_at `expiry(look)` gives for the look-th
    request, answered after `delay` seconds."""

    def __init__(self, expiry: Callable[[int], float], delay: float = 0.0) -> None:
        super().__init__()
        self.expiry, self.delay, self.looks = expiry, delay, 0
        self._looks_lock = threading.Lock()

    def _handler_class(self) -> type:
        base: type = super()._handler_class()
        fake = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:
                if self.path != "/api/ps":
                    super().do_GET()
                    return
                time.sleep(fake.delay)
                with fake._looks_lock:
                    look, fake.looks = fake.looks, fake.looks + 1
                when = dt.datetime.fromtimestamp(fake.expiry(look), dt.UTC)
                model = ollama.ProcessResponse.Model(name="fake-ok", model="fake-ok")
                model.expires_at = when
                self._json(200, ollama.ProcessResponse(models=[model]))

        return Handler


async def _looks(fake: ScriptedPs, n: int) -> list[str | None]:
    client = client_for(fake.url)
    detector = PhaseDetector(client, "fake-ok")
    seen: list[str | None] = []
    for _ in range(n):
        seen.append(await detector.detect())
        await asyncio.sleep(0.1)
    await client.aclose()
    return seen


KEEP_ALIVE_S = 300.0


async def test_a_loading_model_is_told_by_its_constant_offset_from_the_clock() -> None:
    """Ollama 0.24 lists a loading model with expires_at = now + keep_alive (routes.go
    PsHandler, "if v.expiresAt == epoch"): "loading" after FOLLOWING_LOOKS intervals."""
    fake = ScriptedPs(lambda _: time.time() + KEEP_ALIVE_S)
    with fake:
        seen = await _looks(fake, PhaseDetector.FOLLOWING_LOOKS + 2)
    needed = PhaseDetector.FOLLOWING_LOOKS
    assert seen == [None] * needed + ["loading", "loading"], seen


async def test_offsets_that_creep_look_after_look_are_not_a_load() -> None:
    """Replies that end a little longer before each look (15 ms more each time): every
    step is within a look's precision, the whole run is not, so no "loading"."""
    fake = ScriptedPs(lambda look: time.time() - 0.015 * look + KEEP_ALIVE_S)
    with fake:
        seen = await _looks(fake, 8)
    assert seen == [None] * 8, seen


async def test_slow_looks_prove_nothing() -> None:
    """A /api/ps answer slower than MAX_LOOK_LATENCY_S bounds the offset too loosely to
    tell a loading model from a busy one: no "loading" from such looks."""
    delay = PhaseDetector.MAX_LOOK_LATENCY_S * 1.5
    fake = ScriptedPs(lambda _: time.time() + KEEP_ALIVE_S, delay=delay)
    with fake:
        seen = await _looks(fake, PhaseDetector.FOLLOWING_LOOKS + 2)
    assert seen == [None] * (PhaseDetector.FOLLOWING_LOOKS + 2), seen


async def test_no_answer_is_starting() -> None:
    with refusing_url() as url:
        client = client_for(url)
        assert await PhaseDetector(client, GEMMA).detect() == "starting"
        await client.aclose()


async def test_an_on_demand_load_counts_as_a_cold_start(engine: str) -> None:
    """Whatever /api/ps showed, the answer's load_duration tells the UI a load happened."""
    await _unload(engine, GEMMA)
    client = client_for(engine)
    tracker = ColdStartTracker(default=30.0)
    events = [
        e async for e in stream_with_warmup(client, GEMMA, HELLO, tracker=tracker, options=TWO)
    ]
    assert isinstance(events[-1], ReplyDone) and events[-1].stats.model_was_loaded
    assert tracker.observed == 1
    warm = [e async for e in stream_with_warmup(client, GEMMA, HELLO, tracker=tracker, options=TWO)]
    assert isinstance(warm[-1], ReplyDone) and not warm[-1].stats.model_was_loaded
    assert not any(isinstance(e, WarmingStatus) for e in warm)
    assert tracker.observed == 1
    await client.aclose()


async def test_stats_line_tells_a_load_from_a_loaded_model(engine: str) -> None:
    """Real load_duration values: never 0, a fraction of a millisecond when loaded; the
    stats line says "model load" only after a real load."""
    await _unload(engine, SMOL)
    client = client_for(engine)
    cold = (await _plain_reply(client, SMOL))[-1].stats
    warm = (await _plain_reply(client, SMOL))[-1].stats
    assert cold.model_was_loaded and not warm.model_was_loaded
    assert warm.load_seconds is not None and warm.load_seconds > 0
    assert "model load" in stats_note(ReplyFigures(load_s=cold.load_seconds))["metadata"]["title"]
    assert (
        "model load" not in stats_note(ReplyFigures(load_s=warm.load_seconds))["metadata"]["title"]
    )
    await client.aclose()


async def test_pre_token_503_is_busy_and_resent_until_served(forever_engine: str) -> None:
    """The engine's queue-full 503 comes as a status before any text: the UI calls it busy,
    names the full queue, and sends the message again after a backoff."""
    await _unload(forever_engine, GEMMA)
    client = client_for(forever_engine)
    body = {"model": GEMMA, "messages": HELLO, "stream": False, "options": TWO}
    async with httpx.AsyncClient(base_url=forever_engine, timeout=120) as raw:
        fill = [asyncio.ensure_future(raw.post("/api/chat", json=body)) for _ in range(2)]
        await asyncio.sleep(0.2)  # one loads the model, one waits in the queue of one
        with pytest.raises(BackendBusy) as err:
            await _plain_reply(client, GEMMA)
        assert err.value.status_code == 503 and "request queue is full" in err.value.user_message
        await asyncio.gather(*fill)
    # Through the warm-up path the same 503 is retried until the load is done.
    await _unload(forever_engine, GEMMA)
    async with httpx.AsyncClient(base_url=forever_engine, timeout=120) as raw:
        fill = [asyncio.ensure_future(raw.post("/api/chat", json=body)) for _ in range(2)]
        await asyncio.sleep(0.2)
        events = [
            e
            async for e in stream_with_warmup(
                client, GEMMA, HELLO, tracker=ColdStartTracker(5), options=TWO, tick=0.25
            )
        ]
        await asyncio.gather(*fill)
    assert any(isinstance(e, WarmingStatus) and e.phase == "busy" for e in events)
    assert any(isinstance(e, TokenDelta) for e in events) and isinstance(events[-1], ReplyDone)
    await client.aclose()


def test_the_ui_never_overrides_the_images_keep_alive(forever_engine: str) -> None:
    """The GPU image keeps models forever (OLLAMA_KEEP_ALIVE=-1); a keep_alive in any request
    would stick to the model (Ollama sched.go useLoadedRunner) and unload it when idle. After
    the real app pre-warms and chats, the engine still keeps every model forever."""
    raw = ollama.Client(host=forever_engine, timeout=60)
    for model in (GEMMA, SMOL):
        raw.chat(model=model, messages=[], keep_alive=0)  # unloaded
    with running_app(backend_url=forever_engine, rate_limit_per_minute=1000) as url:
        app = Client(url, verbose=False)
        app.predict(GEMMA, api_name="/prewarm")
        app.predict(*chat_args("Hi", model=SMOL, max_tokens=2), api_name="/chat")
        app.predict(*chat_args("Hi", model=GEMMA, max_tokens=2), api_name="/chat")
    asyncio.run(_prewarm(forever_engine, SMOL))
    running = {m.model: m.expires_at for m in raw.ps().models}
    assert set(running) == {GEMMA, SMOL}
    assert all(when is not None and when.year >= 2318 for when in running.values()), running


async def _prewarm(url: str, model: str) -> None:
    client = client_for(url)
    # The pre-warm tells its watch the model is ready once its load request has ended
    # (when Ollama sets expiresAt).
    watch = BackendWatch(GpuPrice(1.0, 1), idle_timeout=3600, typical=lambda: 5.0)
    assert Prewarmer(client, watch=watch).warm(model)
    async with asyncio.timeout(30):
        while (watch.state, watch.model) != ("ready", model):
            await asyncio.sleep(0.05)
    await client.aclose()
