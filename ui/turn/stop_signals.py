"""Stop a running reply gracefully.

Gradio's own `cancels=` kills the handler task; in Gradio 6 the browser then sometimes
marks the chat with an "Error" overlay (a race between its /reset call and the final queue
message). So the Stop button instead sets an event that the running stream watches: the
stream ends itself, closes the backend request (so the model stops generating) and shows
the partial reply with a "stopped" note, as a normal successful update.

Keyed by Gradio's session hash (one per page load). This is per-process coordination of
requests in flight, not conversation state: Gradio's queue already needs the stop request
to reach the instance that runs the stream (the same holds for its own cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


class StopSignals:
    def __init__(self) -> None:
        self._running: dict[str, set[asyncio.Event]] = {}
        self._lock = threading.Lock()

    def register(self, session: str) -> asyncio.Event:
        """Called when a stream starts; the returned event is set by `stop(session)`."""
        event = asyncio.Event()
        with self._lock:
            self._running.setdefault(session, set()).add(event)
        return event

    def release(self, session: str, event: asyncio.Event) -> None:
        with self._lock:
            events = self._running.get(session)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._running[session]

    def stop(self, session: str) -> bool:
        """Ask the session's running streams to stop. False if none is running.
        Call it from the server's event loop (an async handler), like the streams."""
        with self._lock:
            events = list(self._running.get(session, ()))
        for event in events:
            event.set()
        return bool(events)

    def running(self, session: str) -> bool:
        with self._lock:
            return bool(self._running.get(session))


async def until_stopped(items: AsyncIterator[T], stop: asyncio.Event | None) -> AsyncIterator[T]:
    """Yield from `items` until it ends or `stop` is set. On stop, the pending `__anext__`
    is cancelled, which lets `items` close what it holds (e.g. an HTTP stream)."""
    if stop is None:
        async for item in items:
            yield item
        return
    stopper = asyncio.ensure_future(stop.wait())
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(anext(items))
            await asyncio.wait({pending, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():
                return  # stopped; `finally` cancels the pending read
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
            if stop.is_set():
                return
    finally:
        stopper.cancel()
        if pending is not None and not pending.done():
            pending.cancel()
            # Wait for the cancellation to unwind `items` (closing its HTTP stream) without
            # raising here: this may run while our own task is being cancelled.
            await asyncio.wait({pending})
        if pending is not None and pending.done() and not pending.cancelled():
            pending.exception()  # retrieved: no "exception was never retrieved" warning
        with contextlib.suppress(Exception):
            await items.aclose()  # type: ignore[attr-defined]
