"""Pace a stream of events into batches, at most one batch per interval.

Every page update costs the UI process far more than a token does (Gradio post-processes
each output, diffs it against the previous one and sends it to the browser: about 1 ms
per update against ~0.1 ms per token). A GPU streams 30-100 tokens/s per reply; one update
per token would make the UI process, not the GPU, the limit on how many people it serves.
The eye sees no difference between 20 and 100 updates a second, so updates are paced:

    async for batch in paced(events, interval=0.05):
        for event in batch: ...   # apply every event, in order
        yield update              # one update per batch

A batch is delivered at once when it is the first, when `interval` has passed since the
previous batch, or when the stream ended or failed; otherwise it waits for the rest of the
interval, collecting what arrives meanwhile. So no event waits much longer than `interval`,
and the first token is shown the moment it arrives. An error raised by `events` comes after
the batch of events that preceded it (a partial reply is shown before its error).

Under load, reading is paced too: from READ_PACING_FROM streams paced at once, once an
event arrived in the middle of an interval, the reader does not ask `events` for the next
one until the interval is over. Meanwhile the backend's tokens collect in the socket, and
the next read takes them all at once. Waking up for a token costs the UI more than the
token itself (event loop, HTTP and chunked-encoding parsing for each network packet): at
80 streams this cuts the UI's CPU per token by a third (see bench/README.md). The price,
paid only under load: the end of a reply is seen up to one interval late. With fewer
streams every token is read as it comes and the end of a reply shows at once.

Under load the interval stretches: beyond STREAMS_AT_BASE streams paced at once in this
process, it grows in proportion to their number (up to MAX_INTERVAL_S), so the update
work of the whole process stays about constant while each reply still flows.

Closing the batches early (e.g. the Stop button, see ui/turn/stop_signals.py) cancels the
reading of `events`, which closes whatever it holds (the HTTP stream to the backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")

UPDATE_INTERVAL_S = 0.05  # streamed replies update the page at most this often (unloaded)
HISTORY_AT_BASE = 40  # messages: up to this long a chat, updates come every `interval`
MAX_HISTORY_INTERVAL_S = 1.0  # the longest a long history stretches the interval
READ_PACING_FROM = 8  # from this many streams at once, reading is paced too
STREAMS_AT_BASE = 20  # up to this many streams at once, batches come every `interval`
MAX_INTERVAL_S = 0.25  # the longest the interval stretches under load
_AFTER_READER_S = 0.002
_active = 0  # streams being paced now (all in the server's one event loop)


def interval_for_history(messages: int, interval: float = UPDATE_INTERVAL_S) -> float:
    """The update interval for a chat showing `messages` messages.

    Gradio post-processes, checks for files and diffs the whole Chatbot value on every
    update, so an update costs in proportion to the history's length (a 2 000-message chat
    took a whole core for one reply, bench/README.md). Beyond HISTORY_AT_BASE messages,
    updates come proportionally less often (up to MAX_HISTORY_INTERVAL_S apart), so a long
    chat costs the UI about what a short one does."""
    stretched = interval * max(1.0, messages / HISTORY_AT_BASE)
    return min(max(interval, MAX_HISTORY_INTERVAL_S), stretched)


def current_interval(interval: float) -> float:
    """`interval`, stretched by the number of streams being paced at once."""
    load = max(1.0, _active / STREAMS_AT_BASE)
    return min(max(interval, MAX_INTERVAL_S), interval * load)


class _End:
    pass


class _Failed(Generic[T]):
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = _End()


async def paced(events: AsyncIterator[T], interval: float) -> AsyncIterator[list[T]]:
    """Batches of `events` (see the module docstring). `interval` <= 0: never waits."""
    queue: asyncio.Queue[T | _End | _Failed[T]] = asyncio.Queue()
    over = asyncio.Event()  # the stream ended or failed: the last batch goes out at once

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
                # Under load, mid-interval: let the next tokens collect in the socket
                # until this batch is due, then read them in one go (module docstring).
                if _active >= READ_PACING_FROM and (rest := due() - time.monotonic()) > 0:
                    await asyncio.sleep(rest)
        except BaseException as exc:  # handed to the reader, in stream order
            queue.put_nowait(_Failed(exc))
            over.set()
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            queue.put_nowait(_END)
            over.set()

    def due() -> float:
        """When the next batch may go out."""
        return last + current_interval(interval)

    global _active
    last = -float("inf")
    reader = asyncio.create_task(pump())
    _active += 1
    try:
        while True:
            batch: list[T] = []
            first = await queue.get()
            ending = _take(first, batch)
            # A little after the reader's wake-up, so it has read what collected meanwhile.
            wait = due() + _AFTER_READER_S - time.monotonic()
            if ending is None and wait > _AFTER_READER_S:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop a cancel
                # (ui/turn/warming.py PhaseDetector.detect).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await over.wait()
            while ending is None and not queue.empty():
                ending = _take(queue.get_nowait(), batch)
            if batch:
                last = time.monotonic()
                yield batch
            if isinstance(ending, _Failed):
                raise ending.error
            if ending is _END:
                return
    finally:
        _active -= 1
        reader.cancel()
        # Wait for the cancellation to close `events` (and its HTTP stream) without
        # raising here: this may run while our own task is being cancelled.
        await asyncio.wait({reader})
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]


def _take(item: T | _End | _Failed[T], batch: list[T]) -> _End | _Failed[T] | None:
    """Add an event to the batch; return the end marker or failure instead, if it is one."""
    if isinstance(item, _End | _Failed):
        return item
    batch.append(item)
    return None
