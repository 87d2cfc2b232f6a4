"""Share links for chats and comparisons, and the read-only view they open.

A link carries its conversation (compressed, signed: ui/share.py), so it opens after a
restart and on any instance that has the same LLM_SHARE_SECRET; nothing is stored. The base
of the link is LLM_PUBLIC_URL when set, else the address the browser used (Gradio's own
reading of the request, which honours X-Forwarded-Host/-Proto behind a proxy).

API endpoints:

    /share_chat     (history, model, system_prompt, temperature, top_p, max_tokens)
                    -> (link, notice)
    /share_compare  (models, system_prompt, temperature, max_tokens,
                     history_1, history_2, history_3) -> (link, notice)
    /continue_copy  (token) -> loads a shared conversation into the Chat or Compare tab

A link that is too long for a URL is made for the last turns that fit, and the notice
says so. Opening `/?share=TOKEN` shows the "Shared" tab: the models, parameters, messages
and per-reply stats, read-only, with "Continue from a copy". A changed or foreign link
shows a message there, never an error page.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gradio as gr
from gradio import route_utils
from pydantic import ValidationError

from catalog import find
from ui.chat_history import (
    Message,
    ReplyFigures,
    is_note,
    parse_history,
    read_stats_note,
    stats_note,
)
from ui.context import AppContext
from ui.deep_links import (
    MAX_COMPARE_MODELS,
    PARAM_SHARE,
    TAB_CHAT,
    TAB_COMPARE,
    initial_tab,
    query_params,
)
from ui.errors import InputRejected
from ui.render import banner_html as notice
from ui.render import column_head_html
from ui.settings import Settings
from ui.share import (
    ReplyStats,
    SharedColumn,
    SharedConversation,
    SharedMessage,
    ShareLinkError,
    ShareParameters,
    count_turns,
    decode_share,
    fit_to_share_limit,
    share_url,
)
from ui.turns import DEFAULT_TOP_P, TEMPERATURE_RANGE, TOP_P_RANGE, check_models, check_parameters

logger = logging.getLogger(__name__)

NOTHING_TO_SHARE = "There is nothing to share yet: send a message first."
COLUMN_SLOTS = MAX_COMPARE_MODELS  # columns the shared view lays out


# === conversions between the Chatbot's messages and the share format ====================
def to_shared_messages(history: Sequence[Message]) -> list[SharedMessage]:
    """Display messages (with stats notes) as shared messages (stats on their replies).
    Error and "stopped" notes are left out: they are about this browser's session."""
    shared: list[SharedMessage] = []
    for message in history:
        if is_note(message):
            figures = read_stats_note(message)
            last = shared[-1] if shared else None
            if figures and last is not None and last.role == "assistant" and last.stats is None:
                stats = ReplyStats(**figures)  # type: ignore[arg-type]
                shared[-1] = last.model_copy(update={"stats": stats})
            continue
        if message["role"] == "system":
            continue
        shared.append(SharedMessage(role=message["role"], content=message["content"]))
    return shared


def to_display_messages(column: SharedColumn) -> list[Message]:
    """The Chatbot messages for a shared column: replies get their stats line back."""
    shown: list[Message] = []
    for message in column.messages:
        shown.append({"role": message.role, "content": message.content})
        if message.stats is not None:
            s = message.stats
            figures = ReplyFigures(
                ttft_s=s.ttft_s,
                total_s=s.total_s,
                tokens_per_s=s.tokens_per_s,
                eval_count=s.eval_count,
                load_s=s.load_s,
                model=column.model,
            )
            shown.append(stats_note(figures))
    return shown


def shared_column(model: str, history: Sequence[Message]) -> SharedColumn:
    spec = find(model)
    return SharedColumn(
        model=model,
        display_name=spec.display_name if spec else None,
        messages=to_shared_messages(history),
    )


