"""The Compare tab: one prompt, two or three models answering side by side, all at once.

Stateless like the chat: each column's conversation is its Chatbot's value, which the
browser sends with every request, so follow-up prompts continue each model's own
conversation and any UI instance can serve any request.

API endpoints (for `gradio_client`; every input is checked here, not by the widgets):

    /compare       (message, models, system_prompt, temperature, max_tokens,
                    history_1, history_2, history_3)
                   -> (message box, banner, chat_1, status_1, chat_2, status_2,
                       chat_3, status_3)                                        streams
    /compare_stop  ()                                  stops every column of this session

`models` is a list of 2-3 model names (or one comma-separated string); column i answers
with models[i] and continues history_i. Unused columns come back empty. Each status is
HTML: a warming banner while that column's backend is cold, then the reply's figures.

`ColumnStreamer` runs several replies concurrently (one asyncio task per column, merged
through one queue) and yields a snapshot of every column after each batch of events; the
blind battle (ui/battle_page.py) uses it too, with model names hidden.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from catalog import normalize_tag
from ui.backend_client import BackendClient, ReplyDone, ReplyStats, TokenDelta
from ui.chat_history import (
    LOAD_SHOWN_ABOVE_S,
    WARNING_SIGN,
    HistoryRejected,
    Message,
    ReplyFigures,
    conversation,
    fit_to_context,
    parse_history,
    stats_note,
    stopped_note,
)
from ui.chat_page import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    EMPTY_MESSAGE_HINT,
    MODEL_LIST_DEADLINE_S,
    TEMPERATURE_RANGE,
    ChatPage,
    InputRejected,
    banner_html,
)
from ui.deep_links import (
    MAX_COMPARE_MODELS,
    MIN_COMPARE_MODELS,
    PARAM_COMPARE,
    compare_link,
    notice_html,
    query_params,
)
from ui.errors import BackendError
from ui.model_directory import ModelDirectory, ModelRejected
from ui.model_labels import ModelLabel, label_for
from ui.rate_limit import RateLimiter
from ui.settings import Settings
from ui.stop_signals import StopSignals, until_stopped
from ui.stream_pacing import interval_for_history, paced
from ui.warming import ColdStartTracker, Prewarmer, WarmingStatus, stream_with_warmup

logger = logging.getLogger(__name__)

COLUMN_SLOTS = MAX_COMPARE_MODELS  # columns laid out; unused ones are hidden
DEFAULT_COMPARE_MAX_TOKENS = 256

CSS = """
#compare-banner:has(.prose:empty), #battle-banner:has(.prose:empty) { display: none; }
.compare-columns { flex-wrap: wrap; }
/* A column's own "clear" icon would reset one model's side only; "Clear" resets all. */
.compare-columns button[aria-label="Clear"] { display: none; }
.compare-head { display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap;
  padding: 2px 4px; }
