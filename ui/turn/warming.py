"""Cold starts, made honest: detect them, report their phase, retry, and pre-warm.

A serverless GPU backend scales to zero. The first request after idle waits for a GPU
instance to start (Cloud Run holds the request meanwhile), then for the model to load into
GPU memory. `stream_with_warmup` wraps one chat request and, until its first token, yields
`WarmingStatus` updates every `tick` seconds:

    phase "starting"  the backend does not answer its quick probe: an instance is starting
    phase "loading"   the backend answers but the model is not ready in memory: it is loading
    phase "busy"      429/503: every instance is busy; retrying with backoff
    phase "unreachable" the connection was refused; retried briefly (connect_retry_window)
    phase "ready"     the first token arrived (the banner goes away); for a backend that
                      reports no loads (an OpenAI-compatible server, which loads its model
                      at start) also when it answers again after "starting": that is all
                      it can tell (BackendClient.reports_loads)

The user's message is sent once. It is re-sent only after an answer that proves it was not
processed (connection refused, 429, 503), with exponential backoff, all within one overall
deadline (`settings.cold_start_deadline`; refused connections only within the shorter
`settings.connect_retry_window`, since Cloud Run holds cold requests instead of refusing).

`ColdStartTracker` learns the typical cold-start time from the cold starts this process has
seen. `Prewarmer` wakes the backend and loads a model in the background when a page opens or
the model changes: one in-flight warm-up per backend and model, nothing periodic.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import statistics
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

from ui.backend_access.client import BackendClient, ChatEvent, ModelInfo, ReplyDone
from ui.backend_access.status import BackendWatch
from ui.errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    ModelNotFound,
)

log = logging.getLogger(__name__)

DETECT_AFTER_S = 0.3  # the cold-start check starts when no token came this soon

Phase = Literal["starting", "loading", "busy", "unreachable", "ready"]


@dataclass(frozen=True)
class WarmingStatus:
    """Where a cold request stands (ui/view/render.py draws it as the warming banner)."""

    phase: Phase
    model: str
    elapsed: float  # seconds since the user sent the message
    typical: float  # typical cold start seen by this process (or the configured default)
    retry_in: float | None = None  # seconds until the next attempt (phase "busy")


class ColdStartTracker:
    """Typical cold-start duration: the median of the last cold starts this process saw."""

    def __init__(self, default: float, keep: int = 20) -> None:
        self.default = default
        self._seen: deque[float] = deque(maxlen=keep)

    def record(self, seconds: float) -> None:
        self._seen.append(seconds)

    @property
    def typical(self) -> float:
        return statistics.median(self._seen) if self._seen else self.default

    @property
    def observed(self) -> int:
        return len(self._seen)


# Errors after which the request certainly was not processed, so sending again is safe.
_RETRYABLE = (BackendBusy, BackendUnreachable)
# Seconds between attempts: 1, 2, 4, 8, 8, ... (the message retries and the pre-warm).
BACKOFF = wait_exponential(multiplier=1, max=8)


@dataclass(frozen=True)
class _Offsets:
    """Where expires_at - the server's clock can lie, from one or more /api/ps looks: the
    server read its clock between sending and receiving (monotonic times), so the offset
    is within [expires_at - received, expires_at - sent], widened by the slack."""

    low: float
    high: float

    @classmethod
    def of_look(cls, expires_at: float, sent: float, received: float, slack: float) -> _Offsets:
        return cls(expires_at - received - slack, expires_at - sent + slack)

    def common(self, other: _Offsets) -> _Offsets | None:
        low, high = max(self.low, other.low), min(self.high, other.high)
        return _Offsets(low, high) if low <= high else None


class PhaseDetector:
    """The cold phase of one request that is held without a first token, from evidence that
    holds for both Ollama lines the backend may run (0.24, the GPU image's pin, and 0.32+):

    - /api/version does not answer within `probe_timeout`: "starting" (Cloud Run holds
      requests while an instance starts);
    - it answers, /api/ps does not: "loading" (0.32.4+ holds /api/ps while a model loads);
    - /api/ps does not list the model: "loading" (it is not in memory);
    - /api/ps lists it with an expires_at at one constant offset from the server's clock
      (now + keep_alive) over FOLLOWING_LOOKS intervals: "loading" (0.24 lists a loading
      model, and both list a just-loaded one, with expires_at = now + keep_alive until a
      request on it finished: routes.go PsHandler "if v.expiresAt == epoch"; a model that
      has served a request keeps the expires_at of its last finish, sched.go
      processCompleted);
    - otherwise: warm (None).
    On a warm, busy backend other requests finish between looks and move expires_at too,
    to their finish time + keep_alive: its offset from the clock then shrinks by the time
    since the last finish, which varies from look to look. Each look bounds the offset to
    the span of its request (the server read its clock within it); "loading" needs one
    offset inside every look's span of the run, not only a small change from look to look
    (with short replies finishing just before each look, small changes add up). How sharp
    that is depends on the latency, so a look slower than MAX_LOOK_LATENCY_S proves nothing
    and starts the run anew: a missed "loading" costs the banner's wording, a false one
    would tell the user of a warm backend that a model loads.
    """

    FOLLOWING_LOOKS = 4  # intervals in a row at one offset from the clock: "loading"
    SLACK_S = 0.01  # clock resolution and scheduling, on each side of a look's span
    MAX_LOOK_LATENCY_S = 0.05  # a slower /api/ps answer is too blunt to tell

    def __init__(self, client: BackendClient, model: str) -> None:
        self.client = client
        self.model = model
        self._run: _Offsets | None = None  # the offsets all looks of the current run allow
        self._following = 0  # intervals in the current run

    async def detect(self) -> Phase | None:
        client = self.client
        try:
            await client.probe(self.model)
        except BackendBusy:
            return "busy"
        except (BackendTimeout, BackendUnreachable):
            return "starting"
        if not client.reports_loads(self.model):
            return None  # it answers; whether its model is loaded it cannot tell
        sent = time.monotonic()
        try:
            # Not asyncio.wait_for: on Python 3.11 it drops a cancel that comes in the loop
            # turn its answer does (python/cpython#86296; 3.12 rebuilt it on asyncio.timeout,
            # python/cpython#98518), and this check is cancelled at any moment (the first
            # token); it then kept looking forever, and the request waiting for it too.
            async with asyncio.timeout(client.settings.probe_timeout):
                running = await client.running_models()
        except TimeoutError:
            return "loading"  # the instance answered; its /api/ps waits for a load
        except BackendError:
            return "starting"
        received = time.monotonic()
        entry = next((m for m in running if m.name == self.model), None)
        if entry is None:
            self._run, self._following = None, 0
            return "loading"
        expires_at = _parse_time(entry.expires_at)
        if expires_at is None or received - sent > self.MAX_LOOK_LATENCY_S:
            self._run, self._following = None, 0
            return None
        look = _Offsets.of_look(expires_at.timestamp(), sent, received, self.SLACK_S)
        common = self._run.common(look) if self._run is not None else None
        if common is None:
            self._run, self._following = look, 0
        else:
            self._run, self._following = common, self._following + 1
        return "loading" if self._following >= self.FOLLOWING_LOOKS else None


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


class _Opening:
    """One message's way to its first event, in tenacity's task: the attempts (each sends
    the message and waits for the reply's first event, with the cold-start detector beside
    it), what the detector found (`phase`), and the retry waits to count down."""

    def __init__(
        self,
        client: BackendClient,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        tracker: ColdStartTracker,
        options: Mapping[str, Any] | None,
        keep_alive: str | float | None,
    ) -> None:
        self.client = client
        self.model = model
        self.tracker = tracker  # the typical cold start each status shows
        self.messages = messages
        self.options = options
        self.keep_alive = keep_alive
        self.t0 = time.monotonic()
        self.phase: Phase | None = None  # what the detector found; None = warm or unknown
        self.attempts = 0
        # A retry wait (its phase and when it ends), then None once the first event came.
        self.updates: asyncio.Queue[tuple[Phase, float] | None] = asyncio.Queue()

    def start(self) -> asyncio.Task[tuple[AsyncGenerator[ChatEvent, None], ChatEvent | None]]:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_RETRYABLE),
            wait=BACKOFF,
            stop=self._out_of_time,
            before_sleep=self._announce_wait,
            reraise=True,
        )
        task: asyncio.Task[tuple[AsyncGenerator[ChatEvent, None], ChatEvent | None]]
        task = asyncio.create_task(retrying(self._first_event))
        task.add_done_callback(lambda _: self.updates.put_nowait(None))
        return task

    def _out_of_time(self, state: RetryCallState) -> bool:
        """Stop rather than wait past the deadline (for refused connections, the shorter
        connect_retry_window: Cloud Run holds cold requests instead of refusing them)."""
        settings = self.client.settings
        window = settings.cold_start_deadline
        if not isinstance(_failure(state), BackendBusy):
            window = min(window, settings.connect_retry_window)
        return time.monotonic() - self.t0 + state.upcoming_sleep > window

    def _announce_wait(self, state: RetryCallState) -> None:
        waiting: Phase = "busy" if isinstance(_failure(state), BackendBusy) else "unreachable"
        self.phase = waiting
        self.updates.put_nowait((waiting, time.monotonic() + state.upcoming_sleep))

    async def _first_event(self) -> tuple[AsyncGenerator[ChatEvent, None], ChatEvent | None]:
        """One attempt: send the message and wait for the reply's first event."""
        self.attempts += 1
        chat = self.client.chat_stream(
            self.model, self.messages, options=self.options, keep_alive=self.keep_alive
        )
        detector = asyncio.create_task(_detect(self))
        try:
            return chat, await anext(chat, None)
        except BaseException:
            with contextlib.suppress(Exception):
                await chat.aclose()
            raise
        finally:
            detector.cancel()
            await asyncio.gather(detector, return_exceptions=True)

    async def statuses(self, tick: float) -> AsyncGenerator[WarmingStatus, None]:
        """What to show until the first event: the phase every `tick` seconds, and a retry
        wait as a countdown ("retrying in N s")."""
        retry_at: tuple[Phase, float] | None = None  # the countdown under way
        while True:
            left = retry_at[1] - time.monotonic() if retry_at else tick
            try:
                # asyncio.timeout, not wait_for: see PhaseDetector.detect (a lost cancel).
                async with asyncio.timeout(max(min(tick, left), 0)):
                    update = await self.updates.get()
            except TimeoutError:
                pass
            else:
                if update is None:
                    return
                retry_at = update
            if retry_at is not None and (left := retry_at[1] - time.monotonic()) > 0:
                yield self.status(retry_at[0], retry_in=left)
                continue
            retry_at = None
            if self.phase is not None:
                yield self.status(self.phase)

    def status(self, phase: Phase, retry_in: float | None = None) -> WarmingStatus:
        elapsed = time.monotonic() - self.t0
        return WarmingStatus(phase, self.model, elapsed, self.tracker.typical, retry_in)


async def stream_with_warmup(
    client: BackendClient,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tracker: ColdStartTracker,
    options: Mapping[str, Any] | None = None,
    keep_alive: str | float | None = None,
    tick: float = 1.0,
) -> AsyncIterator[WarmingStatus | ChatEvent]:
    """One chat reply with cold-start handling (see the module docstring).

    The request is sent at once; the cold-start check runs beside it, so a warm backend
    costs no extra round trip before the first token. Yields WarmingStatus updates while a
    cold backend gets ready, then the backend client's TokenDelta / ReplyDone events.
    Raises `ui.errors.BackendError`.

    Retries: tenacity sends the message again, with BACKOFF, only while no reply has begun
    and only after an error in _RETRYABLE; the wait runs in tenacity's task (`_Opening`),
    and this generator shows it as a countdown meanwhile.
    """
    opening = _Opening(
        client, model, messages, tracker=tracker, options=options, keep_alive=keep_alive
    )
    first_event = opening.start()
    chat: AsyncGenerator[ChatEvent, None] | None = None
    try:
        async for status in opening.statuses(tick):
            yield status
        try:
            chat, first = first_event.result()
        except BackendBusy as exc:
            raise BackendTimeout(
                f"The model backend did not become ready within "
                f"{client.settings.cold_start_deadline:.0f} s ({exc.user_message})"
            ) from exc
        if first is None:
            return
        first_token_after = time.monotonic() - opening.t0
        cold = opening.phase is not None or opening.attempts > 1
        if cold:
            _record_cold_start(tracker, model, first_token_after)
            yield opening.status("ready")
        elif _waited_for_a_load(first):  # an empty reply: its end came first
            _record_cold_start(tracker, model, first_token_after)
        yield first
        # Streaming: the rest is read right here, with no task hand-over or timer per
        # token. An error from here on is not retried: resending would answer twice.
        async for value in chat:
            if not cold and _waited_for_a_load(value):
                # A load the detector did not see (e.g. over before its second look):
                # the answer's load_duration says so.
                _record_cold_start(tracker, model, first_token_after)
            yield value
    finally:
        first_event.cancel()
        await asyncio.gather(first_event, return_exceptions=True)
        if chat is not None:
            with contextlib.suppress(Exception):
                await chat.aclose()  # closes the HTTP stream if the reply was cut short


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _waited_for_a_load(event: object) -> bool:
    return isinstance(event, ReplyDone) and event.stats.model_was_loaded


def _record_cold_start(tracker: ColdStartTracker, model: str, took: float) -> None:
    tracker.record(took)
    log.info("cold start of %s took %.1f s", model, took)


async def _detect(opening: _Opening) -> None:
    """Find the cold phase, and look again every second until the first token (which
    cancels this): "starting" moves on to "loading", and a model listed in /api/ps needs
    several looks to tell loading from warm (PhaseDetector). Once a cold phase was seen, a
    later "warm" shows as "loading": the model came up and the reply is on its way (a
    backend that reports no loads: "ready", the instance answers)."""
    # A warm backend usually sends its first token before this; the check is then
    # cancelled before it sends anything (no extra requests, and no connection dropped
    # mid-request). The first banner shows at the first tick anyway.
    await asyncio.sleep(DETECT_AFTER_S)
    detector = PhaseDetector(opening.client, opening.model)
    while True:
        found = await detector.detect()
        if found is not None:
            opening.phase = found
        elif opening.phase in ("starting", "busy"):
            reports_loads = opening.client.reports_loads(opening.model)
            opening.phase = "loading" if reports_loads else "ready"
        # About a second apart, not exactly: looks in step with periodic traffic could
        # see expires_at keep its distance to the clock (PhaseDetector).
        await asyncio.sleep(random.uniform(0.75, 1.25))


# What the pre-warm asks (for one token): the shortest prompt every chat template takes.
WARM_UP_MESSAGES = ({"role": "user", "content": "Hi"},)


class Prewarmer:
    """Wakes a backend and loads a model in the background (page load, model change), and
    tells the status watch (ui/backend_access/status.py) what it sees: held without an answer
    ("starting"), the model list (kept by the model directory), loading, ready, failed."""

    def __init__(
        self,
        client: BackendClient,
        keep_alive: str | float | None = None,
        *,
        watch: BackendWatch | None = None,
        remember: Callable[[list[ModelInfo]], None] | None = None,
    ) -> None:
        self.client = client
        self.keep_alive = keep_alive
        self.watch = watch
        self.remember = remember
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}

    def warm(self, model: str) -> bool:
        """Start warming `model` unless that is already under way. Returns True if started."""
        key = (self.client.url_for(model), model)
        task = self._inflight.get(key)
        if task is not None and not task.done():
            return False
        self._inflight[key] = asyncio.create_task(self._warm(model), name=f"prewarm {model}")
        return True

    async def _listed(self, deadline: float) -> None:
        """The cheap first request: on Cloud Run it starts an instance (and is held until
        the instance is up). Held longer than a probe: the instance is starting."""
        listing = asyncio.ensure_future(self.client.list_models())
        try:
            done, _ = await asyncio.wait({listing}, timeout=self.client.settings.probe_timeout)
            if not done and self.watch is not None:
                self.watch.waking()
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):  # not wait_for
                models = await listing
        finally:
            listing.cancel()
        if self.remember is not None:
            self.remember(models)
        if self.watch is not None:
            self.watch.answered()

    async def _load(self, model: str) -> None:
        """Load the model and generate one token: a runner's first evaluation after a load
        pays for setting itself up (0.3-1.2 s more for the first token than the next on
        the local engine, measured), so a load-only request would leave that to the
        user's first message."""
        stream = self.client.chat_stream(
            model, WARM_UP_MESSAGES, options={"num_predict": 1}, keep_alive=self.keep_alive
        )
        async with contextlib.aclosing(stream):
            async for _ in stream:
                pass

    async def _warm(self, model: str) -> None:
        settings = self.client.settings
        watch = self.watch
        t0 = time.monotonic()
        deadline = t0 + settings.cold_start_deadline

        async def attempt() -> None:
            await self._listed(deadline)
            if watch is not None and self.client.reports_loads(model):
                watch.loading(model)
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):  # not wait_for
                await self._load(model)
            if watch is not None:
                watch.ready(model)  # a cold start's length counts from "starting"

        def retrying_after(state: RetryCallState) -> None:
            failure = _failure(state)
            if watch is not None and isinstance(failure, BackendError):
                wait = state.upcoming_sleep
                watch.failed(f"{failure.user_message} Trying again in {wait:.0f} s.")

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_RETRYABLE),
            wait=BACKOFF,
            stop=stop_before_delay(settings.cold_start_deadline),
            before_sleep=retrying_after,
            reraise=True,
        )
        try:
            await retrying(attempt)
        except ModelNotFound as exc:
            # The picker's provisional choice is not on this backend: nothing to warm.
            log.info("pre-warm of %s skipped: %s", model, exc.user_message)
            if watch is not None:
                watch.answered()
        except (BackendError, TimeoutError) as exc:
            reason = getattr(exc, "user_message", None) or (
                f"The model backend did not get ready within {settings.cold_start_deadline:.0f} s."
            )
            log.info("pre-warm of %s did not finish: %s", model, reason)
            if watch is not None:
                watch.failed(reason)
        else:
            log.info("pre-warmed %s in %.1f s", model, time.monotonic() - t0)
