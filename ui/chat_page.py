"""The Chat tab: a streaming chat with a model picker, parameters and per-reply stats.

Stateless by design: the conversation is the Chatbot's value, which the browser sends with
each request and keeps in `gr.BrowserState` (localStorage) between visits, so any UI
instance can serve any request.

API endpoints (for `gradio_client`; all inputs are checked here, not by the widgets):

    /chat   (message, history, model, system_prompt, temperature, top_p, max_tokens)
            -> (message box, history, banner)        streams
    /retry  (history, model, system_prompt, temperature, top_p, max_tokens)
            -> (message box, history, banner)        streams a new last reply
    /undo   (history) -> (history, message box)      gives the last message back
    /stop   ()                                       ends this session's running reply
    /models () -> [{"tag", "label", "family", "parameter_size", "chat_tuned"}]

The banner slot: the streaming handlers have the banner (a `gr.HTML` above the chat, empty
by default) as their third output. `ChatPage.stream_reply` yields `(history, banner)`
pairs (banner is HTML, "" = hidden). While the backend is cold the banner shows the warming
phase with elapsed and typical seconds (`ui.warming`); the first token clears it. Page load
and a model change pre-warm the backend (`Prewarmer`).
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from catalog import find
from ui.backend_client import BackendClient, ReplyDone, ReplyStats, TokenDelta
from ui.chat_history import (
    HistoryRejected,
    Message,
    ReplyFigures,
    conversation,
    error_note,
    fit_to_context,
    history_before,
    parse_history,
    split_last_user_turn,
    stats_note,
    stopped_note,
)
from ui.deep_links import chat_link, notice_html, query_params
from ui.errors import BackendError, InputRejected
from ui.model_directory import ModelDirectory, ModelRejected
from ui.rate_limit import RateLimiter, client_key
from ui.settings import Settings
from ui.stop_signals import StopSignals, until_stopped
from ui.stream_pacing import interval_for_history, paced
from ui.warming import ColdStartTracker, Prewarmer, WarmingStatus, stream_with_warmup

logger = logging.getLogger(__name__)

# Sampling parameter ranges (Ollama accepts these; the widgets use the same bounds).
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_P_RANGE = (0.0, 1.0)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
DEFAULT_MAX_TOKENS = 512
MODEL_LIST_DEADLINE_S = 5.0  # the picker falls back to the allow-list after this
BROWSER_STORAGE_KEY = "serverless-llm-chat/history"
# BrowserState encrypts localStorage with a key that is sent to the page anyway, so it is
# not a secret; it must only be the same on every instance and after restarts, or a
# reload served by another instance could not read the saved chat.
BROWSER_STORAGE_KEY_MATERIAL = "serverless-llm-chat/browser-history/v1"

EMPTY_MESSAGE_HINT = "Type a message first: empty messages are not sent."

# Run in the browser: copy the chat into the BrowserState and back (no server round trip).
# A js function's returned array is read as one value per output, hence the extra [...].
SAVE_HISTORY_JS = "(history) => [history]"
RESTORE_HISTORY_JS = "(saved) => [Array.isArray(saved) ? saved : []]"


@dataclass
class PreparedTurn:
    """A checked request, ready to stream."""

    model: str
    display: list[Message]  # the history to show, ending with the user's message
    messages: list[Message]  # what the backend gets: system + fitted turns
    options: dict[str, Any]
    notices: list[str] = field(default_factory=list)
    session: str | None = None  # Gradio session hash: the Stop button finds the stream by it


def banner_html(text: str, kind: str = "info") -> str:
    """A one-line banner for the slot above the chat (kind: info, warning, error)."""
    return f'<div class="chat-banner chat-banner-{kind}" role="status">{html.escape(text)}</div>'


# === input checks =========================================================================
def check_number(
    name: str, value: object, low: float, high: float, *, integer: bool = False
) -> tuple[float, str | None]:
    """A sampling parameter: wrong types are rejected, out-of-range values clamped with a
    notice. Returns (value, notice or None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputRejected(f"{name} must be a number, not {_describe(value)}.")
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


def _fmt(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _describe(value: object) -> str:
    if value is None:
        return "empty"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"


# === the page =============================================================================
class ChatPage:
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
        self.client = client
        self.directory = directory
        self.limiter = limiter or RateLimiter(settings.rate_limit_per_minute)
        self.tracker = tracker or ColdStartTracker(settings.typical_cold_start)
        self.prewarmer = prewarmer or Prewarmer(client)
        self.stops = StopSignals()
        self.components: ChatComponents | None = None  # set by build_chat_page

    # --- checks ---------------------------------------------------------------------------
    def check_message(self, message: object) -> str | None:
        """The message to send, None if it is empty, or InputRejected."""
        if message is None:
            return None
        if not isinstance(message, str):
            raise InputRejected(f"The message must be text, not {_describe(message)}.")
        if not message.strip():
            return None
        limit = self.settings.max_message_chars
        if len(message) > limit:
            raise InputRejected(
                f"Your message is {len(message):,} characters long; the limit is {limit:,}. "
                "Shorten it and send again."
            )
        return message

    def check_system_prompt(self, system_prompt: object) -> str:
        if system_prompt is None:
            return ""
        if not isinstance(system_prompt, str):
            raise InputRejected(f"The system prompt must be text, not {_describe(system_prompt)}.")
        limit = self.settings.max_message_chars
        if len(system_prompt) > limit:
            raise InputRejected(
                f"The system prompt is {len(system_prompt):,} characters long; "
                f"the limit is {limit:,}."
            )
        return system_prompt

    def check_options(
        self, temperature: object, top_p: object, max_tokens: object
    ) -> tuple[dict[str, Any], list[str]]:
        """Ollama options from the widgets' values, plus notices about clamped values."""
        temp, n1 = check_number("Temperature", temperature, *TEMPERATURE_RANGE)
        top, n2 = check_number("Top-p", top_p, *TOP_P_RANGE)
        limit = self.settings.max_tokens_limit
        tokens, n3 = check_number("Max tokens", max_tokens, 1, limit, integer=True)
        notices = [n for n in (n1, n2, n3) if n]
        return {"temperature": temp, "top_p": top, "num_predict": int(tokens)}, notices

    def check_rate(self, request: gr.Request | None) -> None:
        wait = self.limiter.acquire(client_key(request))
        if wait is not None:
            raise InputRejected(
                f"Too many messages: the limit is {self.limiter.limit} per minute. "
                f"Try again in {math.ceil(wait)} s."
            )

    async def prepare(
        self,
        earlier: list[Message],
        text: str,
        model: object,
        system_prompt: object,
        temperature: object,
        top_p: object,
        max_tokens: object,
        request: gr.Request | None,
    ) -> PreparedTurn:
        """Check everything, then fit the conversation into the context. Raises
        InputRejected / ModelRejected; nothing reaches the backend before this passes."""
        system = self.check_system_prompt(system_prompt)
        options, notices = self.check_options(temperature, top_p, max_tokens)
        name = await self.directory.check(model)
        self.check_rate(request)
        display = [*earlier, {"role": "user", "content": text}]
        fitted = fit_to_context(
            system,
            conversation(display),
            context_tokens=self.settings.context_tokens,
            reply_tokens=options["num_predict"],
        )
        if fitted.dropped:
            notices.append(
                f"The {fitted.dropped} oldest message{'s' if fitted.dropped > 1 else ''} "
                f"were left out to fit the model's context (about "
                f"{self.settings.context_tokens:,} tokens)."
            )
        # num_ctx is deliberately not sent: Ollama reloads a model whose context size changes,
        # so the backend's own setting (OLLAMA_CONTEXT_LENGTH) rules and context_tokens
        # should match it.
        session = getattr(request, "session_hash", None) if request is not None else None
        return PreparedTurn(name, display, fitted.messages, options, notices, session)

    # --- streaming ----------------------------------------------------------------------------
    async def stream_reply(self, turn: PreparedTurn) -> AsyncIterator[tuple[list[Message], str]]:
        """Yield (history, banner HTML) updates for one reply.

        The partial reply is kept on errors; an error note under it says what happened.
        The Stop button ends the stream early (see `stop`); the reply then gets a
        "stopped" note.
        """
        stop = self.stops.register(turn.session) if turn.session else None
        try:
            async for update in self._stream_reply(turn, stop):
                yield update
        finally:
            if stop is not None and turn.session:
                self.stops.release(turn.session, stop)

    async def _stream_reply(
        self, turn: PreparedTurn, stop: asyncio.Event | None
    ) -> AsyncIterator[tuple[list[Message], str]]:
        display = turn.display
        started = time.monotonic()
        first_token_s: float | None = None
        reply = ""
        stats: ReplyStats | None = None
        try:
            # Sent once; before the first token a cold backend yields warming updates.
            events = stream_with_warmup(
                self.client, turn.model, turn.messages, tracker=self.tracker,
                options=turn.options,
            )  # fmt: skip
            # At most one page update per interval (50 ms; longer when many replies stream
            # at once or the chat is long): an update costs the UI far more than a token.
            interval = interval_for_history(len(display))
            async for batch in until_stopped(paced(events, interval), stop):
                banner: str | None = None
                grew = False
                for event in batch:
                    if isinstance(event, WarmingStatus):
                        banner = event.html()
                    elif isinstance(event, TokenDelta):
                        reply += event.text
                        grew = True
                        if first_token_s is None:
                            first_token_s = time.monotonic() - started
                    elif isinstance(event, ReplyDone):
                        stats = event.stats
                if grew:
                    # The reply is flowing: the banner (e.g. "warming up") is cleared.
                    yield [*display, _reply(reply)], ""
                elif banner is not None and not reply:
                    yield display, banner
        except BackendError as exc:
            logger.warning(
                "Chat with %s failed after %d chars: %s", turn.model, len(reply), exc.user_message
            )
            shown = [*display, _reply(reply)] if reply else list(display)
            note = error_note(exc.user_message, partial=bool(reply), notices=turn.notices)
            yield [*shown, note], ""
            return
        total_s = time.monotonic() - started
        shown = [*display, _reply(reply)] if reply else list(display)
        notices = list(turn.notices)
        if stats is None:  # the stream ended without its final line: Stop was pressed
            logger.info("Reply from %s stopped by the user after %.2f s", turn.model, total_s)
            figures = _figures(turn.model, None, first_token_s, total_s, notices)
            yield [*shown, stopped_note(figures)], ""
            return
        if not reply:
            notices.append("The model returned an empty reply.")
        figures = _figures(turn.model, stats, first_token_s, total_s, notices)
        logger.info(
            "Reply from %s: %s tokens, first token %.2f s, total %.2f s",
            turn.model,
            figures.eval_count,
            first_token_s or -1.0,
            total_s,
        )
        yield [*shown, stats_note(figures)], ""

    # --- Gradio handlers ------------------------------------------------------------------
    # A rejected request changes nothing (the message stays in the box) and says why in the
    # banner. It is not raised as gr.Error: Gradio would then cover the whole chat with an
    # "Error" overlay. API callers read the reason from the banner output.
    async def chat(
        self,
        message: object,
        history: object,
        model: object,
        system_prompt: object,
        temperature: object,
        top_p: object,
        max_tokens: object,
        request: gr.Request,
    ) -> AsyncIterator[tuple[Any, Any, Any]]:
        try:
            earlier = parse_history(history)
            text = self.check_message(message)
            if text is None:
                yield gr.skip(), gr.skip(), banner_html(EMPTY_MESSAGE_HINT)
                return
            turn = await self.prepare(
                earlier, text, model, system_prompt, temperature, top_p, max_tokens, request
            )
        except (InputRejected, ModelRejected, HistoryRejected) as exc:
            yield _rejected(exc.user_message)
            return
        async for update in self._run(turn, clear_box=True):
            yield update

    async def retry(
        self,
        history: object,
        model: object,
        system_prompt: object,
        temperature: object,
        top_p: object,
        max_tokens: object,
        request: gr.Request,
    ) -> AsyncIterator[tuple[Any, Any, Any]]:
        try:
            earlier, text = split_last_user_turn(parse_history(history))
            if text is None:
                yield gr.skip(), gr.skip(), banner_html("There is no message to retry yet.")
                return
            turn = await self.prepare(
                earlier, text, model, system_prompt, temperature, top_p, max_tokens, request
            )
        except (InputRejected, ModelRejected, HistoryRejected) as exc:
            yield _rejected(exc.user_message)
            return
        async for update in self._run(turn, clear_box=False):
            yield update

    async def edit(
        self,
        history: object,
        model: object,
        system_prompt: object,
        temperature: object,
        top_p: object,
        max_tokens: object,
        edit_data: gr.EditData,
        request: gr.Request,
    ) -> AsyncIterator[tuple[Any, Any, Any]]:
        """A sent user message was edited: drop it and what followed, send the new text.
        If the new text is rejected, the old one is put back."""
        index = edit_data.index[0] if isinstance(edit_data.index, list | tuple) else edit_data.index
        try:
            display = parse_history(history)
            earlier = history_before(display, int(index))
            if display[int(index)]["role"] != "user":
                raise InputRejected("Only your own messages can be edited.")
        except (InputRejected, HistoryRejected, ValueError, TypeError) as exc:
            yield _rejected(getattr(exc, "user_message", "That message cannot be edited."))
            return
        restored = list(display)
        restored[int(index)] = {"role": "user", "content": _edited_text(edit_data.previous_value)}
        try:
            text = self.check_message(_edited_text(edit_data.value))
            if text is None:
                yield gr.skip(), restored, banner_html(EMPTY_MESSAGE_HINT)
                return
            turn = await self.prepare(
                earlier, text, model, system_prompt, temperature, top_p, max_tokens, request
            )
        except (InputRejected, ModelRejected, HistoryRejected) as exc:
            _, _, banner = _rejected(exc.user_message)
            yield gr.skip(), restored, banner
            return
        async for update in self._run(turn, clear_box=False):
            yield update

    async def undo(self, history: object) -> tuple[Any, Any]:
        """Remove the last message and its reply; give the message back for editing."""
        try:
            earlier, text = split_last_user_turn(parse_history(history))
        except HistoryRejected as exc:
            gr.Warning(exc.user_message)
            return gr.skip(), gr.skip()
        return earlier, (text if text is not None else gr.skip())

    async def stop(self, request: gr.Request) -> None:
        """Stop this page's running reply. Raises (silently) when none is running, so the
        wiring can fall back to cancelling a request that is still waiting in the queue."""
        session = getattr(request, "session_hash", None)
        if not (session and self.stops.stop(session)):
            raise gr.Error("No reply is being generated.", visible=False, print_exception=False)

    async def _run(
        self, turn: PreparedTurn, *, clear_box: bool
    ) -> AsyncIterator[tuple[Any, Any, Any]]:
        for notice in turn.notices:
            gr.Warning(notice)
        # Show the user's message at once, before the first token.
        box = "" if clear_box else gr.skip()
        yield box, turn.display, ""
        async for history, banner in self.stream_reply(turn):
            yield box, history, banner

    async def prewarm(self, model: object) -> None:
        """Wake the backend and load `model` in the background (page load, model change).
        Returns at once; nothing periodic, so no GPU is kept warm without a user."""
        if isinstance(model, str) and self.directory.is_allowed(model.strip()):
            try:
                name = await self.directory.check(model)
            except ModelRejected:
                return
            self.prewarmer.warm(name)

    async def model_dropdown(self, request: gr.Request) -> Any:
        """Fill the picker; a deep link (?model=, ?q=) preselects the model and fills the
        message box. Bad link values are ignored with a notice in the banner."""
        choices = await self.directory.choices(deadline=MODEL_LIST_DEADLINE_S)
        if choices.problem and not choices.labels:  # with an allow-list the picker still works
            gr.Warning(f"Could not ask the backend for its models: {choices.problem}")
        options = choices.dropdown_choices
        # Prefer a chat-tuned model: a base model rambles instead of answering.
        preferred = next((lbl.tag for lbl in choices.labels if lbl.chat_tuned), None)
        value = preferred or (options[0][1] if options else None)
        link = chat_link(
            query_params(request), [t for _, t in options], self.settings.max_message_chars
        )
        value = link.models[0] if link.models else value
        prompt = link.prompt if link.prompt is not None else gr.skip()
        notice = notice_html(link.notices) if link.notices else gr.skip()
        return gr.Dropdown(choices=options, value=value), _model_info(value), prompt, notice

    async def models_api(self) -> list[dict[str, Any]]:
        """The models this UI offers, with their labels."""
        choices = await self.directory.choices(deadline=MODEL_LIST_DEADLINE_S)
        if choices.problem and not choices.labels:
            raise gr.Error(f"Could not ask the backend for its models: {choices.problem}")
        return [
            {
                "tag": lbl.tag,
                "label": lbl.text,
                "family": lbl.family_label,
                "parameter_size": lbl.parameter_size,
                "chat_tuned": lbl.chat_tuned,
            }
            for lbl in choices.labels
        ]


def _rejected(reason: str) -> tuple[Any, Any, Any]:
    """Outputs for a request that was not sent: box and chat unchanged, reason shown."""
    return gr.skip(), gr.skip(), banner_html(reason, "error")


def _reply(text: str) -> Message:
    return {"role": "assistant", "content": text}


def _edited_text(value: object) -> object:
    """EditData values arrive as text or as Gradio's content list."""
    if isinstance(value, list):
        texts = [p.get("text") if isinstance(p, dict) else p for p in value]
        return "".join(t for t in texts if isinstance(t, str))
    if isinstance(value, dict):
        return value.get("text", "")
    return value


def _figures(
    model: str,
    stats: ReplyStats | None,
    first_token_s: float | None,
    total_s: float,
    notices: list[str],
) -> ReplyFigures:
    return ReplyFigures(
        ttft_s=first_token_s,
        total_s=total_s,
        tokens_per_s=stats.tokens_per_second if stats else None,
        eval_count=stats.eval_count if stats else None,
        prompt_tokens=stats.prompt_eval_count if stats else None,
        load_s=stats.load_seconds if stats else None,
        done_reason=stats.done_reason if stats else None,
        model=model,
        notices=notices,
    )


def _model_info(tag: str | None) -> str:
    if not tag:
        return ""
    spec = find(tag)
    if spec is None:
        return f"`{tag}`"
    return f"**{spec.display_name}** · {spec.quantization}  \n{spec.description}"


# === layout and wiring ==================================================================
def build_chat_page(
    demo: gr.Blocks,
    settings: Settings,
    client: BackendClient,
    directory: ModelDirectory,
    *,
    tracker: ColdStartTracker | None = None,
    prewarmer: Prewarmer | None = None,
) -> ChatPage:
    """Lay out the chat inside the current Blocks context (a Tab) and wire its events."""
    page = ChatPage(settings, client, directory, tracker=tracker, prewarmer=prewarmer)
    page.components = _layout(settings)
    _wire(demo, page, page.components)
    return page


@dataclass
class ChatComponents:
    banner: gr.HTML
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    model: gr.Dropdown
    model_info: gr.Markdown
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider
    store: gr.BrowserState


def _layout(settings: Settings) -> ChatComponents:
    banner = gr.HTML("", label="Status", elem_id="chat-banner", padding=False)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=360):
            chatbot = gr.Chatbot(
                label="Chat",
                elem_id="chatbot",
                height=520,
                editable="user",
                buttons=["copy", "copy_all"],
                feedback_options=None,
                placeholder="Pick a model, then say hello.",
                autoscroll=True,
            )
            with gr.Row(elem_id="composer", equal_height=True):
                message = gr.Textbox(
                    label="Message",
                    show_label=False,
                    placeholder="Type a message and press Enter",
                    lines=1,
                    max_lines=8,
                    scale=6,
                    elem_id="message",
                    autofocus=True,
                    container=False,
                )
                send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop")
        with gr.Column(scale=1, min_width=260):
            model = gr.Dropdown(
                label="Model",
                choices=[],
                value=None,
                interactive=True,
                elem_id="model",
                # Values outside `choices` reach the handler, which checks them itself.
                allow_custom_value=True,
            )
            model_info = gr.Markdown("", elem_id="model-info")
            system_prompt = gr.Textbox(
                label="System prompt",
                placeholder="Optional, e.g. “You are a concise assistant.”",
                lines=3,
                max_lines=10,
                elem_id="system-prompt",
            )
            with gr.Accordion("Parameters", open=True):
                temperature = gr.Slider(
                    *TEMPERATURE_RANGE,
                    value=DEFAULT_TEMPERATURE,
                    step=0.05,
                    label="Temperature",
                    elem_id="temperature",
                )
                top_p = gr.Slider(
                    *TOP_P_RANGE, value=DEFAULT_TOP_P, step=0.01, label="Top-p", elem_id="top-p"
                )
                max_tokens = gr.Slider(
                    1,
                    settings.max_tokens_limit,
                    value=min(DEFAULT_MAX_TOKENS, settings.max_tokens_limit),
                    step=1,
                    label="Max tokens",
                    elem_id="max-tokens",
                )
    store = gr.BrowserState(
        [], storage_key=BROWSER_STORAGE_KEY, secret=BROWSER_STORAGE_KEY_MATERIAL
    )
    return ChatComponents(
        banner, chatbot, message, send, stop, model, model_info, system_prompt,
        temperature, top_p, max_tokens, store,
    )  # fmt: skip


def _wire(demo: gr.Blocks, page: ChatPage, c: ChatComponents) -> None:
    params = [c.model, c.system_prompt, c.temperature, c.top_p, c.max_tokens]
    stream_outputs = [c.message, c.chatbot, c.banner]
    # preprocess=False: handlers get the raw values and check them themselves, so API
    # callers get the same clear answers as the widgets (sliders would otherwise reject
    # out-of-range values with Gradio's own error, and crash on wrong types).
    stream_kwargs: dict[str, Any] = {
        "preprocess": False,
        "show_progress": "minimal",
        "show_progress_on": [c.chatbot],
        "concurrency_limit": "default",
    }
    save: dict[str, Any] = {
        "fn": None, "js": SAVE_HISTORY_JS, "inputs": [c.chatbot], "outputs": [c.store]
    }  # fmt: skip

    chat_event = gr.on(
        triggers=[c.message.submit, c.send.click],
        fn=page.chat,
        inputs=[c.message, c.chatbot, *params],
        outputs=stream_outputs,
        api_name="chat",
        **stream_kwargs,
    )
    retry_event = c.chatbot.retry(
        page.retry, inputs=[c.chatbot, *params], outputs=stream_outputs, api_name="retry",
        **stream_kwargs,
    )  # fmt: skip
    edit_event = c.chatbot.edit(
        page.edit, inputs=[c.chatbot, *params], outputs=stream_outputs, api_name="edit",
        api_visibility="undocumented", **stream_kwargs,
    )  # fmt: skip
    for event in (chat_event, retry_event, edit_event):
        event.then(**save)

    # Stop ends a running stream gracefully (see ui/stop_signals.py); only when none runs
    # (the request is still queued) does Gradio's cancel remove it from the queue.
    c.stop.click(page.stop, api_name="stop", queue=False, show_progress="hidden").failure(
        fn=None, cancels=[chat_event, retry_event, edit_event]
    )
    c.chatbot.undo(
        page.undo, inputs=[c.chatbot], outputs=[c.chatbot, c.message], api_name="undo",
        preprocess=False, queue=False,
    ).then(**save)  # fmt: skip
    c.chatbot.clear(fn=None, js="() => [[], '']", outputs=[c.store, c.banner])

    demo.load(fn=None, js=RESTORE_HISTORY_JS, inputs=[c.store], outputs=[c.chatbot])
    demo.load(
        page.model_dropdown,
        outputs=[c.model, c.model_info, c.message, c.banner],
        api_visibility="undocumented",
        show_progress="hidden",
    ).then(page.prewarm, inputs=[c.model], api_name="prewarm", show_progress="hidden")
    c.model.input(page.prewarm, inputs=[c.model], show_progress="hidden", queue=False)
    c.model.change(
        lambda tag: _model_info(tag if isinstance(tag, str) else None),
        inputs=[c.model],
        outputs=[c.model_info],
        queue=False,
        api_visibility="undocumented",
        show_progress="hidden",
    )
    gr.api(page.models_api, api_name="models")
