"""The Share buttons of the Chat and Compare tabs, and the read-only view a link opens.

Links are made by ui/share/service.py (what a link holds, its base URL) and signed by
ui/share/format.py; this page lays out the buttons and the Shared tab and wires their events.

API endpoints:

    /share_chat     (history, model, system_prompt, temperature, top_p, max_tokens)
                    -> (link, notice)
    /share_compare  (models, system_prompt, temperature, max_tokens,
                     history_1, history_2, history_3) -> (link, notice)
    /continue_copy  (token) -> loads a shared conversation into the Chat or Compare tab

A link that is too long for a URL is made for the last turns that fit, and the notice
says so. Opening `/?share=TOKEN` shows the "Shared" tab: the models, parameters, messages
and per-reply stats, read-only, with "Continue from a copy"; each reply is marked as
generated here (its MAC verifies, ui/share/reply_mac.py) or as supplied by the sharer. A changed
or foreign link shows a message there, never an error page.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
from pydantic import ValidationError

from ui.context import AppContext
from ui.errors import InputRejected
from ui.pages.page_load import PageLoads
from ui.pages.widgets import RAW_HTML_SHOWN_AS_TEXT
from ui.share.deep_links import (
    MAX_COMPARE_MODELS,
    PARAM_SHARE,
    TAB_CHAT,
    TAB_COMPARE,
    initial_tab,
    query_params,
)
from ui.share.format import (
    SharedColumn,
    SharedConversation,
    ShareLinkError,
    ShareParameters,
    decode_share,
)
from ui.share.service import ShareService, shared_column, to_display_messages
from ui.turn.checks import (
    DEFAULT_TOP_P,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    check_models,
    check_parameters,
)
from ui.turn.history import parse_history
from ui.view.a11y import COPY_SHARE_LINK_JS
from ui.view.render import banner_html as notice
from ui.view.render import column_head_html, summary_html

logger = logging.getLogger(__name__)

NOTHING_TO_SHARE = "There is nothing to share yet: send a message first."
COLUMN_SLOTS = MAX_COMPARE_MODELS  # columns the shared view lays out


class ShareHandlers:
    """The Share buttons of the Chat and Compare tabs."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.service = ShareService(ctx.settings, ctx.secret, ctx.reply_macs)

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

    def _verifying(self, params: ShareParameters) -> dict[str, Any]:
        """What checks the replies' MACs: a reply stays verified only with the system
        prompt it was generated with (ui/share/reply_mac.py)."""
        return {"system_prompt": params.system_prompt or "", "macs": self.service.macs}

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
        return outcome.url, notice(outcome.notice, outcome.kind)

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
            params = self._parameters(system_prompt, temperature, top_p, max_tokens)
            column = shared_column(name, messages, **self._verifying(params))
            return SharedConversation(kind="chat", columns=[column], parameters=params)

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
            # Compare sends the chat's default top-p (it has no top-p control).
            params = self._parameters(system_prompt, temperature, DEFAULT_TOP_P, max_tokens)
            verifying = self._verifying(params)
            return SharedConversation(
                kind="compare",
                columns=[
                    shared_column(n, h, **verifying) for n, h in zip(checked, parsed, strict=True)
                ],
                parameters=params,
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
    ).then(fn=None, js=COPY_SHARE_LINK_JS, inputs=[link])


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
    ).then(fn=None, js=COPY_SHARE_LINK_JS, inputs=[link])


# === the read-only view ==================================================================
def _clamp(value: float | None, low: float, high: float) -> float | None:
    return None if value is None else min(max(value, low), high)


def _or_skip(value: object) -> Any:
    return gr.skip() if value is None else value


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

    def display(self, conv: SharedConversation, column: SharedColumn, *, marked: bool) -> Any:
        """A column's messages, its replies' MACs checked (`marked`: each reply says
        whether this server generated it)."""
        return to_display_messages(
            column,
            system_prompt=conv.parameters.system_prompt or "",
            macs=self.service.macs,
            marked=marked,
        )

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
                    self.display(conv, column, marked=True),
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
                self.display(conv, column, marked=False), column.model, p.system_prompt or "",
                _or_skip(temperature), _or_skip(top_p), _or_skip(max_tokens),
            ]  # fmt: skip
            return (done, gr.Tabs(selected=TAB_CHAT), *chat, *skip_compare)
        columns = conv.columns[:COLUMN_SLOTS]
        chats = [self.display(conv, c, marked=False) for c in columns]
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
                        allow_tags=RAW_HTML_SHOWN_AS_TEXT,
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
    loads: PageLoads,
    chat_outputs: list[Any],
    compare_outputs: list[Any],
    after_copy: Sequence[dict[str, Any]] = (),
) -> None:
    """Page load (?share= and tab choice; its part goes to `loads`) and "Continue from a
    copy". `chat_outputs`: chatbot, model, system prompt, temperature, top-p, max tokens;
    `compare_outputs`: models, system prompt, temperature, max tokens, chat 1..3;
    `after_copy`: events that follow a continued copy (`.then(**event)`: keep the chat in
    the browser, update what follows from the copied models)."""
    c = view.components
    assert c is not None, "layout_shared_view first"
    slots: list[Any] = []
    for column, head, chatbot in zip(c.columns, c.heads, c.chats, strict=True):
        slots += [column, head, chatbot]
    loads.add(view.on_load, [tabs, c.tab, c.notice, c.summary, *slots, c.token, c.continue_button])
    event = c.continue_button.click(
        view.continue_copy,
        inputs=[c.token],
        outputs=[c.notice, tabs, *chat_outputs, *compare_outputs],
        api_name="continue_copy",
        preprocess=False,
        show_progress="hidden",
    )
    for then in after_copy:
        event.then(**then)
