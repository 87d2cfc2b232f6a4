"""One chat turn, from the raw values a page sends to the streamed, timed replies.

Every page that asks models something (Chat, Compare, Battle) and the share buttons go
through this module; it imports no Gradio, so it is tested against the real engine
without a browser (tests/test_turns.py). The steps:

    text = check_message(ctx, message)              # None: empty, nothing to send
    names = await check_models(ctx, models, several=True)   # Chat: several=False
    params = check_parameters(ctx, system, temperature, top_p, max_tokens)
    histories = parse_histories(raw_histories)      # one per column
    columns = [Column(name, history) for name, history in zip(names, histories)]
    turn = prepare(ctx, text, params, columns, request=request, scope="compare")
    async for views in stream_turn(ctx, turn):      # every column at once
        ...                                         # map each ColumnView to widgets
    stop_turn(ctx, request, "compare")              # the Stop button (another request)

A chat is the one-column case of a comparison: `stream_turn` runs N columns concurrently
(one reply each, merged, paced), `ReplyProgress` accumulates one reply and its timings
(time to first token, tokens/s, total, model load) and makes the note shown under it.
Every check raises `ui.errors.InputRejected` (or a subclass) with a message for the user;
nothing reaches a backend before all checks passed, and `prepare` counts the request
against the rate limit only then. `scope` is the page: its Stop button stops only its own
turn, and its requests count against its own limit (Compare and Battle share one).
A turn sends nothing until its client reads its event stream, and a dropped stream stops it
(ui/event_streams.py); each reply waits for a slot of its model, shared out round-robin by
client (ui/fair_slots.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

from catalog import normalize_tag
from ui.backend_client import ReplyDone, ReplyStats, TokenDelta
from ui.backend_status import GpuPrice, reply_cost_text
from ui.chat_history import (
    WARNING_SIGN,
    HistoryRejected,
    Message,
    ReplyFigures,
    conversation,
    error_note,
    fit_to_context,
    parse_history,
    read_stats_note,
    stats_note,
    stopped_note,
)
from ui.context import AppContext
from ui.deep_links import MAX_COMPARE_MODELS, MIN_COMPARE_MODELS
from ui.errors import (
    BackendAuthError,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    InputRejected,
)
from ui.fair_slots import SlotWait
from ui.model_labels import label_for
from ui.rate_limit import StreamLease, client_key
from ui.reply_mac import ReplyClaim, ReplyMacs, note_tag
from ui.stop_signals import until_stopped
from ui.stream_pacing import interval_for_history, paced
from ui.warming import WarmingStatus, stream_with_warmup

logger = logging.getLogger(__name__)

# Sampling parameter ranges (Ollama accepts these; the widgets use the same bounds).
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9  # also what Compare and Battle send (they have no top-p control)
DEFAULT_MAX_TOKENS = 512  # Chat
DEFAULT_COLUMNS_MAX_TOKENS = 256  # Compare and Battle: several replies to read at once
MODEL_LIST_DEADLINE_S = 5.0  # pickers fall back to the allow-list after this

EMPTY_MESSAGE_HINT = "Type a message first: empty messages are not sent."
UI_FAILURE = "The UI failed while streaming this answer."


# === input checks =========================================================================
def describe(value: object) -> str:
    """A short description of a wrong value for an error message."""
    if value is None:
        return "empty"
    return f"{type(value).__name__} {repr(value)[:40]}"


def _fmt(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


HUGE_INT = 10**15  # beyond any parameter; still exact as a float


def check_number(
    name: str, value: object, low: float, high: float, *, integer: bool = False
) -> tuple[float, str | None]:
    """A sampling parameter: wrong types are rejected, out-of-range values clamped with a
    notice. Returns (value, notice or None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputRejected(f"{name} must be a number, not {describe(value)}.")
    if isinstance(value, int) and abs(value) > HUGE_INT:
        # float() of an int beyond 1e308 raises OverflowError; such a number is clamped.
        edge = int(high if value > 0 else low) if integer else (high if value > 0 else low)
        digits = int(value.bit_length() * math.log10(2)) + 1
        return edge, f"{name} (a {digits}-digit number) is outside the allowed range; used {edge}."
    if not math.isfinite(value):
        raise InputRejected(f"{name} must be a finite number, not {value}.")
    number: float = round(value) if integer else float(value)
    notice = None
    if not low <= number <= high:
        clamped = min(max(number, low), high)
        shown_low, shown_high = (int(low), int(high)) if integer else (low, high)
        notice = (
            f"{name} {_fmt(value)} is outside {_fmt(shown_low)}–{_fmt(shown_high)}; "
            f"used {_fmt(clamped)}."
        )
        number = clamped
    return (int(number) if integer else number), notice


def check_message(ctx: AppContext, message: object) -> str | None:
    """The message to send, None if it is empty, or InputRejected."""
    if message is None:
        return None
    if not isinstance(message, str):
        raise InputRejected(f"The message must be text, not {describe(message)}.")
    if not message.strip():
        return None
    limit = ctx.settings.max_message_chars
    if len(message) > limit:
        raise InputRejected(
            f"Your message is {len(message):,} characters long; the limit is {limit:,}. "
            "Shorten it and send again."
        )
    return message


@dataclass(frozen=True)
class Parameters:
    """Checked generation parameters."""

    system_prompt: str  # "" = none
    options: dict[str, Any]  # Ollama options: temperature, top_p, num_predict
    notices: list[str]  # values that were clamped into range

    @property
    def max_tokens(self) -> int:
        return int(self.options["num_predict"])


def check_parameters(
    ctx: AppContext,
    system_prompt: object,
    temperature: object,
    top_p: object,
    max_tokens: object,
) -> Parameters:
    """The system prompt and the sampling options (out-of-range numbers clamped, with a
    notice). num_ctx is deliberately not sent: Ollama reloads a model whose context size
    changes, so the backend's own setting rules and `context_tokens` should match it."""
    if system_prompt is None:
        system_prompt = ""
    if not isinstance(system_prompt, str):
        raise InputRejected(f"The system prompt must be text, not {describe(system_prompt)}.")
    limit = ctx.settings.max_message_chars
    if len(system_prompt) > limit:
        raise InputRejected(
            f"The system prompt is {len(system_prompt):,} characters long; the limit is {limit:,}."
        )
    temp, n1 = check_number("Temperature", temperature, *TEMPERATURE_RANGE)
    top, n2 = check_number("Top-p", top_p, *TOP_P_RANGE)
    tokens_limit = ctx.settings.max_tokens_limit
    tokens, n3 = check_number("Max tokens", max_tokens, 1, tokens_limit, integer=True)
    options = {"temperature": temp, "top_p": top, "num_predict": int(tokens)}
    return Parameters(system_prompt, options, [n for n in (n1, n2, n3) if n])


def parse_model_list(value: object) -> list[str]:
    """A list of models (Compare): a list of names, or one comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        items: list[object] = list(value.split(","))
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise InputRejected(
            f"The models must be a list of model names, not {type(value).__name__}."
        )
    names = []
    for item in items:
        if not isinstance(item, str):
            raise InputRejected(f"Each model must be a model name, not {type(item).__name__}.")
        if item.strip():
            names.append(item.strip())
    return names


def check_model_count(names: Sequence[str]) -> None:
    """2-3 different models (Compare)."""
    if len(names) < MIN_COMPARE_MODELS:
        picked = f"you picked {len(names)}" if names else "none is picked"
        raise InputRejected(f"Pick at least {MIN_COMPARE_MODELS} models to compare ({picked}).")
    if len(names) > MAX_COMPARE_MODELS:
        raise InputRejected(
            f"Pick at most {MAX_COMPARE_MODELS} models to compare (you picked {len(names)})."
        )
    seen: set[str] = set()
    for name in names:
        key = normalize_tag(name)
        if key in seen:
            raise InputRejected(f"“{name}” is picked twice: pick different models to compare.")
        seen.add(key)


async def check_models(ctx: AppContext, models: object, *, several: bool) -> list[str]:
    """The model of a chat (`several=False`: `models` is one name) or the 2-3 models of a
    comparison (`several=True`: a list or a comma-separated string), each one usable."""
    if not several:
        return [await ctx.models.check(models)]
    names = parse_model_list(models)
    check_model_count(names)
    return [await ctx.models.check(name) for name in names]


def parse_histories(raw: Sequence[object]) -> list[list[Message]]:
    """Several columns' histories; an error names the column when there are several."""
    histories = []
    for position, value in enumerate(raw, start=1):
        try:
            histories.append(parse_history(value))
        except HistoryRejected as exc:
            if len(raw) == 1:
                raise
            raise HistoryRejected(f"Column {position}: {exc.user_message}") from None
    return histories


# A reply the app streamed is at most max_tokens_limit tokens; a token is a few characters
# (up to ~16 for long words, code, or escapes). Longer "replies" in a history were not
# written by a model through this app.
REPLY_CHARS_PER_TOKEN = 16


def check_history(ctx: AppContext, history: Sequence[Message]) -> None:
    """Every message of a history the browser sent back, checked like a new one: the
    user's against the message limit, replies against the longest reply possible."""
    user_limit = ctx.settings.max_message_chars
    reply_limit = ctx.settings.max_tokens_limit * REPLY_CHARS_PER_TOKEN
    for position, message in enumerate(history, start=1):
        text = message.get("content") or ""
        limit = user_limit if message["role"] == "user" else reply_limit
        if isinstance(text, str) and len(text) > limit:
            who = "your message" if message["role"] == "user" else "a reply"
            raise HistoryRejected(
                f"Message {position} of the conversation ({who}) is {len(text):,} characters "
                f"long; the limit is {limit:,}. Start a new conversation."
            )


def session_of(request: object) -> str | None:
    """Gradio's session hash (one per page load): the Stop button finds streams by it."""
    return getattr(request, "session_hash", None) if request is not None else None


def check_rate(ctx: AppContext, request: Any, scope: str) -> None:
    """Count one request of this client against the per-minute limit of `scope` (Chat has
    its own count; Compare and Battle share one). Checked last: a rejected request does
    not count."""
    wait = ctx.limiter.acquire(f"{scope} {client_key(request)}")
    if wait is not None:
        raise InputRejected(
            f"Too many messages: the limit is {ctx.limiter.limit} per minute. "
            f"Try again in {math.ceil(wait)} s."
        )


def check_vote_quota(ctx: AppContext, request: Any) -> None:
    """Count one battle vote of this client against its daily cap (checked last)."""
    wait = ctx.vote_limiter.acquire(client_key(request))
    if wait is not None:
        raise InputRejected(
            f"You have voted {ctx.vote_limiter.limit} times in the last 24 hours, the most "
            f"one visitor may. Try again in {math.ceil(wait / 3600)} h."
        )


# === prepare ==============================================================================
@dataclass(frozen=True)
class ColumnRequest:
    """One column of a turn: one model, its conversation, what the backend gets."""

    model: str
    display: list[Message]  # the history to show, ending with the user's new message
    messages: list[Message]  # what the backend gets: system + fitted turns
    label: str  # how texts shown to the user name the model ("Model A" when blind)
    blind: bool = False  # battles: no model name in banners, notes or errors, no figures
    notices: list[str] = field(default_factory=list)  # shown in the note under the reply


@dataclass(frozen=True)
class PreparedTurn:
    """A checked turn, ready to stream."""

    columns: list[ColumnRequest]
    options: dict[str, Any]
    notices: list[str]  # about the whole turn (clamped parameters); also in every note
    stop_key: str | None  # the Stop button finds the running turn by it
    retry_hint: bool = False  # error notes say "press ↻ (retry)" (the Chat has the button)
    lease: StreamLease | None = None  # this client's streams, given back when it ends
    client: str = "unknown"  # who asks (ui/rate_limit.py): the models' slots are shared by it
    session: str | None = None  # Gradio's session: its event stream must be open


@dataclass(frozen=True)
class Column:
    """What `prepare` needs to know about one column."""

    model: str
    history: list[Message]  # the conversation so far, as shown
    label: str | None = None  # None: the model's display name
    blind: bool = False


def dropped_notice(ctx: AppContext, dropped: int) -> str:
    plural = "s" if dropped > 1 else ""
    return (
        f"The {dropped} oldest message{plural} were left out to fit the model's context "
        f"(about {ctx.settings.context_tokens:,} tokens)."
    )


def prepare(
    ctx: AppContext,
    text: str,
    params: Parameters,
    columns: Sequence[Column],
    *,
    request: Any,
    scope: str,
    rate_scope: str | None = None,
    retry_hint: bool = False,
) -> PreparedTurn:
    """The last step before streaming, after every check passed: count the request against
    the rate limit (InputRejected), then for each column add the user's message and fit the
    conversation into the model's context (the oldest turns are left out, with a notice;
    the history shown keeps everything). `scope`: the page, whose Stop button stops the
    turn; `rate_scope`: whose count the request is (default: the page's own)."""
    for column in columns:
        check_history(ctx, column.history)
    client = client_key(request)
    lease = ctx.streams.acquire(client, len(columns))
    if lease is None:
        raise InputRejected(
            f"You already have {ctx.streams.active(client)} replies being "
            f"written (at most {ctx.streams.limit} at once, on all tabs together). Wait for "
            "them to finish, or press Stop."
        )
    try:
        check_rate(ctx, request, rate_scope or scope)
    except InputRejected:
        lease.release()
        raise
    prepared = []
    for column in columns:
        display = [*column.history, {"role": "user", "content": text}]
        fitted = fit_to_context(
            params.system_prompt,
            conversation(display),
            context_tokens=ctx.settings.context_tokens,
            reply_tokens=params.max_tokens,
        )
        notices = [*params.notices]
        if fitted.dropped:
            notices.append(dropped_notice(ctx, fitted.dropped))
        label = column.label or label_for(column.model).display_name
        prepared.append(
            ColumnRequest(column.model, display, fitted.messages, label, column.blind, notices)
        )
    session = session_of(request)
    stop_key = f"{scope}:{session}" if session else None
    return PreparedTurn(
        prepared, params.options, list(params.notices), stop_key, retry_hint, lease, client, session
    )


# === one reply and its timings ===========================================================
Phase = Literal["waiting", "answering", "done", "stopped", "failed"]


@dataclass(frozen=True)
class ColumnView:
    """What a column shows right now."""

    history: list[Message]  # the display history, the reply so far and its note
    phase: Phase
    warming: str = ""  # the warming banner's HTML while the backend gets ready, else ""
    error: str | None = None  # phase "failed": what went wrong, for the user
    figures: ReplyFigures | None = None  # phase "done" (None when blind)

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "stopped", "failed")


