"""The Chat tab: a streaming chat with a model picker, parameters and per-reply stats.

Stateless by design: the conversation is the Chatbot's value, which the browser sends with
each request and keeps in `gr.BrowserState` (localStorage) between visits, so any UI
instance can serve any request.

API endpoints (for `gradio_client`; all inputs are checked by ui/turn/, not by the
widgets):

    /chat   (message, history, model, system_prompt, temperature, top_p, max_tokens)
            -> (message box, history, banner)        streams
    /chat_with_image  (the same, then image) -> the same; `image`: a file (gradio_client's
            handle_file) or None, for a model that sees (ui/turn/images.py). The page's
            Send uses it
    /retry  (history, model, system_prompt, temperature, top_p, max_tokens)
            -> (message box, history, banner)        streams a new last reply
    /undo   (history) -> (history, message box)      gives the last message back
    /stop   ()                                       ends this session's running reply
    /models () -> [{"tag", "label", "family", "parameter_size", "chat_tuned"}]

The banner slot: the streaming handlers have the banner (a `gr.HTML` above the chat, empty
by default) as their third output. While the backend is cold it shows the warming phase
with elapsed and typical seconds (`ui.turn.warming`); the first token clears it. Page load and a
model change pre-warm the backend (`Prewarmer`). The turn itself (checks, context fitting,
streaming, timings) is the one-column case of ui/turn/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui.backend_access.models import ModelChoices, ModelRejected
from ui.context import AppContext
from ui.errors import InputRejected
from ui.pages.export import ExportControls, ExportHandlers, layout_export, wire_export, wire_import
from ui.pages.page_load import PageLoads
from ui.pages.status_bar import Picker
from ui.pages.widgets import (
    RAW_HTML_SHOWN_AS_TEXT,
    clear_image_when_sent,
    image_input,
    max_tokens_slider,
    temperature_slider,
    text_api_trigger,
)
from ui.settings import Settings
from ui.share.deep_links import chat_link, query_params
from ui.turn.checks import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TOP_P,
    EMPTY_MESSAGE_HINT,
    MODEL_LIST_DEADLINE_S,
    TOP_P_RANGE,
    check_image,
    check_message,
    check_models,
    check_parameters,
)
from ui.turn.history import (
    Message,
    history_before,
    parse_history,
    split_last_user_message,
    split_last_user_turn,
    to_chatbot,
)
from ui.turn.prepare import Column, prepare
from ui.turn.scope import CHAT
from ui.turn.stream import stop_turn, stream_turn
from ui.view.a11y import announce_reply_end
from ui.view.notes import column_messages
from ui.view.render import (
    RESTORE_HISTORY_JS,
    SAVE_HISTORY_JS,
    banner_html,
    model_info_markdown,
    notice_html,
    waiting_html,
)

BROWSER_STORAGE_KEY = "serverless-llm-chat/history"
# BrowserState encrypts localStorage with a key that is sent to the page anyway, so it is
# not a secret; it must only be the same on every instance and after restarts, or a
# reload served by another instance could not read the saved chat.
BROWSER_STORAGE_KEY_MATERIAL = "serverless-llm-chat/browser-history/v1"


class ChatPage:
    """The chat's event handlers: raw widget values in, ui/turn/, component values out.

    A rejected request changes nothing (the message stays in the box) and says why in the
    banner. It is not raised as gr.Error: Gradio would then cover the whole chat with an
    "Error" overlay. API callers read the reason from the banner output."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    async def chat(
        self,
        message: object,
        history: object,
        model: object,
        system_prompt: object,
        temperature: object,
        top_p: object,
        max_tokens: object,
        image: object = None,
        request: gr.Request | None = None,
    ) -> AsyncIterator[tuple[Any, Any, Any]]:
        def start() -> tuple[list[Message], str | None, str]:
            return parse_history(history), check_message(self.ctx, message), EMPTY_MESSAGE_HINT

        parameters = (model, system_prompt, temperature, top_p, max_tokens)
        async for update in self._send(start, parameters, request, clear_box=True, image=image):
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
        earlier_image: dict[str, str] | None = None

        def start() -> tuple[list[Message], str | None, str]:
            nonlocal earlier_image
            earlier, last = split_last_user_message(parse_history(history))
            earlier_image = last.get("image") if last is not None else None
            text = last["content"] if last is not None else None
            return earlier, text, "There is no message to retry yet."

        parameters = (model, system_prompt, temperature, top_p, max_tokens)
        async for update in self._send(
            start, parameters, request, resent_image=lambda: earlier_image
        ):
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
        except (ValueError, TypeError) as exc:  # InputRejected is a ValueError
            yield _rejected(getattr(exc, "user_message", "That message cannot be edited."))
            return
        restored = list(display)
        restored[int(index)] = {
            **display[int(index)],
            "content": _edited_text(edit_data.previous_value),
        }
        restored = to_chatbot(restored)
        edited_image = display[int(index)].get("image")

        def start() -> tuple[list[Message], str | None, str]:
            return (
                earlier,
                check_message(self.ctx, _edited_text(edit_data.value)),
                EMPTY_MESSAGE_HINT,
            )

        parameters = (model, system_prompt, temperature, top_p, max_tokens)
        async for update in self._send(
            start, parameters, request, restore=restored, resent_image=lambda: edited_image
        ):
            yield update

    async def _send(
        self,
        start: Callable[[], tuple[list[Message], str | None, str]],
        parameters: tuple[object, object, object, object, object],
        request: gr.Request | None,
        *,
        clear_box: bool = False,
        restore: Any = None,
        image: object = None,
        resent_image: Callable[[], dict[str, str] | None] = lambda: None,
    ) -> AsyncIterator[tuple[Any, Any, Any]]:
        """Check the turn, then stream it. `start` gives (history before the message, the
        message or None when there is none to send, what to say then). A rejected turn
        leaves the box alone and shows `restore` (None: leaves the chat alone). `image`:
        the image input's raw value; `resent_image`: the image of a message sent again
        (retry, edit), known once `start` ran."""
        history = gr.skip() if restore is None else restore
        model, system_prompt, temperature, top_p, max_tokens = parameters
        try:
            earlier, text, hint = start()
            if text is None:
                yield gr.skip(), history, banner_html(hint)
                return
            params = check_parameters(self.ctx, system_prompt, temperature, top_p, max_tokens)
            names = await check_models(self.ctx, model, several=False)
            resent = resent_image()
            attached, sees = await check_image(self.ctx, image, names, [earlier], resent=resent)
            turn = prepare(
                self.ctx, text, params, [Column(names[0], earlier, sees=sees[0])],
                request=request, scope=CHAT, retry_hint=True, image=attached or resent,
            )  # fmt: skip
        except InputRejected as exc:
            yield gr.skip(), history, banner_html(exc.user_message, "error")
            return
        for notice in turn.columns[0].notices:
            gr.Warning(notice)
        # The first view shows the user's message at once, before the first token; the
        # banner shows the warming state until the first token.
        box = "" if clear_box else gr.skip()
        async for views in stream_turn(self.ctx, turn):
            yield box, column_messages(views[0]), waiting_html(views[0].waiting)

    async def undo(self, history: object) -> tuple[Any, Any]:
        """Remove the last message and its reply; give the message back for editing."""
        try:
            earlier, text = split_last_user_turn(parse_history(history))
        except InputRejected as exc:
            gr.Warning(exc.user_message)
            return gr.skip(), gr.skip()
        return to_chatbot(earlier), (text if text is not None else gr.skip())

    async def stop(self, request: gr.Request) -> None:
        """Stop this page's running reply. Raises (silently) when none is running, so the
        wiring can fall back to cancelling a request that is still waiting in the queue."""
        if not stop_turn(self.ctx, request, CHAT):
            raise gr.Error("No reply is being generated.", visible=False, print_exception=False)

    async def prewarm(self, model: object) -> None:
        """Wake the backend and load `model` in the background (page load, model change).
        Returns at once; nothing periodic, so no GPU is kept warm without a user."""
        models = self.ctx.models
        if isinstance(model, str) and models.is_allowed(model.strip()):
            try:
                name = await models.check(model)
            except ModelRejected:
                return
            self.ctx.prewarmer.warm(name)

    async def image_control(self, model: object) -> Any:
        """The image input is offered only for a model that sees (ui/turn/images.py)."""
        name = model.strip() if isinstance(model, str) else ""
        offered = bool(name) and self.ctx.models.is_allowed(name)
        return gr.update(visible=offered and await self.ctx.models.can_see(name))

    async def load(self, request: gr.Request) -> tuple[Any, ...]:
        """Chat's part of the page load (ui/pages/page_load.py): fill the picker and what
        follows from its pick; a deep link (?model=, ?q=) preselects the model and fills
        the message box. Bad link values are ignored with a notice in the banner."""
        choices = await self.ctx.models.choices(deadline=MODEL_LIST_DEADLINE_S)
        if choices.problem and not choices.labels:
            gr.Warning(f"Could not ask the backend for its models: {choices.problem}")
        options = choices.dropdown_choices
        value = preferred_model(choices)
        link = chat_link(
            query_params(request), [t for _, t in options], self.ctx.settings.max_message_chars
        )
        value = link.models[0] if link.models else value
        prompt = link.prompt if link.prompt is not None else gr.skip()
        notice = notice_html(link.notices) if link.notices else gr.skip()
        picker = gr.Dropdown(choices=options, value=value, label=picker_label(choices))
        return (picker, *await self.follow_pick(value), prompt, notice)

    async def follow_pick(self, model: object) -> tuple[Any, Any]:
        """What follows from the picked model: its description and the image control."""
        tag = model if isinstance(model, str) else None
        return model_info_markdown(tag), await self.image_control(model)

    async def refill(self, real: ModelChoices, current: object) -> tuple[Any, Any]:
        """The backend's real list arrived (ui/pages/status_bar.py): keep the user's pick if it
        is offered, else pick again, and warm what is picked now."""
        tags = [label.tag for label in real.labels]
        value = current if isinstance(current, str) and current in tags else preferred_model(real)
        if value is not None and value != current:
            await self.prewarm(value)
        picker = gr.Dropdown(choices=real.dropdown_choices, value=value, label=picker_label(real))
        return picker, value

    async def models_api(self) -> list[dict[str, Any]]:
        """The models this UI offers, with their labels."""
        choices = await self.ctx.models.choices(deadline=MODEL_LIST_DEADLINE_S)
        if choices.problem and not choices.labels:
            raise gr.Error(f"Could not ask the backend for its models: {choices.problem}")
        return [
            {
                "tag": lbl.tag,
                "label": lbl.text,
                "family": lbl.family_label,
                "parameter_size": lbl.parameter_size,
                "chat_tuned": lbl.chat_tuned,
                # True while the backend has not answered: not its list, what the UI knows
                "provisional": choices.provisional,
            }
            for lbl in choices.labels
        ]


