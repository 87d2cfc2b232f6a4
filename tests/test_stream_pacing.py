"""ui/turn/pacing.py: streamed events grouped into at most one page update per interval,
with nothing lost, reordered or held back at the start, the end, or an error."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest

from ui.turn.pacing import (
    HISTORY_AT_BASE,
    MAX_HISTORY_INTERVAL_S,
    READ_PACING_FROM,
    STREAMS_AT_BASE,
    interval_for_history,
    paced,
)

INTERVAL = 0.1


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5) -> None:
    """Poll `predicate` (an observable event) until it holds, at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


class Source:
    """An async event source like a backend's stream: event i is ready `gap` * (i + 1)
    seconds after the first read, whether or not anyone reads it meanwhile (as tokens
    collect in a socket), then optionally an error. Records when each event was taken and
    whether it was closed."""

    def __init__(self, count: int, gap: float, error: Exception | None = None) -> None:
        self.count, self.gap, self.error = count, gap, error
        self.closed = False
        self.sent = 0
        self.taken_at: list[float] = []
        self.started = 0.0

    async def events(self) -> AsyncIterator[int]:
        t0 = self.started = time.monotonic()
        try:
            for i in range(self.count):
                wait = t0 + self.gap * (i + 1) - time.monotonic()
                if wait > 0:  # an event that is already there is taken without waiting
                    await asyncio.sleep(wait)
                self.sent += 1
                self.taken_at.append(time.monotonic())
                yield i
            if self.error is not None:
                raise self.error
        finally:
            self.closed = True


class Fed:
    """An event source the test feeds by hand, so what is measured is the pacer's choices,
    not how fast a busy machine runs a schedule. Counts how often the reader asked for the
    next event."""

    _END = object()

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.asked = 0
        self.closed = False

    def feed(self, *items: int) -> None:
        for item in items:
            self.queue.put_nowait(item)

    def end(self) -> None:
        self.queue.put_nowait(self._END)

    async def events(self) -> AsyncIterator[int]:
        try:
            while True:
                self.asked += 1
                item = await self.queue.get()
                if item is self._END:
                    return
                assert isinstance(item, int)
                yield item
        finally:
            self.closed = True

    async def asked_for(self, count: int, timeout: float = 5.0) -> None:
        """Wait until the reader has asked for `count` events in all."""
        async with asyncio.timeout(timeout):
            while self.asked < count:
                await asyncio.sleep(0.001)


class Reader:
    """Runs `paced` over a source in a task; batches come out of `next()`, None at the end."""

    def __init__(self, events: AsyncIterator[int], interval: float) -> None:
        self.batches: asyncio.Queue[list[int] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(events, interval))

    async def _run(self, events: AsyncIterator[int], interval: float) -> None:
        async for batch in paced(events, interval):
            self.batches.put_nowait(batch)
        self.batches.put_nowait(None)

    async def next(self, timeout: float = 5.0) -> list[int] | None:
        return await asyncio.wait_for(self.batches.get(), timeout)


# Far longer than any test waits: a batch that comes at all came without waiting it out.
LONG = 30.0


