"""The Compare tab: one prompt, two or three models answering side by side, all at once.

Stateless like the chat: each column's conversation is its Chatbot's value, which the
browser sends with every request, so follow-up prompts continue each model's own
conversation and any UI instance can serve any request.

API endpoints (for `gradio_client`; every input is checked by ui/turn/, not by the
widgets):

    /compare       (message, models, system_prompt, temperature, max_tokens,
                    history_1, history_2, history_3)
                   -> (message box, banner, chat_1, status_1, chat_2, status_2,
                       chat_3, status_3)                                        streams
    /compare_with_image  (the same, then image) -> the same (the page's Send uses it)
    /compare_stop  ()                                  stops every column of this session

`models` is a list of 2-3 model names (or one comma-separated string); column i answers
with models[i] and continues history_i. Unused columns come back empty. `image` (a file,
or None) goes to every column, so it is offered only when every picked model sees
(ui/turn/images.py). Each status is
HTML: a warming banner while that column's backend is cold, then the reply's figures.
The columns stream concurrently through ui/turn/ (`stream_turn`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui.backend_access.labels import ModelLabel
from ui.backend_access.models import ModelChoices, ModelRejected
from ui.context import AppContext
from ui.errors import InputRejected
from ui.pages.export import ExportControls, ExportHandlers, layout_export, wire_export
from ui.pages.page_load import PageLoads
from ui.pages.status_bar import Picker
from ui.pages.widgets import (
    RAW_HTML_SHOWN_AS_TEXT,
    clear_image_when_sent,
    image_input,
    max_tokens_slider,
    prompt_row,
    temperature_slider,
    text_api_trigger,
)
from ui.settings import Settings
from ui.share.deep_links import (
    MAX_COMPARE_MODELS,
    MIN_COMPARE_MODELS,
    PARAM_COMPARE,
    compare_link,
    query_params,
)
from ui.turn.checks import (
    DEFAULT_COLUMNS_MAX_TOKENS,
    DEFAULT_TOP_P,
    EMPTY_MESSAGE_HINT,
    MODEL_LIST_DEADLINE_S,
    check_image,
    check_message,
    check_models,
    check_parameters,
    parse_histories,
    parse_model_list,
)
from ui.turn.prepare import Column, prepare
from ui.turn.reply import ColumnView
from ui.turn.scope import COMPARE
from ui.turn.stream import stop_turn, stream_turn
from ui.view.a11y import announce_reply_end
from ui.view.notes import column_messages
from ui.view.render import banner_html, column_head_html, column_status_html, notice_html

COLUMN_SLOTS = MAX_COMPARE_MODELS  # columns laid out; unused ones are hidden


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


class ComparePage:
    """The Compare tab's event handlers: raw values in, ui/turn/, component values out."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

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
        image: object = None,
        request: gr.Request | None = None,
    ) -> AsyncIterator[tuple[Any, ...]]:
        ctx = self.ctx
        try:
            text = check_message(ctx, message)
            if text is None:
                yield (gr.skip(), banner_html(EMPTY_MESSAGE_HINT), *_unchanged_columns())
                return
            names = await check_models(ctx, models, several=True)
            # Compare sends the chat's default top-p (it has no top-p control).
            params = check_parameters(ctx, system_prompt, temperature, DEFAULT_TOP_P, max_tokens)
            histories = parse_histories([history_1, history_2, history_3][: len(names)])
            attached, sees = await check_image(ctx, image, names, histories)
            columns = [Column(n, h, sees=s) for n, h, s in zip(names, histories, sees, strict=True)]
            turn = prepare(
                ctx, text, params, columns, request=request, scope=COMPARE, image=attached
            )
        except InputRejected as exc:
            # Nothing changes but the banner (not gr.Error: it would cover the columns).
            yield (gr.skip(), banner_html(exc.user_message, "error"), *_unchanged_columns())
            return
        banner = banner_html(" ".join(turn.notices), "warning") if turn.notices else ""
        box: Any = ""  # cleared once; later updates leave a new prompt being typed alone
        async for views in stream_turn(ctx, turn):
            yield (box, banner, *_column_outputs(views))
            box = gr.skip()

    async def stop(self, request: gr.Request) -> None:
        """Stop every column of this page's running comparison (as the chat's Stop does)."""
        if not stop_turn(self.ctx, request, COMPARE):
            raise gr.Error("No comparison is running.", visible=False, print_exception=False)

    async def prewarm(self, models: object) -> None:
        """Wake the picked models' backends in the background (page load, new pick)."""
        try:
            names = parse_model_list(models)[:MAX_COMPARE_MODELS]
        except InputRejected:
            return
        for name in names:
            if not self.ctx.models.is_allowed(name):
                continue
            try:
                self.ctx.prewarmer.warm(await self.ctx.models.check(name))
            except ModelRejected:
                continue

    async def image_control(self, models: object) -> Any:
        """The image input is offered only when every picked model sees."""
        try:
            names = parse_model_list(models)[:MAX_COMPARE_MODELS]
        except InputRejected:
            names = []
        models = self.ctx.models
        offered = bool(names) and all(models.is_allowed(n) for n in names)
        sees = offered and all([await models.can_see(n) for n in names])
        return gr.update(visible=sees)

    async def follow_pick(self, models: object) -> tuple[Any, ...]:
        """What follows from the picked models: the column headers, whether the third
        column shows, and the image control."""
        return (*column_layout(models), await self.image_control(models))

    async def load(self, request: gr.Request) -> tuple[Any, ...]:
        """Compare's part of the page load (ui/pages/page_load.py): fill the model picker
        (defaults: one per family) and apply ?compare= / ?q=. The models are warmed only
        when a ?compare= link asked for them (a plain visit warms the chat's model only;
        most visitors never open Compare)."""
        choices = await self.ctx.models.choices(deadline=MODEL_LIST_DEADLINE_S)
        offered = [label.tag for label in choices.labels]
        defaults = default_models(choices.labels)
        link = compare_link(
            query_params(request), offered, defaults, self.ctx.settings.max_message_chars
        )
        selected = link.models if link is not None else defaults
        notices = list(link.notices) if link is not None else []
        if choices.problem and not choices.labels:
            notices.append(f"Could not ask the backend for its models: {choices.problem}")
        prompt = link.prompt if link is not None and link.prompt is not None else gr.skip()
        if query_params(request).get(PARAM_COMPARE, "").strip():
            await self.prewarm(selected)
        return (
            gr.Dropdown(
                choices=choices.dropdown_choices, value=selected, label=picker_label(choices)
            ),
            prompt,
            notice_html(notices),
            *await self.follow_pick(selected),
        )