# === making links ========================================================================
def request_base_url(request: Any) -> str | None:
    """The app's root URL as the browser reached it (None if it cannot be told)."""
    raw = getattr(request, "request", None) if request is not None else None
    if raw is None:
        return None
    try:
        path = urlsplit(str(raw.url)).path
        cut = path.find("/gradio_api/")
        route = path[cut:] if cut >= 0 else path
        return str(route_utils.get_request_origin(raw, route)).rstrip("/") + "/"
    except (AttributeError, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class ShareOutcome:
    url: str
    notice_html: str


class ShareService:
    """Mints share links; holds the signing key (it never leaves the server)."""

    def __init__(self, settings: Settings, secret: bytes) -> None:
        self.settings = settings
        self.secret = secret

    def base_url(self, request: Any) -> str:
        if self.settings.public_url:
            return self.settings.public_url
        found = request_base_url(request)
        if found is None:
            raise ShareLinkError(
                "The app's public address is unknown, so no link can be made: set "
                "LLM_PUBLIC_URL (e.g. https://chat.example.com)."
            )
        return found

    def link(self, conv: SharedConversation, request: Any) -> ShareOutcome:
        """A link for `conv`, or for its last turns when all of it does not fit."""
        total = count_turns(conv)
        token, kept, dropped = fit_to_share_limit(conv, self.secret)
        url = share_url(self.base_url(request), token)
        what = "comparison" if conv.kind == "compare" else "conversation"
        if dropped:
            text = (
                f"This {what} is too long to fit in one link ({total} turns), so this link "
                f"shares only the last {kept} turn{'s' if kept != 1 else ''}."
            )
            return ShareOutcome(url, notice(text, "warning"))
        text = (
            f"Link ready: whoever opens it sees this {what} read-only and can continue "
            "from a copy. The link itself holds the text, so anyone with it can read it."
        )
        return ShareOutcome(url, notice(text))


class ShareHandlers:
    """The Share buttons of the Chat and Compare tabs."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.service = ShareService(ctx.settings, ctx.secret)

    def _parameters(
        self, system_prompt: object, temperature: object, top_p: object, max_tokens: object
    ) -> ShareParameters:
        params = check_parameters(self.ctx, system_prompt, temperature, top_p, max_tokens)
        return ShareParameters(
            system_prompt=params.system_prompt or None,
            temperature=params.options["temperature"],
            top_p=params.options["top_p"],
            max_tokens=params.max_tokens,
        )

    def _make(self, build: Any, request: Any) -> tuple[str, str]:
        try:
            conv = build()
            if conv is None:
                return "", notice(NOTHING_TO_SHARE, "warning")
            outcome = self.service.link(conv, request)
        except InputRejected as exc:  # also a malformed history or a link too long
            return "", notice(exc.user_message, "error")
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            return "", notice(f"This cannot be shared: {first['msg']}.", "error")
        except ValueError as exc:  # e.g. a malformed LLM_PUBLIC_URL
            return "", notice(str(exc), "error")
        return outcome.url, outcome.notice_html

    async def share_chat(
        self,
        history: object,
        model: object,
        system_prompt: object,
        temperature: object,
        top_p: object,
        max_tokens: object,
        request: gr.Request,
    ) -> tuple[str, str]:
        try:
            [name] = await check_models(self.ctx, model, several=False)
        except InputRejected as exc:
            return "", notice(exc.user_message, "error")

        def build() -> SharedConversation | None:
            messages = parse_history(history)
            if not any(m["role"] == "user" for m in messages):
                return None
            return SharedConversation(
                kind="chat",
                columns=[shared_column(name, messages)],
                parameters=self._parameters(system_prompt, temperature, top_p, max_tokens),
            )

        return self._make(build, request)

    async def share_compare(
        self,
        models: object,
        system_prompt: object,
        temperature: object,
        max_tokens: object,
        history_1: object,
        history_2: object,
        history_3: object,
        request: gr.Request,
    ) -> tuple[str, str]:
        try:
            checked = await check_models(self.ctx, models, several=True)
        except InputRejected as exc:
            return "", notice(exc.user_message, "error")
        histories = [history_1, history_2, history_3][: len(checked)]

        def build() -> SharedConversation | None:
            parsed = [parse_history(h) for h in histories]
            if not any(m["role"] == "user" for h in parsed for m in h):
                return None
            return SharedConversation(
                kind="compare",
                columns=[shared_column(n, h) for n, h in zip(checked, parsed, strict=True)],
                # Compare sends the chat's default top-p (it has no top-p control).
                parameters=self._parameters(system_prompt, temperature, DEFAULT_TOP_P, max_tokens),
            )

        return self._make(build, request)


def share_controls(prefix: str) -> tuple[gr.Button, gr.Textbox, gr.HTML]:
    """A Share button, the link box (with a copy button) and a notice line."""
    with gr.Row(equal_height=True, elem_id=f"{prefix}-share-controls"):
        button = gr.Button(
            "Share link", size="sm", scale=0, min_width=110, elem_id=f"{prefix}-share"
        )
        link = gr.Textbox(
            "",
            show_label=False,
            placeholder="Press Share to get a link to this conversation",
            lines=1,
            max_lines=1,
            interactive=False,
            buttons=["copy"],
            scale=6,
            container=False,
            elem_id=f"{prefix}-share-link",
        )
    message = gr.HTML("", elem_id=f"{prefix}-share-notice", padding=False)
    return button, link, message


def wire_chat_share(handlers: ShareHandlers, inputs: list[Any]) -> None:
    """The Chat tab's Share button; `inputs` as /share_chat takes them."""
    button, link, message = share_controls("chat")
    button.click(
        handlers.share_chat,
        inputs=inputs,
        outputs=[link, message],
        api_name="share_chat",
        preprocess=False,
        show_progress="hidden",
    )


def wire_compare_share(handlers: ShareHandlers, inputs: list[Any], row: gr.Row) -> None:
    """The Compare tab's Share button, put in `row`; `inputs` as /share_compare takes them."""
    with row:
        button, link, message = share_controls("compare")
    button.click(
        handlers.share_compare,
        inputs=inputs,
        outputs=[link, message],
        api_name="share_compare",
        preprocess=False,
        show_progress="hidden",
    )


# === the read-only view ==================================================================
def _clamp(value: float | None, low: float, high: float) -> float | None:
    return None if value is None else min(max(value, low), high)


def _or_skip(value: object) -> Any:
    return gr.skip() if value is None else value


def summary_html(conv: SharedConversation) -> str:
    names = [column.label for column in conv.columns]
    what = (
        f"Shared chat with {names[0]}"
        if conv.kind == "chat"
        else f"Shared comparison of {', '.join(names)}"
    )
    created = conv.created_at.strftime("%Y-%m-%d %H:%M UTC")
    p = conv.parameters
    params = []
    if p.temperature is not None:
        params.append(f"temperature {p.temperature:g}")
    if p.top_p is not None:
        params.append(f"top-p {p.top_p:g}")
    if p.max_tokens is not None:
        params.append(f"max tokens {p.max_tokens}")
    system = (
        f"<div>System prompt:</div><pre>{html.escape(p.system_prompt)}</pre>"
        if p.system_prompt
        else "<div class='shared-params'>No system prompt.</div>"
    )
    return (
        '<div class="shared-summary">'
        f"<div><strong>{html.escape(what)}</strong> · created {html.escape(created)} · "
        "read-only</div>"
        f'<div class="shared-params">{html.escape(" · ".join(params) or "default parameters")}'
        f"</div>{system}</div>"
    )


@dataclass
class SharedViewComponents:
    tab: gr.Tab
    notice: gr.HTML
    summary: gr.HTML
    columns: list[gr.Column]
    heads: list[gr.HTML]
    chats: list[gr.Chatbot]
    token: gr.Textbox
    continue_button: gr.Button


class SharedView:
    def __init__(self, service: ShareService) -> None:
        self.service = service
        self.components: SharedViewComponents | None = None

    def decode(self, token: object) -> SharedConversation:
        if not isinstance(token, str):
            raise ShareLinkError("This share link is empty.")
        return decode_share(token, self.service.secret)

    async def on_load(self, request: gr.Request) -> tuple[Any, ...]:
        """Open ?share=TOKEN in the Shared tab; pick the tab a deep link asks for."""
        params = query_params(request)
        tab = initial_tab(params)
        select = gr.Tabs(selected=tab) if tab else gr.skip()
        token = params.get(PARAM_SHARE, "").strip()
        if not token:
            return (select, *[gr.skip()] * (5 + 3 * COLUMN_SLOTS))
        try:
            conv = self.decode(token)
        except ShareLinkError as exc:
            logger.info("Rejected a share link: %s", type(exc).__name__)
            hidden = [gr.Column(visible=False), gr.skip(), []] * COLUMN_SLOTS
            return (
                select, gr.Tab(visible=True), notice(exc.user_message, "error"), "",
                *hidden, "", gr.Button(visible=False),
            )  # fmt: skip
        # The format allows 4 columns; this app makes at most 3 (each laid-out Chatbot
        # adds ~17 KB to the page's config, so there are no slots for more).
        shown = (
            ""
            if len(conv.columns) <= COLUMN_SLOTS
            else notice(
                f"This comparison has {len(conv.columns)} models; the first "
                f"{COLUMN_SLOTS} are shown.",
                "warning",
            )
        )
        slots: list[Any] = []
        for index in range(COLUMN_SLOTS):
            if index < len(conv.columns):
                column = conv.columns[index]
                slots += [
                    gr.Column(visible=True),
                    column_head_html(column.model),
                    to_display_messages(column),
                ]
            else:
                slots += [gr.Column(visible=False), gr.skip(), []]
        return (
            select, gr.Tab(visible=True), shown, summary_html(conv), *slots, token,
            gr.Button(visible=True),
        )  # fmt: skip

    async def continue_copy(self, token: object) -> tuple[Any, ...]:
        """Load the shared conversation into the Chat or Compare tab (this browser's copy).

        Outputs: shared notice, tabs, chat (chatbot, model, system prompt, temperature,
        top-p, max tokens), compare (models, system prompt, temperature, max tokens,
        chat 1..3)."""
        skip_chat = [gr.skip()] * 6
        skip_compare = [gr.skip()] * (4 + COLUMN_SLOTS)
        try:
            conv = self.decode(token)
        except ShareLinkError as exc:
            return (notice(exc.user_message, "error"), gr.skip(), *skip_chat, *skip_compare)
        p = conv.parameters
        temperature = _clamp(p.temperature, *TEMPERATURE_RANGE)
        top_p = _clamp(p.top_p, *TOP_P_RANGE)
        limit = self.service.settings.max_tokens_limit
        max_tokens = min(p.max_tokens, limit) if p.max_tokens is not None else None
        done = notice("A copy is loaded: it lives in this browser; the link is unchanged.")
        if conv.kind == "chat":
            column = conv.columns[0]
            chat = [
                to_display_messages(column), column.model, p.system_prompt or "",
                _or_skip(temperature), _or_skip(top_p), _or_skip(max_tokens),
            ]  # fmt: skip
            return (done, gr.Tabs(selected=TAB_CHAT), *chat, *skip_compare)
        columns = conv.columns[:COLUMN_SLOTS]
        chats = [to_display_messages(c) for c in columns]
        chats += [[] for _ in range(COLUMN_SLOTS - len(chats))]
        compare = [
            [c.model for c in columns], p.system_prompt or "", _or_skip(temperature),
            _or_skip(max_tokens), *chats,
        ]  # fmt: skip
        return (done, gr.Tabs(selected=TAB_COMPARE), *skip_chat, *compare)


def layout_shared_view(view: SharedView, tab: gr.Tab) -> SharedViewComponents:
    """The Shared tab's content; call inside `tab`."""
    message = gr.HTML("", elem_id="share-notice", padding=False)
    summary = gr.HTML("", elem_id="shared-summary", padding=False)
    columns, heads, chats = [], [], []
    with gr.Row(equal_height=False, elem_classes=["compare-columns"], elem_id="shared-columns"):
        for slot in range(1, COLUMN_SLOTS + 1):
            with gr.Column(min_width=300, visible=False, elem_id=f"shared-col-{slot}") as column:
                heads.append(gr.HTML("", elem_id=f"shared-head-{slot}", padding=False))
                chats.append(
                    gr.Chatbot(
                        show_label=False,
                        elem_id=f"shared-chat-{slot}",
                        height=460,
                        buttons=["copy", "copy_all"],
                        feedback_options=None,
                    )
                )
            columns.append(column)
    continue_button = gr.Button(
        "Continue from a copy", variant="primary", visible=False, elem_id="shared-continue"
    )
    token = gr.Textbox("", visible=False, elem_id="shared-token")
    view.components = SharedViewComponents(
        tab, message, summary, columns, heads, chats, token, continue_button
    )
    return view.components


def wire_shared_view(
    demo: gr.Blocks,
    view: SharedView,
    tabs: gr.Tabs,
    chat_outputs: list[Any],
    compare_outputs: list[Any],
    save_chat: dict[str, Any] | None = None,
) -> None:
    """Page load (?share= and tab choice) and "Continue from a copy".
    `chat_outputs`: chatbot, model, system prompt, temperature, top-p, max tokens;
    `compare_outputs`: models, system prompt, temperature, max tokens, chat 1..3;
    `save_chat`: the chat's `.then(**save_chat)` that stores its history in the browser."""
    c = view.components
    assert c is not None, "layout_shared_view first"
    slots: list[Any] = []
    for column, head, chatbot in zip(c.columns, c.heads, c.chats, strict=True):
        slots += [column, head, chatbot]
    demo.load(
        view.on_load,
        outputs=[tabs, c.tab, c.notice, c.summary, *slots, c.token, c.continue_button],
        api_visibility="undocumented",
        show_progress="hidden",
    )
    event = c.continue_button.click(
        view.continue_copy,
        inputs=[c.token],
        outputs=[c.notice, tabs, *chat_outputs, *compare_outputs],
        api_name="continue_copy",
        preprocess=False,
        show_progress="hidden",
    )
    if save_chat is not None:
        event.then(**save_chat)