def preferred_model(choices: ModelChoices) -> str | None:
    """A chat-tuned model first: a base model rambles instead of answering."""
    preferred = next((lbl.tag for lbl in choices.labels if lbl.chat_tuned), None)
    return preferred or (choices.labels[0].tag if choices.labels else None)


def picker_label(choices: ModelChoices) -> str:
    if choices.provisional:
        return "Model (provisional list: waiting for the backend to answer)"
    return "Model"


def _rejected(reason: str) -> tuple[Any, Any, Any]:
    """Outputs for a request that was not sent: box and chat unchanged, reason shown."""
    return gr.skip(), gr.skip(), banner_html(reason, "error")


def _edited_text(value: object) -> object:
    """EditData values arrive as text or as Gradio's content list."""
    if isinstance(value, list):
        texts = [p.get("text") if isinstance(p, dict) else p for p in value]
        return "".join(t for t in texts if isinstance(t, str))
    if isinstance(value, dict):
        return value.get("text", "")
    return value


# === layout and wiring ==================================================================
def build_chat_page(demo: gr.Blocks, ctx: AppContext, loads: PageLoads) -> ChatComponents:
    """Lay out the chat inside the current Blocks context (a Tab) and wire its events; its
    part of the page load goes to `loads`."""
    page = ChatPage(ctx)
    components = _layout(ctx.settings, page)
    _wire(demo, page, components, loads)
    return components