async def refill(real: ModelChoices, current: object) -> tuple[Any, Any]:
    """The backend's real list arrived (ui/pages/status_bar.py): keep the picks it offers, else
    pick the defaults."""
    tags = {label.tag for label in real.labels}
    picked = (
        [m for m in current if isinstance(m, str) and m in tags]
        if isinstance(current, list)
        else []
    )
    if len(picked) < MIN_COMPARE_MODELS:
        picked = default_models(real.labels)
    picker = gr.Dropdown(choices=real.dropdown_choices, value=picked, label=picker_label(real))
    return picker, picked


def picker_label(choices: ModelChoices) -> str:
    label = f"Models to compare ({MIN_COMPARE_MODELS}-{MAX_COMPARE_MODELS})"
    if choices.provisional:
        return f"{label} (provisional list: waiting for the backend to answer)"
    return label


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
            outputs += [column_messages(views[slot]), column_status_html(views[slot])]
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
    image: gr.Image
    send: gr.Button
    stop: gr.Button
    clear: gr.Button
    system_prompt: gr.Textbox
    temperature: gr.Slider
    max_tokens: gr.Slider
    share_row: gr.Row  # ui/pages/share.py puts its Share button and link here
    export: ExportControls  # ui/pages/export.py
    page: ComparePage

    def share_inputs(self) -> list[Any]:
        """What a share link of this comparison is made from (ui/pages/share.py)."""
        return [self.models, self.system_prompt, self.temperature, self.max_tokens, *self.chats]

    def copy_outputs(self) -> list[Any]:
        """Where "Continue from a copy" puts a shared comparison (as share_inputs)."""
        return self.share_inputs()

    def picker(self) -> Picker:
        """The models picker, refilled once the backend's real list is known, and what
        follows from its pick."""
        followers = [*self.heads, self.third_column, self.image]
        return Picker(self.models, refill, self.page.follow_pick, followers)