class LoopLag:
    """The worst delay with which this event loop woke from short sleeps meanwhile: what a
    busy machine adds to any deadline here, measured rather than guessed."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.monotonic() - before - 0.005)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def batches_of(source: Source, interval: float = INTERVAL) -> list[tuple[float, list[int]]]:
    t0 = time.monotonic()
    return [(time.monotonic() - t0, batch) async for batch in paced(source.events(), interval)]


async def test_events_arriving_together_come_as_one_batch_without_delay() -> None:
    fed = Fed()
    fed.feed(*range(50))
    fed.end()
    reader = Reader(fed.events(), LONG)
    assert await reader.next() == list(range(50))  # the end is not held back
    assert await reader.next() is None


async def test_a_lone_stream_is_read_as_it_comes_grouped_and_its_end_shows_at_once() -> None:
    fed = Fed()
    reader = Reader(fed.events(), LONG)
    fed.feed(0)
    assert await reader.next() == [0]  # the first event is delivered alone, at once
    for i in range(1, 40):
        fed.feed(i)
        # Below READ_PACING_FROM streams the next event is asked for at once, not when
        # the batch is due (LONG from now).
        await fed.asked_for(i + 2)
    assert reader.batches.empty()  # within the interval: the events collect
    fed.end()
    assert await reader.next() == list(range(1, 40))  # one batch, in order, at the end
    assert await reader.next() is None


async def test_a_steady_stream_comes_at_most_one_batch_per_interval() -> None:
    source = Source(40, gap=0.01)  # ~0.4 s of events, 100 per second
    got = await batches_of(source)
    assert [e for _, batch in got for e in batch] == list(range(40))
    # A busy machine can only stretch the gaps: they are never shorter than the interval
    # (half of it here: the clock is read just after the pacer's own reading, and a busy
    # machine may pause between the two). The last batch, at the end, goes out at once.
    starts = [t for t, _ in got[:-1]]
    assert all(b - a >= INTERVAL / 2 for a, b in itertools.pairwise(starts)), starts
    assert max(len(b) for _, b in got) >= 5  # events were really grouped


def wakeups(source: Source) -> int:
    """How many times the source was read after a wait (events taken together count once)."""
    gaps = [b - a for a, b in zip(source.taken_at, source.taken_at[1:], strict=False)]
    return 1 + sum(1 for gap in gaps if gap > 0.003)


async def test_under_load_reading_is_paced_too_so_events_are_read_in_bursts() -> None:
    """From READ_PACING_FROM streams at once, mid-interval the reader waits for the batch to
    be due before it reads on: what arrived meanwhile is then taken in one go, not one
    wake-up per event; and no event waits much longer than the interval to be shown."""
    sources = [Source(40, gap=0.01) for _ in range(READ_PACING_FROM)]
    async with LoopLag() as lag:
        results = await asyncio.gather(*(batches_of(s) for s in sources))
    for source, got in zip(sources, results, strict=True):
        assert [e for _, batch in got for e in batch] == list(range(40))
        assert wakeups(source) <= 15, wakeups(source)  # ~2 per 0.1 s interval, not 40
        # (batches_of starts its clock a few microseconds before the source starts its own)
        shown_at = [source.started + t for t, batch in got for _ in batch]
        ready_at = [source.started + 0.01 * (i + 1) for i in range(40)]
        late = max(s - r for s, r in zip(shown_at, ready_at, strict=True))
        # The interval, plus what the machine added: the pacer's wake-up and the source's.
        assert late < INTERVAL + 0.05 + 2 * lag.worst, (late, lag.worst)


async def test_under_load_the_next_event_is_read_only_when_the_batch_is_due() -> None:
    others = [Fed() for _ in range(READ_PACING_FROM - 1)]
    idle_readers = [Reader(other.events(), LONG) for other in others]
    fed = Fed()
    reader = Reader(fed.events(), LONG)
    await fed.asked_for(1)
    fed.feed(0)
    assert await reader.next() == [0]  # the first batch still goes out at once
    fed.feed(1)
    await fed.asked_for(2)  # 1 was asked for ...
    while not fed.queue.empty():  # ... and taken
        await asyncio.sleep(0.001)
    # Every ready task gets many turns of the loop: a pacer that read on at once would
    # have asked for event 2 in the turn it took event 1 (no wall clock involved).
    for _ in range(50):
        await asyncio.sleep(0)
    assert fed.asked == 2, "read on mid-interval instead of waiting for the batch"
    for task in [reader.task, *(r.task for r in idle_readers)]:
        task.cancel()
    await asyncio.gather(reader.task, *(r.task for r in idle_readers), return_exceptions=True)
    assert fed.closed and all(other.closed for other in others)


async def test_slow_events_are_not_held_back() -> None:
    fed = Fed()
    reader = Reader(fed.events(), INTERVAL)
    for i in range(4):  # each one more than an interval after the previous batch
        fed.feed(i)
        assert await reader.next() == [i]
        await asyncio.sleep(2 * INTERVAL)
    fed.end()
    assert await reader.next() is None


async def test_an_error_comes_after_the_events_before_it() -> None:
    source = Source(3, gap=0.0, error=RuntimeError("backend failed"))
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="backend failed"):
        async for batch in paced(source.events(), INTERVAL):
            seen += batch
    assert seen == [0, 1, 2]


async def test_closing_early_closes_the_source() -> None:
    source = Source(1000, gap=0.01)
    stream = paced(source.events(), INTERVAL)
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    await until(lambda: source.closed, "the source to be closed")
    assert source.sent < 1000


@pytest.mark.parametrize("others", [0, READ_PACING_FROM], ids=["alone", "under-load"])
async def test_cancelling_the_reader_closes_the_source(others: int) -> None:
    """Also under load, where the reader may be waiting out an interval (Stop pressed)."""

    async def read(source: Source) -> None:
        async for _ in paced(source.events(), INTERVAL):
            pass

    background = [asyncio.create_task(read(Source(1000, gap=0.01))) for _ in range(others)]
    source = Source(1000, gap=0.01)
    task = asyncio.create_task(read(source))
    await until(lambda: source.sent >= 5, "the reader to be under way")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed and source.sent < 1000
    for other in background:
        other.cancel()
    await asyncio.gather(*background, return_exceptions=True)


async def test_the_interval_stretches_when_many_streams_are_paced_at_once() -> None:
    """Beyond STREAMS_AT_BASE streams, fewer (larger) batches per stream: the update work
    of the whole process stays about constant."""

    async def batches(streams: int) -> float:
        sources = [Source(30, gap=0.01) for _ in range(streams)]
        results = await asyncio.gather(*(batches_of(s, interval=0.05) for s in sources))
        assert all([e for _, b in r for e in b] == list(range(30)) for r in results)
        return sum(len(r) for r in results) / streams

    alone = await batches(1)
    crowded = await batches(4 * STREAMS_AT_BASE)
    assert crowded < 0.6 * alone, (alone, crowded)


def test_long_chats_are_updated_less_often_within_a_bound() -> None:
    """An update costs in proportion to the history's length: longer chats get
    proportionally fewer updates, never fewer than one per MAX_HISTORY_INTERVAL_S."""
    short = interval_for_history(2, 0.05)
    assert short == interval_for_history(HISTORY_AT_BASE, 0.05) == 0.05
    assert interval_for_history(4 * HISTORY_AT_BASE, 0.05) == pytest.approx(0.2)
    lengths = range(0, 50 * HISTORY_AT_BASE, 7)
    intervals = [interval_for_history(n, 0.05) for n in lengths]
    assert intervals == sorted(intervals)  # never more often for a longer chat
    assert max(intervals) == MAX_HISTORY_INTERVAL_S