@dataclass(frozen=True)
class Failed:
    """A column's stream failed; `user_message` says why."""

    user_message: str


class ReplyProgress:
    """One reply as it streams: its text, timings and warming state, and the note under it.

    `apply` takes the streamed events (TokenDelta, ReplyDone, WarmingStatus, SlotWait,
    Failed) and returns whether anything visible changed; `finish` ends it: with Ollama's
    final stats it is done, with an error it failed, without either the user stopped it.
    """

    def __init__(
        self,
        request: ColumnRequest,
        *,
        started: float,
        retry_hint: bool = False,
        clock: Callable[[], float] = time.monotonic,
        price: GpuPrice | None = None,
        macs: ReplyMacs | None = None,
    ) -> None:
        self.request = request
        self.price = price  # for the cost estimate under the reply (None: not shown)
        self.macs = macs  # vouches for a finished reply in its note (None: no MAC)
        self.started = started
        self.retry_hint = retry_hint
        self.clock = clock
        self.text = ""
        self.first_token_s: float | None = None
        self.total_s: float | None = None
        self.stats: ReplyStats | None = None
        self.error: str | None = None
        self.warming = ""
        self.tail: list[Message] = []  # the note under the finished reply
        self.figures: ReplyFigures | None = None
        self.finished = False

    def apply(self, event: object) -> bool:
        if isinstance(event, TokenDelta):
            if self.first_token_s is None:
                self.first_token_s = self.clock() - self.started
            self.text += event.text
            self.warming = ""  # the reply is flowing: the banner goes
            return True
        if isinstance(event, SlotWait):
            event = dataclasses.replace(event, model=self.request.label)
            before, self.warming = self.warming, event.html()
            return self.warming != before
        if isinstance(event, WarmingStatus):
            if self.request.blind:  # the banner names the model it loads; a battle must not
                event = dataclasses.replace(event, model=self.request.label)
            before, self.warming = self.warming, event.html()
            return self.warming != before
        if isinstance(event, ReplyDone):
            self.stats = event.stats
            return False
        if isinstance(event, Failed):
            self.error = self._hide_names(event.user_message)
            return False
        raise TypeError(f"not a reply event: {event!r}")

    def finish(self) -> None:
        self.finished = True
        self.warming = ""
        self.total_s = total_s = self.clock() - self.started
        notices = list(self.request.notices)
        if self.error is not None:
            note = error_note(
                self.error, partial=bool(self.text), notices=notices, retry_hint=self.retry_hint
            )
            self.tail = [note]
            return
        if self.stats is None:  # the stream ended without Ollama's final line: Stop
            figures = ReplyFigures(ttft_s=self.first_token_s, total_s=total_s, notices=notices)
            self.tail = [stopped_note(figures)]
            return
        if not self.text:
            notices.append("The model returned an empty reply.")
        if self.request.blind:
            # Speed and load time hint at which model answered: shown after the vote only.
            self.tail = [notes_only(notices)] if notices else []
            return
        self.figures = ReplyFigures(
            ttft_s=self.first_token_s,
            total_s=total_s,
            tokens_per_s=self.stats.tokens_per_second,
            eval_count=self.stats.eval_count,
            prompt_tokens=self.stats.prompt_eval_count,
            load_s=self.stats.load_seconds,
            done_reason=self.stats.done_reason,
            model=self.request.model,
            notices=notices,
            cost=(
                reply_cost_text(self.price, gpu_seconds(self.stats, total_s))
                if self.price is not None
                else None
            ),
        )
        self.tail = [self._vouched(stats_note(self.figures))]

    def _vouched(self, note: Message) -> Message:
        """The stats note with the server's MAC over the reply as shown (ui/reply_mac.py):
        a share of it can then show that this server generated it."""
        figures = read_stats_note(note)
        if self.macs is None or figures is None:
            return note
        messages = self.request.messages
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        display = self.request.display
        question = display[-1]["content"] if display else ""
        claim = ReplyClaim(self.request.model, system, question, self.text, figures)
        note["metadata"]["id"] = note_tag(self.macs.mac(claim), self.request.model)
        return note

    @property
    def phase(self) -> Phase:
        if self.finished:
            if self.error is not None:
                return "failed"
            return "done" if self.stats is not None else "stopped"
        return "answering" if self.text else "waiting"

    def view(self) -> ColumnView:
        shown = list(self.request.display)
        if self.text:
            shown.append({"role": "assistant", "content": self.text})
        return ColumnView(shown + self.tail, self.phase, self.warming, self.error, self.figures)

    def log(self) -> None:
        model = self.request.model
        if self.error is not None:
            chars = len(self.text)
            logger.warning("Reply from %s failed after %d chars: %s", model, chars, self.error)
            return
        logger.info(
            "Reply from %s %s: %s tokens, first token %s s, total %.2f s",
            model,
            "done" if self.stats else "stopped by the user",
            self.stats.eval_count if self.stats else "-",
            f"{self.first_token_s:.2f}" if self.first_token_s is not None else "-",
            self.total_s or 0.0,
        )

    def _hide_names(self, text: str) -> str:
        if not self.request.blind:
            return text
        model = self.request.model
        for name in {model, label_for(model).display_name, normalize_tag(model)}:
            text = text.replace(name, self.request.label)
        return text