@dataclass
class ChatComponents:
    banner: gr.HTML
    chatbot: gr.Chatbot
    message: gr.Textbox
    image: gr.Image
    send: gr.Button
    stop: gr.Button
    model: gr.Dropdown
    model_info: gr.Markdown
    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider
    store: gr.BrowserState
    page: ChatPage
    export: ExportControls  # ui/pages/export.py

    def picker(self) -> Picker:
        """The model picker, refilled once the backend's real list is known, and what
        follows from its pick."""
        return Picker(
            self.model, self.page.refill, self.page.follow_pick, [self.model_info, self.image]
        )

    def save_history(self) -> dict[str, Any]:
        """Keyword arguments of an event (`.then(**...)`) that keeps the chat in the
        browser's storage; it runs in the browser, with no server round trip."""
        return {
            "fn": None,
            "js": SAVE_HISTORY_JS,
            "inputs": [self.chatbot],
            "outputs": [self.store],
        }

    def share_inputs(self) -> list[Any]:
        """What a share link of this chat is made from (ui/pages/share.py)."""
        return [self.chatbot, self.model, self.system_prompt, self.temperature, self.top_p,
                self.max_tokens]  # fmt: skip

    def copy_outputs(self) -> list[Any]:
        """Where "Continue from a copy" puts a shared chat (same order as share_inputs)."""
        return self.share_inputs()