.compare-name { font-weight: 600; font-size: 1.05em; }
.compare-meta { opacity: 0.75; font-size: 0.9em; }
.compare-status { font-size: 0.9em; padding: 4px 8px; border-radius: 6px; min-height: 1.6em; }
.compare-status-wait { opacity: 0.7; }
.compare-status-stats { background: var(--color-accent-soft); }
.compare-status-stopped { background: #fff4ce; color: #5c4400; }
.compare-status-error { background: #fde7e9; color: #7a1020; }
.warming-banner { padding: 6px 10px; border-radius: 8px; background: #fff4ce;
  color: #5c4400; font-size: 0.9em; }
.warming-bar { height: 4px; background: rgba(0,0,0,0.1); border-radius: 2px; margin: 4px 0; }
.warming-bar > div { height: 100%; background: #c08a00; border-radius: 2px; }
"""


# === one reply per column, all at once ===================================================
@dataclass
class ColumnRequest:
    """One column's checked request."""

    model: str
    display: list[Message]  # the history to show, ending with the user's new message
    messages: list[Message]  # what the backend gets: system + fitted turns
    label: str  # how texts shown to the user name the model ("Model A" when blind)
    blind: bool = False  # hide the model's name (battles): no names in banners or notes
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ColumnView:
    """What a column shows right now."""

    history: list[Message]
    status: str  # HTML for the column's status slot
    finished: bool = False
    failed: bool = False
    stats: ReplyStats | None = None


@dataclass(frozen=True)
class _Failed:
    user_message: str


_END = object()  # a column's task is over


def status_html(text: str, kind: str) -> str:
    return f'<div class="compare-status compare-status-{kind}">{html.escape(text)}</div>'


WAITING_HTML = status_html("Waiting for the first token…", "wait")
ANSWERING_HTML = status_html("Answering…", "wait")
DONE_HTML = status_html("Done", "wait")


def figures_html(stats: ReplyStats | None, ttft_s: float | None, total_s: float) -> str:
    """The status line under a finished reply: first token, speed, tokens, load time."""
    parts = []
    if ttft_s is not None:
        parts.append(f"{ttft_s:.2f} s to first token")
    if stats is not None and stats.tokens_per_second is not None:
        parts.append(f"{stats.tokens_per_second:.1f} tokens/s")
    if stats is not None and stats.eval_count is not None:
        parts.append(f"{stats.eval_count} token{'' if stats.eval_count == 1 else 's'}")
    load = stats.load_seconds if stats is not None else None
    if load is not None and load > LOAD_SHOWN_ABOVE_S:
        parts.append(f"model load {load:.2f} s")
    else:
        parts.append("model already loaded")
    parts.append(f"{total_s:.2f} s total")
    if stats is not None and stats.done_reason == "length":
        parts.append("max tokens reached")
    return status_html(" · ".join(parts), "stats")


class _Column:
    """The live state of one column while its reply streams."""

    def __init__(self, request: ColumnRequest, started: float) -> None:
        self.request = request
        self.started = started
        self.reply = ""
        self.first_token_s: float | None = None
        self.stats: ReplyStats | None = None
        self.error: str | None = None
        self.status = WAITING_HTML
        self.tail: list[Message] = []  # the note under the finished reply
        self.finished = False

    def apply(self, event: object) -> None:
        if isinstance(event, WarmingStatus):
            if self.request.blind:
                # The banner names the model it loads; a battle must not.
                event = dataclasses.replace(event, model=self.request.label)
            self.status = event.html() or (ANSWERING_HTML if self.reply else WAITING_HTML)
        elif isinstance(event, TokenDelta):
            if self.first_token_s is None:
                self.first_token_s = time.monotonic() - self.started
            self.reply += event.text
            self.status = ANSWERING_HTML
        elif isinstance(event, ReplyDone):
            self.stats = event.stats
        elif isinstance(event, _Failed):
            self.error = self._hide_names(event.user_message)

    def finish(self) -> None:
        self.finished = True
        total_s = time.monotonic() - self.started
        notices = list(self.request.notices)
        model = None if self.request.blind else self.request.model
        if self.error is not None:
            lines = ["The reply above is incomplete."] if self.reply else []
            lines += [f"{WARNING_SIGN} {n}" for n in notices]
            self.tail = [
                {
                    "role": "assistant",
                    "content": "\n".join(lines),
                    "metadata": {"title": f"{WARNING_SIGN} {self.error}"},
                }
            ]
            self.status = status_html(self.error, "error")
            return
        if self.stats is None:  # ended without Ollama's final line: Stop was pressed
            figures = ReplyFigures(ttft_s=self.first_token_s, total_s=total_s, notices=notices)
            self.tail = [stopped_note(figures)]
            self.status = status_html("Stopped", "stopped")
            return
        if not self.reply:
            notices.append("The model returned an empty reply.")
        if self.request.blind:
            # Speed and load time hint at which model answered: shown after the vote only.
            self.tail = [_notes_only(notices)] if notices else []
            self.status = DONE_HTML
            return
        figures = ReplyFigures(
            ttft_s=self.first_token_s,
            total_s=total_s,
            tokens_per_s=self.stats.tokens_per_second,
            eval_count=self.stats.eval_count,
            prompt_tokens=self.stats.prompt_eval_count,
            load_s=self.stats.load_seconds,
            done_reason=self.stats.done_reason,
            model=model,
            notices=notices,
        )
        self.tail = [stats_note(figures)]
        self.status = figures_html(self.stats, self.first_token_s, total_s)

    def _hide_names(self, text: str) -> str:
        if not self.request.blind:
            return text
        label = label_for(self.request.model)
        for name in {self.request.model, label.display_name, normalize_tag(self.request.model)}:
            text = text.replace(name, self.request.label)
        return text

    def view(self) -> ColumnView:
        shown = list(self.request.display)
        if self.reply:
            shown.append({"role": "assistant", "content": self.reply})
        return ColumnView(
            history=shown + self.tail,
            status=self.status,
            finished=self.finished,
            failed=self.error is not None,
            stats=self.stats,
        )


def _notes_only(notices: list[str]) -> Message:
    return {
        "role": "assistant",
        "content": "\n".join(f"{WARNING_SIGN} {n}" for n in notices),
        "metadata": {"title": f"{WARNING_SIGN} Notices"},
    }


class ColumnStreamer:
    """Streams several replies at the same time and merges their progress."""

    def __init__(self, client: BackendClient, tracker: ColdStartTracker) -> None:
        self.client = client
        self.tracker = tracker

    async def stream(
        self,
        requests: Sequence[ColumnRequest],
        options: dict[str, Any],
        stop: asyncio.Event | None,
    ) -> AsyncIterator[list[ColumnView]]:
        """Yield every column's view: first with the user's message, then after each batch
        of events. A failure in one column ends only that column. Closing this iterator
        (or `stop`) ends every column and closes their backend requests."""
        started = time.monotonic()
        columns = [_Column(request, started) for request in requests]
        queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        # Every update carries every column's history (ui/stream_pacing.py).
        interval = interval_for_history(sum(len(r.display) for r in requests))
        tasks = [
            asyncio.create_task(self._pump(index, request, options, stop, queue, interval))
            for index, request in enumerate(requests)
        ]
        try:
            yield [column.view() for column in columns]
            running = len(tasks)
            while running:
                batch = [await queue.get()]
                # Coalesce what arrived meanwhile: one update per batch, not per token.
                while not queue.empty():
                    batch.append(queue.get_nowait())
                for index, item in batch:
                    if item is _END:
                        running -= 1
                        columns[index].finish()
                    else:
                        columns[index].apply(item)
                yield [column.view() for column in columns]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for column in columns:
            if column.finished:
                logger.info(
                    "Compare column %s: %s chars, first token %s s, %s",
                    column.request.model,
                    len(column.reply),
                    f"{column.first_token_s:.2f}" if column.first_token_s else "-",
                    "failed" if column.error else ("done" if column.stats else "stopped"),
                )

    async def _pump(
        self,
        index: int,
        request: ColumnRequest,
        options: dict[str, Any],
        stop: asyncio.Event | None,
        queue: asyncio.Queue[tuple[int, object]],
        interval: float,
    ) -> None:
        try:
            events = stream_with_warmup(
                self.client, request.model, request.messages, tracker=self.tracker, options=options
            )
            # Paced like the chat (ui/stream_pacing.py): each column's tokens are read and
            # handed on in batches, so a comparison costs about one update per interval
            # per column, not one per token.
            async for batch in until_stopped(paced(events, interval), stop):
                for event in batch:
                    queue.put_nowait((index, event))
        except BackendError as exc:
            logger.warning("Column %s failed: %s", request.model, exc.user_message)
            queue.put_nowait((index, _Failed(exc.user_message)))
        except Exception:  # one broken column must not end the others
            logger.exception("Column %s failed unexpectedly", request.model)
            queue.put_nowait((index, _Failed("The UI failed while streaming this answer.")))
        finally:
            queue.put_nowait((index, _END))


# === input checks ========================================================================
def parse_model_list(value: object) -> list[str]:
    """The models input: a list of names, or one comma-separated string."""
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


def default_models(labels: Sequence[ModelLabel]) -> list[str]:
    """One model per family (chat-tuned first), 2-3 of them when that many exist."""
    ordered = sorted(labels, key=lambda lbl: not lbl.chat_tuned)  # stable: keeps list order
    picked: list[str] = []
    families: set[str] = set()
    for label in ordered:
        if label.family_label not in families and len(picked) < MAX_COMPARE_MODELS:
            picked.append(label.tag)
            families.add(label.family_label)
    for label in ordered:
        if len(picked) >= MIN_COMPARE_MODELS:
            break
        if label.tag not in picked:
            picked.append(label.tag)
    order = {label.tag: i for i, label in enumerate(labels)}
    return sorted(picked, key=lambda tag: order[tag])


def column_head_html(tag: str | None) -> str:
    if not tag:
        return '<div class="compare-head"><span class="compare-name">—</span></div>'
    label = label_for(tag)
    meta = [label.family_label]
    if label.parameter_size:
        meta.append(label.parameter_size)
    if not label.chat_tuned:
        meta.append("base model")
    return (
        f'<div class="compare-head"><span class="compare-name">'
        f"{html.escape(label.display_name)}</span>"
        f'<span class="compare-meta">{html.escape(" · ".join(meta))}</span></div>'
    )


def blind_head_html(label: str, revealed: str | None = None) -> str:
    name = f'<span class="compare-name">{html.escape(label)}</span>'
    extra = (
        f'<span class="compare-meta">{html.escape(revealed)}</span>' if revealed is not None else ""
    )
    return f'<div class="compare-head">{name}{extra}</div>'


# === the page ============================================================================
@dataclass
class PreparedComparison:
    columns: list[ColumnRequest]
    options: dict[str, Any]
    system_prompt: str
    notices: list[str]
    session: str | None


class ComparePage:
    def __init__(
        self,
        settings: Settings,
        client: BackendClient,
        directory: ModelDirectory,
        *,
        limiter: RateLimiter | None = None,
        tracker: ColdStartTracker | None = None,
        prewarmer: Prewarmer | None = None,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.limiter = limiter or RateLimiter(settings.rate_limit_per_minute)
        self.prewarmer = prewarmer
        # The chat page's checks (message, system prompt, numbers, rate): same rules, same
        # messages. Building a ChatPage lays nothing out.
        self.checks = ChatPage(settings, client, directory, limiter=self.limiter)
        self.streamer = ColumnStreamer(
            client, tracker or ColdStartTracker(settings.typical_cold_start)
        )
        self.stops = StopSignals()
        self.components: CompareComponents | None = None

    async def prepare(
        self,
        message: object,
        models: object,
        system_prompt: object,
        temperature: object,
        max_tokens: object,
        histories: Sequence[object],
        request: gr.Request | None,
    ) -> PreparedComparison | None:
        """Check everything (None: the message is empty). Raises InputRejected,
        ModelRejected or HistoryRejected; nothing reaches a backend before this passes."""
        text = self.checks.check_message(message)
        if text is None:
            return None
        names = parse_model_list(models)
        check_model_count(names)
        checked = [await self.directory.check(name) for name in names]
        system = self.checks.check_system_prompt(system_prompt)
        options, notices = self.checks.check_options(temperature, DEFAULT_TOP_P, max_tokens)
        earlier: list[list[Message]] = []
        for position, raw in enumerate(histories[: len(checked)], start=1):
            try:
                earlier.append(parse_history(raw))
            except HistoryRejected as exc:
                raise HistoryRejected(f"Column {position}: {exc.user_message}") from None
        self.checks.check_rate(request)
        columns = []
        for model, history in zip(checked, earlier, strict=True):
            display = [*history, {"role": "user", "content": text}]
            fitted = fit_to_context(
                system,
                conversation(display),
                context_tokens=self.settings.context_tokens,
                reply_tokens=options["num_predict"],
            )
            column_notices = []
            if fitted.dropped:
                column_notices.append(
                    f"The {fitted.dropped} oldest message{'s' if fitted.dropped > 1 else ''} "
                    "were left out to fit the model's context."
                )
            columns.append(
                ColumnRequest(
                    model=model,
                    display=display,
                    messages=fitted.messages,
                    label=label_for(model).display_name,
                    notices=column_notices,
                )
            )
        session = getattr(request, "session_hash", None) if request is not None else None
        return PreparedComparison(columns, options, system, notices, session)

    # --- Gradio handlers ------------------------------------------------------------------
    async def compare(
        self,
        message: object,
        models: object,
        system_prompt: object,
        temperature: object,
        max_tokens: object,
        history_1: object,
        history_2: object,
        history_3: object,
        request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        histories = [history_1, history_2, history_3]
        try:
            prepared = await self.prepare(
                message, models, system_prompt, temperature, max_tokens, histories, request
            )
        except (InputRejected, ModelRejected, HistoryRejected) as exc:
            # Nothing changes but the banner (not gr.Error: it would cover the columns).
            yield (gr.skip(), banner_html(exc.user_message, "error"), *_unchanged_columns())
            return
        if prepared is None:
            yield (gr.skip(), banner_html(EMPTY_MESSAGE_HINT), *_unchanged_columns())
            return
        banner = banner_html(" ".join(prepared.notices), "warning") if prepared.notices else ""
        stop = self.stops.register(prepared.session) if prepared.session else None
        try:
            box: Any = ""  # cleared once; later updates leave a new prompt being typed alone
            async for views in self.streamer.stream(prepared.columns, prepared.options, stop):
                yield (box, banner, *_column_outputs(views))
                box = gr.skip()
        finally:
            if stop is not None and prepared.session:
                self.stops.release(prepared.session, stop)

    async def stop(self, request: gr.Request) -> None:
        """Stop every column of this page's running comparison (see ChatPage.stop)."""
        session = getattr(request, "session_hash", None)
        if not (session and self.stops.stop(session)):
            raise gr.Error("No comparison is running.", visible=False, print_exception=False)

    async def prewarm(self, models: object) -> None:
        """Wake the picked models' backends in the background (page load, new pick)."""
        if self.prewarmer is None:
            return
        try:
            names = parse_model_list(models)[:MAX_COMPARE_MODELS]
        except InputRejected:
            return
        for name in names:
            if not self.directory.is_allowed(name):
                continue
            try:
                self.prewarmer.warm(await self.directory.check(name))
            except ModelRejected:
                continue

    async def prewarm_linked(self, models: object, request: gr.Request) -> None:
        """After page load: warm the models only when a ?compare= link asked for them (a
        plain visit warms the chat's model only; most visitors never open Compare)."""
        if query_params(request).get(PARAM_COMPARE, "").strip():
            await self.prewarm(models)

    async def on_load(self, request: gr.Request) -> tuple[Any, ...]:
        """Fill the model picker (defaults: one per family) and apply ?compare= / ?q=."""
        choices = await self.directory.choices(deadline=MODEL_LIST_DEADLINE_S)
        offered = [label.tag for label in choices.labels]
        defaults = default_models(choices.labels)
        link = compare_link(
            query_params(request), offered, defaults, self.settings.max_message_chars
        )
        selected = link.models if link is not None else defaults
        notices = list(link.notices) if link is not None else []
        if choices.problem:
            notices.append(f"Could not ask the backend for its models: {choices.problem}")
        prompt = link.prompt if link is not None and link.prompt is not None else gr.skip()
        return (
            gr.Dropdown(choices=choices.dropdown_choices, value=selected),
            prompt,
            notice_html(notices),
            *column_layout(selected),
        )


def column_layout(models: object) -> tuple[Any, ...]:
    """Each column's header, and whether the third column shows."""
    try:
        names = parse_model_list(models)
    except InputRejected:
        names = []
    heads = [column_head_html(names[i] if i < len(names) else None) for i in range(COLUMN_SLOTS)]
    return (*heads, gr.Column(visible=len(names) > 2))


def _unchanged_columns() -> list[Any]:
    return [gr.skip()] * (2 * COLUMN_SLOTS)


def _column_outputs(views: Sequence[ColumnView]) -> list[Any]:
    outputs: list[Any] = []
    for slot in range(COLUMN_SLOTS):
        if slot < len(views):
            outputs += [views[slot].history, views[slot].status]
        else:
            outputs += [[], ""]
    return outputs


# === layout and wiring ===================================================================
@dataclass
class CompareComponents:
    banner: gr.HTML
    models: gr.Dropdown
    heads: list[gr.HTML]
    chats: list[gr.Chatbot]
    statuses: list[gr.HTML]
    third_column: gr.Column
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    clear: gr.Button
    system_prompt: gr.Textbox
    temperature: gr.Slider
    max_tokens: gr.Slider
    share_row: gr.Row  # ui/share_page.py puts its Share button and link here


def build_compare_page(
    demo: gr.Blocks,
    settings: Settings,
    client: BackendClient,
    directory: ModelDirectory,
    *,
    limiter: RateLimiter | None = None,
    tracker: ColdStartTracker | None = None,
    prewarmer: Prewarmer | None = None,
) -> ComparePage:
    """Lay out the Compare tab inside the current Blocks context and wire its events."""
    page = ComparePage(
        settings, client, directory, limiter=limiter, tracker=tracker, prewarmer=prewarmer
    )
    page.components = _layout(settings)
    _wire(demo, page, page.components)
    return page


def _layout(settings: Settings) -> CompareComponents:
    banner = gr.HTML("", elem_id="compare-banner", padding=False)
    models = gr.Dropdown(
        label=f"Models to compare ({MIN_COMPARE_MODELS}-{MAX_COMPARE_MODELS})",
        choices=[],
        value=[],
        multiselect=True,
        max_choices=MAX_COMPARE_MODELS,
        # Values outside `choices` reach the handler, which checks them itself.
        allow_custom_value=True,
        elem_id="compare-models",
    )
    heads: list[gr.HTML] = []
    chats: list[gr.Chatbot] = []
    statuses: list[gr.HTML] = []
    columns: list[gr.Column] = []
    # Gradio rows wrap: a column narrower than its min_width moves to the next line, so
    # on a phone the columns stack.
    with gr.Row(equal_height=False, elem_classes=["compare-columns"], elem_id="compare-columns"):
        for slot in range(1, COLUMN_SLOTS + 1):
            with gr.Column(
                min_width=300, elem_id=f"compare-col-{slot}", visible=slot <= 2
            ) as column:
                heads.append(
                    gr.HTML(column_head_html(None), elem_id=f"compare-head-{slot}", padding=False)
                )
                chats.append(
                    gr.Chatbot(
                        label=f"Answer {slot}",
                        show_label=False,
                        elem_id=f"compare-chat-{slot}",
                        height=440,
                        buttons=["copy"],
                        feedback_options=None,
                        placeholder="The answer appears here.",
                        autoscroll=True,
                    )
                )
                # Under the answer: first token, speed, tokens, load time (or warming).
                statuses.append(gr.HTML("", elem_id=f"compare-status-{slot}", padding=False))
            columns.append(column)
    with gr.Row(equal_height=True, elem_id="compare-composer"):
        message = gr.Textbox(
            label="Prompt",
            show_label=False,
            placeholder="One prompt for every model; press Enter to send",
            lines=1,
            max_lines=8,
            scale=6,
            elem_id="compare-message",
            container=False,
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="compare-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="compare-stop")
        clear = gr.Button("Clear", scale=1, min_width=80, elem_id="compare-clear")
    with gr.Accordion("Parameters (apply to every model)", open=False, elem_id="compare-params"):
        system_prompt = gr.Textbox(
            label="System prompt",
            placeholder="Optional, e.g. “Answer in one sentence.”",
            lines=2,
            max_lines=8,
            elem_id="compare-system-prompt",
        )
        with gr.Row():
            temperature = gr.Slider(
                *TEMPERATURE_RANGE,
                value=DEFAULT_TEMPERATURE,
                step=0.05,
                label="Temperature",
                elem_id="compare-temperature",
            )
            max_tokens = gr.Slider(
                1,
                settings.max_tokens_limit,
                value=min(DEFAULT_COMPARE_MAX_TOKENS, settings.max_tokens_limit),
                step=1,
                label="Max tokens",
                elem_id="compare-max-tokens",
            )
    with gr.Row(equal_height=True, elem_id="compare-share-row") as share_row:
        pass
    return CompareComponents(
        banner, models, heads, chats, statuses, columns[2], message, send, stop, clear,
        system_prompt, temperature, max_tokens, share_row,
    )  # fmt: skip


def _wire(demo: gr.Blocks, page: ComparePage, c: CompareComponents) -> None:
    column_outputs: list[Any] = []
    for chat, status in zip(c.chats, c.statuses, strict=True):
        column_outputs += [chat, status]
    compare_event = gr.on(
        triggers=[c.message.submit, c.send.click],
        fn=page.compare,
        inputs=[c.message, c.models, c.system_prompt, c.temperature, c.max_tokens, *c.chats],
        outputs=[c.message, c.banner, *column_outputs],
        api_name="compare",
        # Raw values: the handler checks them itself (see ui/chat_page.py).
        preprocess=False,
        # Each column shows its own progress in its status line.
        show_progress="hidden",
        concurrency_limit="default",
    )
    c.stop.click(page.stop, api_name="compare_stop", queue=False, show_progress="hidden").failure(
        fn=None, cancels=[compare_event]
    )
    clear_js = "() => [" + ", ".join(["[]", "''"] * COLUMN_SLOTS) + ", '']"
    c.clear.click(fn=None, js=clear_js, outputs=[*column_outputs, c.banner])
    # A new choice of models starts a new comparison (the user's change only: a value set
    # by "Continue from a copy" comes with its conversations).
    c.models.input(fn=None, js=clear_js, outputs=[*column_outputs, c.banner])
    c.models.change(
        column_layout,
        inputs=[c.models],
        outputs=[*c.heads, c.third_column],
        queue=False,
        api_visibility="undocumented",
        show_progress="hidden",
        preprocess=False,
    )
    prewarm: dict[str, Any] = {
        "fn": page.prewarm, "inputs": [c.models], "api_visibility": "undocumented",
        "show_progress": "hidden", "preprocess": False,
    }  # fmt: skip
    c.models.input(queue=False, **prewarm)
    demo.load(
        page.on_load,
        outputs=[c.models, c.message, c.banner, *c.heads, c.third_column],
        api_visibility="undocumented",
        show_progress="hidden",
    ).then(**{**prewarm, "fn": page.prewarm_linked})