def gpu_seconds(stats: ReplyStats, measured_s: float) -> float:
    """The instance-seconds a reply used: the backend's own total less its model load (a
    load belongs to the cold start, costed apart); without the backend's figure, what the
    UI measured from send to the last token."""
    total = stats.total_seconds
    if total is None:
        return measured_s
    return max(total - (stats.load_seconds or 0.0), 0.0)


def notes_only(notices: Sequence[str]) -> Message:
    """A note holding only notices (a blind reply shows no figures before the vote)."""
    return {
        "role": "assistant",
        "content": "\n".join(f"{WARNING_SIGN} {n}" for n in notices),
        "metadata": {"title": f"{WARNING_SIGN} Notices"},
    }


# === streaming ============================================================================
_END = object()  # a column's stream is over


async def _column_batches(
    ctx: AppContext,
    request: ColumnRequest,
    turn: PreparedTurn,
    stop: asyncio.Event | None,
    interval: float,
) -> AsyncGenerator[Sequence[object], None]:
    """One column's events in paced batches; a failure becomes a last `Failed` batch."""
    try:
        events = _watched(ctx, request, _in_a_slot(ctx, request, turn))
        # At most one update per interval (ui/stream_pacing.py): an update costs the UI
        # far more than a token.
        async for batch in until_stopped(paced(events, interval), stop):
            yield batch
    except BackendError as exc:
        if isinstance(exc, BackendUnreachable | BackendTimeout | BackendAuthError):
            ctx.watch.failed(exc.user_message)
        yield [Failed(exc.user_message)]
    except Exception:  # one broken column must not end the others
        logger.exception("Streaming from %s failed unexpectedly", request.model)
        yield [Failed(UI_FAILURE)]