def _layout(settings: Settings, page: ChatPage) -> ChatComponents:
    banner = gr.HTML("", label="Status", elem_id="chat-banner", padding=False)
    with gr.Row(equal_height=False, elem_id="chat-layout"):
        with gr.Column(scale=3, min_width=360, elem_id="chat-main"):
            chatbot = gr.Chatbot(
                label="Chat",
                elem_id="chatbot",
                height=520,
                editable="user",
                buttons=["copy", "copy_all"],
                feedback_options=None,
                allow_tags=RAW_HTML_SHOWN_AS_TEXT,
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
            image = image_input("image")
        with gr.Column(scale=1, min_width=260, elem_id="chat-side"):
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
                temperature = temperature_slider("temperature")
                top_p = gr.Slider(
                    *TOP_P_RANGE, value=DEFAULT_TOP_P, step=0.01, label="Top-p", elem_id="top-p"
                )
                max_tokens = max_tokens_slider(settings, DEFAULT_MAX_TOKENS, "max-tokens")
            export = layout_export("chat", importable=True)
    store = gr.BrowserState(
        [], storage_key=BROWSER_STORAGE_KEY, secret=BROWSER_STORAGE_KEY_MATERIAL
    )
    return ChatComponents(
        banner, chatbot, message, image, send, stop, model, model_info, system_prompt,
        temperature, top_p, max_tokens, store, page, export,
    )  # fmt: skip


def _wire(demo: gr.Blocks, page: ChatPage, c: ChatComponents, loads: PageLoads) -> None:
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
    save = c.save_history()

    chat_event = gr.on(
        triggers=[c.message.submit, c.send.click],
        fn=page.chat,
        inputs=[c.message, c.chatbot, *params, c.image],
        outputs=stream_outputs,
        api_name="chat_with_image",
        **stream_kwargs,
    )
    text_api_trigger().click(
        page.chat, inputs=[c.message, c.chatbot, *params], outputs=stream_outputs,
        api_name="chat", **stream_kwargs,
    )  # fmt: skip
    chat_event.then(**clear_image_when_sent(c.message, c.image))
    retry_event = c.chatbot.retry(
        page.retry, inputs=[c.chatbot, *params], outputs=stream_outputs, api_name="retry",
        **stream_kwargs,
    )  # fmt: skip
    edit_event = c.chatbot.edit(
        page.edit, inputs=[c.chatbot, *params], outputs=stream_outputs, api_name="edit",
        api_visibility="undocumented", **stream_kwargs,
    )  # fmt: skip
    for event in (chat_event, retry_event, edit_event):
        event.then(**save).then(**announce_reply_end("chat", [c.chatbot, c.model]))

    # Stop ends a running stream gracefully (see ui/turn/stop_signals.py); only when none runs
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
    picker = c.picker()
    loads.add(page.load, [c.model, c.model_info, c.image, c.message, c.banner])
    loads.then(fn=page.prewarm, inputs=[c.model], api_name="prewarm", show_progress="hidden")
    c.model.input(
        page.prewarm, inputs=[c.model], show_progress="hidden", queue=False,
        api_name="prewarm_pick", api_visibility="undocumented",
    )  # fmt: skip
    c.model.input(**picker.then_follow())
    gr.api(page.models_api, api_name="models")
    exports = ExportHandlers(page.ctx)
    wire_export(c.export, "chat", exports.chat, c.share_inputs())
    wire_import(c.export, exports, c.copy_outputs(), [save, picker.then_follow()])
