"""A reply is generated only while someone reads it: which Gradio sessions have their event
stream open, and the watch that ends a turn nobody reads.

Gradio 6's queue takes a job with POST /queue/join and delivers its updates on a separate
stream, GET /queue/data?session_hash=... (or GET /call/<api>/<event_id> for its REST API).
The job starts whether or not that stream is ever opened, so a script that joins and never
reads would keep a backend slot and its stream budget (ui/web/rate_limit.py) for a whole reply.
When the stream drops, Gradio itself ends the job, but only at the job's next update (a reply
waiting for a slot, ui/turn/fair_slots.py, sends none for a while).

`EventStreamsMiddleware` (ASGI) counts each session's open event streams: a stream is open
from its request until the response ends, which Starlette makes happen as soon as the
client disconnects (uvicorn speaks ASGI 2.3, so StreamingResponse listens for the
disconnect). `EventStreams.watch` waits up to `grace` seconds for the stream of a turn's
session to be open before anything is sent to a backend, and stops the turn as soon as the
stream closes (tests/test_stream_fairness.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import parse_qs

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ui.compat.gradio_internals import session_of_queued_event

logger = logging.getLogger(__name__)


class EventStreams:
    """Open event streams per Gradio session in this process. The middleware and the turns
    run on the server's one event loop; nothing here is thread-safe or needs to be."""

    def __init__(self, grace: float) -> None:
        self.grace = grace  # seconds a job waits for its event stream to be opened
        # Set by the middleware when the server installs it; without it (the turn pipeline
        # driven directly, tests/test_turns.py) no stream is seen and none is awaited.
        self.watching = False
        self._open: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def is_open(self, session: str) -> bool:
        return self._open.get(session, 0) > 0

    def opened(self, session: str) -> None:
        self._open[session] = self._open.get(session, 0) + 1
        self._wake(session)

    def closed(self, session: str) -> None:
        left = self._open.get(session, 0) - 1
        if left > 0:
            self._open[session] = left
        else:
            self._open.pop(session, None)
        self._wake(session)

    @asynccontextmanager
    async def watch(self, session: str | None, stop: asyncio.Event | None) -> AsyncIterator[bool]:
        """Inside: whether the session's event stream opened within `grace` seconds (if not,
        nothing should be sent to a backend); while it runs, `stop` is set as soon as the
        stream closes. Without a session (a direct call, not through the queue) or the
        middleware there is nothing to watch: True."""
        if session is None or stop is None or not self.watching:
            yield True
            return
        if not await self._wait_until(session, opened=True, timeout=self.grace):
            # Not the session hash: whoever has it can read that session's events.
            logger.info("No event stream opened within %g s: the turn is cancelled unsent",
                        self.grace)  # fmt: skip
            yield False
            return
        watcher = asyncio.create_task(self._wait_until(session, opened=False))
        watcher.add_done_callback(lambda task: None if task.cancelled() else stop.set())
        try:
            yield True
        finally:
            watcher.cancel()  # not awaited: it holds nothing, and this may run mid-cancel

    async def _wait_until(
        self, session: str, *, opened: bool, timeout: float | None = None
    ) -> bool:
        """Wait until the session's stream is open (or closed); False after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.is_open(session) != opened:
            changed = asyncio.Event()
            self._waiters.setdefault(session, set()).add(changed)
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                return self.is_open(session) == opened
            finally:
                waiters = self._waiters.get(session)
                if waiters is not None:
                    waiters.discard(changed)
                    if not waiters:
                        del self._waiters[session]
        return True

    def _wake(self, session: str) -> None:
        for changed in self._waiters.get(session, ()):
            changed.set()


def stream_session(scope: Scope) -> str | None:
    """The session whose events this request streams, or None if it is no event stream."""
    if scope.get("type") != "http" or scope.get("method") != "GET":
        return None
    path: str = scope.get("path", "")
    if path.endswith("/queue/data"):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return (query.get("session_hash") or [None])[0]
    parts = path.rstrip("/").split("/")
    if "call" in parts and len(parts) - parts.index("call") >= 3:  # /call/[v2/]<api>/<id>
        return _session_of_event(scope, parts[-1])
    return None


def _session_of_event(scope: Scope, event_id: str) -> str:
    """The session of a queued or running event, as Gradio's GET /call/<api>/<event_id>
    finds it. Gradio uses the event id as the session when the caller sent none."""
    with suppress(Exception):  # Gradio internals: fall back to the id if they change
        session = session_of_queued_event(scope["app"], event_id)
        if session is not None:
            return session
    return event_id


class EventStreamsMiddleware:
    def __init__(self, app: ASGIApp, *, streams: EventStreams) -> None:
        self.app = app
        self.streams = streams
        streams.watching = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = stream_session(scope)
        if session is None:
            await self.app(scope, receive, send)
            return
        self.streams.opened(session)
        try:
            await self.app(scope, receive, send)
        finally:
            self.streams.closed(session)


def event_streams_middleware(streams: EventStreams) -> Middleware:
    return Middleware(EventStreamsMiddleware, streams=streams)