def build_compare_page(demo: gr.Blocks, ctx: AppContext, loads: PageLoads) -> CompareComponents:
    """Lay out the Compare tab inside the current Blocks context and wire its events; its
    part of the page load goes to `loads`."""
    page = ComparePage(ctx)
    components = _layout(ctx.settings, page)
    _wire(demo, page, components, loads)
    return components


def _layout(settings: Settings, page: ComparePage) -> CompareComponents:
    banner = gr.HTML("", elem_id="compare-banner", padding=False)
    models = gr.Dropdown(
        label=picker_label(ModelChoices([])),
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
                        allow_tags=RAW_HTML_SHOWN_AS_TEXT,
                        placeholder="The answer appears here.",
                        autoscroll=True,
                    )
                )
                # Under the answer: first token, speed, tokens, load time (or warming).
                statuses.append(gr.HTML("", elem_id=f"compare-status-{slot}", padding=False))
            columns.append(column)
    row, message, send, stop = prompt_row(
        "compare", "One prompt for every model; press Enter to send"
    )
    with row:
        clear = gr.Button("Clear", scale=1, min_width=80, elem_id="compare-clear")
    image = image_input("compare-image")
    with gr.Accordion("Parameters (apply to every model)", open=False, elem_id="compare-params"):
        system_prompt = gr.Textbox(
            label="System prompt",
            placeholder="Optional, e.g. “Answer in one sentence.”",
            lines=2,
            max_lines=8,
            elem_id="compare-system-prompt",
        )
        with gr.Row():
            temperature = temperature_slider("compare-temperature")
            max_tokens = max_tokens_slider(
                settings, DEFAULT_COLUMNS_MAX_TOKENS, "compare-max-tokens"
            )
    with gr.Row(equal_height=True, elem_id="compare-share-row") as share_row:
        pass
    export = layout_export("compare", importable=False)
    return CompareComponents(
        banner, models, heads, chats, statuses, columns[2], message, image, send, stop, clear,
        system_prompt, temperature, max_tokens, share_row, export, page,
    )  # fmt: skip


def _wire(demo: gr.Blocks, page: ComparePage, c: CompareComponents, loads: PageLoads) -> None:
    column_outputs: list[Any] = []
    for chat, status in zip(c.chats, c.statuses, strict=True):
        column_outputs += [chat, status]
    compare_inputs = [c.message, c.models, c.system_prompt, c.temperature, c.max_tokens, *c.chats]
    compare_kwargs: dict[str, Any] = {
        "outputs": [c.message, c.banner, *column_outputs],
        # Raw values: the handler checks them itself (ui/turn/).
        "preprocess": False,
        # Each column shows its own progress in its status line.
        "show_progress": "hidden",
        "concurrency_limit": "default",
    }
    compare_event = gr.on(
        triggers=[c.message.submit, c.send.click],
        fn=page.compare,
        inputs=[*compare_inputs, c.image],
        api_name="compare_with_image",
        **compare_kwargs,
    )
    text_api_trigger().click(
        page.compare, inputs=compare_inputs, api_name="compare", **compare_kwargs
    )
    compare_event.then(**announce_reply_end("compare", [*c.heads, *c.statuses]))
    compare_event.then(**clear_image_when_sent(c.message, c.image))
    c.stop.click(page.stop, api_name="compare_stop", queue=False, show_progress="hidden").failure(
        fn=None, cancels=[compare_event]
    )
    clear_js = "() => [" + ", ".join(["[]", "''"] * COLUMN_SLOTS) + ", '']"
    c.clear.click(fn=None, js=clear_js, outputs=[*column_outputs, c.banner])
    # A new choice of models starts a new comparison (the user's change only: a value set
    # by "Continue from a copy" comes with its conversations).
    c.models.input(fn=None, js=clear_js, outputs=[*column_outputs, c.banner])
    c.models.input(**c.picker().then_follow())
    prewarm: dict[str, Any] = {
        "fn": page.prewarm, "inputs": [c.models], "api_name": "compare_prewarm",
        "api_visibility": "undocumented",
        "show_progress": "hidden", "preprocess": False,
    }  # fmt: skip
    c.models.input(queue=False, **prewarm)
    loads.add(page.load, [c.models, c.message, c.banner, *c.picker().followers])
    wire_export(c.export, "compare", ExportHandlers(page.ctx).compare, c.share_inputs())
