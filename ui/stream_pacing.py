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
interval, collecting what arrives meanwhile. So no event waits longer than `interval`,
the first token is shown the moment it arrives, and the end is never delayed. An error
raised by `events` comes after the batch of events that preceded it (a partial reply is
shown before its error).

Closing the batches early (e.g. the Stop button, see ui/stop_signals.py) cancels the
reading of `events`, which closes whatever it holds (the HTTP stream to the backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _End:
    pass


class _Failed(Generic[T]):
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = _End()


async def paced(events: AsyncIterator[T], interval: float) -> AsyncIterator[list[T]]:
    """Batches of `events` (see the module docstring). `interval` <= 0: one per event."""
    queue: asyncio.Queue[T | _End | _Failed[T]] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        except BaseException as exc:  # handed to the reader, in stream order
            queue.put_nowait(_Failed(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            queue.put_nowait(_END)

    reader = asyncio.create_task(pump())
    last = -float("inf")
    try:
        while True:
            batch: list[T] = []
            first = await queue.get()
            ending = _take(first, batch)
            wait = last + interval - time.monotonic()
            if ending is None and wait > 0:
                await asyncio.sleep(wait)
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
