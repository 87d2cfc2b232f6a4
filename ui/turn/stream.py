"""A turn streamed: every column's reply at once, merged, paced, stoppable.

    async for views in stream_turn(ctx, turn):      # every column's ColumnView, each update
        ...                                         # the page draws them (ui/view/)
    stop_turn(ctx, request, scope)                  # the Stop button (another request)

One reply passes through the stages `reply_batches` lists, in order; a chat is the
one-column case of a comparison. A turn sends nothing until its client reads its event
stream, and a dropped stream stops it (ui/web/event_streams.py); each reply waits for a slot
of its model, shared out round-robin by client (ui/turn/fair_slots.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing

from catalog import normalize_tag
from ui.backend_access.client import ReplyDone, TokenDelta
from ui.backend_access.status import BackendWatch
from ui.context import AppContext
from ui.errors import (
    BackendAuthError,
    BackendError,
    BackendMisconfigured,
    BackendTimeout,
    BackendUnreachable,
)
from ui.turn.fair_slots import FairSlots, SlotWait
from ui.turn.pacing import interval_for_history, paced
from ui.turn.prepare import ColumnRequest, PreparedTurn, session_of
from ui.turn.reply import ColumnView, Failed, ReplyProgress, gpu_seconds
from ui.turn.scope import Scope
from ui.turn.stop_signals import until_stopped
from ui.turn.warming import WarmingStatus, stream_with_warmup

logger = logging.getLogger(__name__)

UI_FAILURE = "The UI failed while streaming this answer."
_END = object()  # a column's stream is over


async def reply_batches(
    ctx: AppContext,
    request: ColumnRequest,
    turn: PreparedTurn,
    stop: asyncio.Event | None,
    interval: float,
) -> AsyncGenerator[Sequence[object], None]:
    """One reply's events, stage by stage from the backend up to the page:

    1. `in_a_slot`: wait for one of the model's slots (fair by client), then
    2. `stream_with_warmup` (ui/turn/warming.py): send the chat (`BackendClient.chat_stream`,
       the one HTTP call), resend it while the backend is busy, report its cold phases;
    3. `watched`: tell the status watch what the events show about the backend;
    4. `paced` (ui/turn/pacing.py): at most one batch per interval (an update costs the
       UI far more than a token);
    5. `until_stopped` (ui/turn/stop_signals.py): end at Stop or a dropped event stream.
    A failure becomes a last `Failed` batch: one broken column must not end the others."""

    def reply() -> AsyncIterator[object]:
        return stream_with_warmup(
            ctx.client, request.model, request.messages, tracker=ctx.tracker, options=turn.options
        )

    try:
        events = in_a_slot(ctx.slots, request.model, turn.client, reply)
        events = watched(ctx.watch, request, events)
        async for batch in until_stopped(paced(events, interval), stop):
            yield batch
    except BackendError as exc:
        setup = BackendAuthError | BackendMisconfigured
        if isinstance(exc, BackendUnreachable | BackendTimeout | setup):
            ctx.watch.failed(exc.user_message)
        yield [Failed(exc.user_message)]
    except Exception:
        logger.exception("Streaming from %s failed unexpectedly", request.model)
        yield [Failed(UI_FAILURE)]


async def in_a_slot(
    slots: FairSlots, model: str, client: str, reply: Callable[[], AsyncIterator[object]]
) -> AsyncGenerator[object, None]:
    """The reply's events, started once one of its model's slots is free; SlotWait events
    while it waits. Stop or a dropped event stream cancels the wait as it cancels the
    stream."""
    tag = normalize_tag(model)
    queued = slots.full(tag)
    if queued:
        yield SlotWait(tag, slots.waiting(tag) + 1, slots.capacity)
    async with slots.slot(tag, client):
        if queued:
            yield SlotWait(tag, 0, slots.capacity)  # served: the banner goes
        events = reply()
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                yield event


async def watched(
    watch: BackendWatch, request: ColumnRequest, events: AsyncIterator[object]
) -> AsyncGenerator[object, None]:
    """Pass a reply's events on, telling the status watch what they show about the backend
    (a blind column does not name its model: the status line is on every page)."""
    model = None if request.blind else request.model
    answered = False
    async with aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, WarmingStatus):
                if event.phase == "starting":
                    watch.waking()
                elif event.phase == "loading":
                    watch.loading(model)
                elif event.phase == "ready":
                    watch.ready(model, cold_start_s=event.elapsed)
                    answered = True
            elif isinstance(event, TokenDelta | ReplyDone) and not answered:
                watch.ready(model)
                answered = True
            yield event


async def _merged(
    ctx: AppContext, turn: PreparedTurn, stop: asyncio.Event | None, interval: float
) -> AsyncGenerator[list[tuple[int, object]], None]:
    """Every column's batches as (column, event) lists; (column, _END) when it is over.
    One column is read in this task; several get a task each, merged through a queue."""
    if len(turn.columns) == 1:
        batches = reply_batches(ctx, turn.columns[0], turn, stop, interval)
        async with aclosing(batches):
            async for batch in batches:
                yield [(0, event) for event in batch]
        yield [(0, _END)]
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, request: ColumnRequest) -> None:
        try:
            async for batch in reply_batches(ctx, request, turn, stop, interval):
                for event in batch:
                    queue.put_nowait((index, event))
        finally:
            queue.put_nowait((index, _END))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(turn.columns)]
    try:
        running = len(tasks)
        while running:
            merged = [await queue.get()]
            while not queue.empty():  # what arrived meanwhile: one update, not one per token
                merged.append(queue.get_nowait())
            running -= sum(1 for _, item in merged if item is _END)
            yield merged
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def stream_turn(
    ctx: AppContext, turn: PreparedTurn, *, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[list[ColumnView]]:
    """Stream every column's reply at once; yield all columns' views: first with the user's
    message, then whenever something visible changed, last with each reply's end.

    A failure in one column ends only that column (its view says what happened; a partial
    reply is kept). The Stop button (`stop_turn`) ends every column; closing this iterator
    does too. Either closes the backend requests, so the models stop generating."""
    stop = ctx.stops.register(turn.stop_key) if turn.stop_key else None
    price = ctx.watch.price
    replies = [
        ReplyProgress(
            column,
            started=clock(),
            retry_hint=turn.retry_hint,
            clock=clock,
            price=price,
            macs=ctx.reply_macs,
        )
        for column in turn.columns
    ]
    # Every update carries every column's history (ui/turn/pacing.py).
    interval = interval_for_history(sum(len(c.display) for c in turn.columns))
    try:
        yield [reply.view() for reply in replies]
        # Nothing is sent for a client that does not read its events, and a dropped event
        # stream stops the turn like Stop (ui/web/event_streams.py).
        async with ctx.event_streams.watch(turn.session, stop) as read:
            if not read:
                return
            started = clock()  # the requests go out now: first token and total from here
            for reply in replies:
                reply.started = started
            async with aclosing(_merged(ctx, turn, stop, interval)) as merged:
                async for batch in merged:
                    changed = False
                    for index, event in batch:
                        if event is _END:
                            reply = replies[index]
                            reply.finish()
                            reply.log()
                            if reply.stats is not None and reply.total_s is not None:
                                model = None if reply.request.blind else reply.request.model
                                ctx.watch.replied(model, gpu_seconds(reply.stats, reply.total_s))
                            changed = True
                        else:
                            changed = replies[index].apply(event) or changed
                    if changed:
                        yield [reply.view() for reply in replies]
    finally:
        if stop is not None and turn.stop_key:
            ctx.stops.release(turn.stop_key, stop)
        if turn.lease is not None:
            turn.lease.release()


def stop_turn(ctx: AppContext, request: object, scope: Scope) -> bool:
    """Ask this page's running turn (of `scope`) to stop. False if none is running."""
    session = session_of(request)
    return ctx.stops.stop(scope.stop_key(session)) if session else False


def turn_running(ctx: AppContext, request: object, scope: Scope) -> bool:
    session = session_of(request)
    return ctx.stops.running(scope.stop_key(session)) if session else False