async def _in_a_slot(
    ctx: AppContext, request: ColumnRequest, turn: PreparedTurn
) -> AsyncGenerator[object, None]:
    """The reply's events, sent once one of its model's slots is free (ui/fair_slots.py).
    Stop or a dropped event stream cancels the wait as it cancels the stream."""
    model = normalize_tag(request.model)
    queued = ctx.slots.full(model)
    if queued:
        yield SlotWait(model, ctx.slots.waiting(model) + 1, ctx.slots.capacity)
    async with ctx.slots.slot(model, turn.client):
        if queued:
            yield SlotWait(model, 0, ctx.slots.capacity)  # served: the banner goes
        events = stream_with_warmup(
            ctx.client, request.model, request.messages, tracker=ctx.tracker, options=turn.options
        )
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                yield event


async def _watched(
    ctx: AppContext, request: ColumnRequest, events: AsyncIterator[object]
) -> AsyncGenerator[object, None]:
    """Pass a reply's events on, telling the status watch what they show about the backend
    (a blind column does not name its model: the status line is on every page)."""
    watch = ctx.watch
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
        batches = _column_batches(ctx, turn.columns[0], turn, stop, interval)
        async with aclosing(batches):
            async for batch in batches:
                yield [(0, event) for event in batch]
        yield [(0, _END)]
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, request: ColumnRequest) -> None:
        try:
            async for batch in _column_batches(ctx, request, turn, stop, interval):
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
    message, then whenever something visible changed, last with each reply's note.

    A failure in one column ends only that column (its note says what happened; a partial
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
    # Every update carries every column's history (ui/stream_pacing.py).
    interval = interval_for_history(sum(len(c.display) for c in turn.columns))
    try:
        yield [reply.view() for reply in replies]
        # Nothing is sent for a client that does not read its events, and a dropped event
        # stream stops the turn like Stop (ui/event_streams.py).
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


def stop_turn(ctx: AppContext, request: object, scope: str) -> bool:
    """Ask this page's running turn (of `scope`) to stop. False if none is running."""
    session = session_of(request)
    return bool(session) and ctx.stops.stop(f"{scope}:{session}")


def turn_running(ctx: AppContext, request: object, scope: str) -> bool:
    session = session_of(request)
    return bool(session) and ctx.stops.running(f"{scope}:{session}")
