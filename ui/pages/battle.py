"""The Battle tab: two anonymous models answer the same prompt; the user votes; then the
names are revealed.

No server state: the pairing travels with the browser in an encrypted, authenticated token
(ui/votes/battle_token.py), so no response before the vote contains a model name: not the token,
not the column headers, not the warming banners or error messages (names are replaced by
"Model A"/"Model B"), and no speed figures (they would hint at the model).

API endpoints (for `gradio_client`):

    /battle       (message, battle_token, history_a, history_b, temperature, max_tokens)
                  -> (message box, banner, battle_token, head_a, chat_a, status_a,
                      head_b, chat_b, status_b)                                  streams
                  An empty battle_token starts a new battle: two models picked at random,
                  empty conversations. Otherwise the battle continues.
    /battle_with_image  (the same, then image) -> the same (the page's Send uses it).
                  With an image (a file, or None; ui/turn/images.py) a new battle
                  is drawn among the models that see; the control shows when at least
                  two can, and a refusal never says which model of a battle cannot see.
    /battle_vote  (battle_token, choice, history_a, history_b)
                  -> (banner, battle_token, head_a, head_b)
                  choice: "a", "b", "tie" or "both_bad". Records the vote, reveals the
                  names and ends the battle (the token comes back empty).
    /battle_stop  ()

The turn (checks, context fitting, streaming both columns) goes through ui/turn/ with
blind columns. Votes go to the vote store (ctx.votes, ui/votes/book.py; LLM_VOTES), then one JSON
line on stdout (logger "ui.battle.votes", JsonLogFormatter).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from ui.backend_access.labels import display_name
from ui.backend_access.models import ModelRejected
from ui.context import AppContext
from ui.errors import BackendError, InputRejected
from ui.pages.page_load import PageLoads
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
from ui.turn.checks import (
    DEFAULT_COLUMNS_MAX_TOKENS,
    DEFAULT_TOP_P,
    EMPTY_MESSAGE_HINT,
    MODEL_LIST_DEADLINE_S,
    check_image,
    check_message,
    check_parameters,
    check_rate,
    check_vote_quota,
)
from ui.turn.history import Message, has_reply, is_note, parse_history
from ui.turn.images import upload_path
from ui.turn.prepare import Column, PreparedTurn, prepare
from ui.turn.reply import ColumnView
from ui.turn.scope import BATTLE
from ui.turn.stream import stop_turn, stream_turn, turn_running
from ui.view.a11y import announce_reply_end
from ui.view.notes import column_messages
from ui.view.render import banner_html, blind_head_html, column_status_html
from ui.votes.battle_token import (
    BattlePairing,
    new_pairing,
    open_pairing,
    reply_digest,
    seal_pairing,
    votable,
)
from ui.votes.book import (
    NAMES_A_MODEL_MESSAGE,
    VALID_CHOICES,
    VoteNotSaved,
    names_a_model,
    pick_battle_pair,
)

logger = logging.getLogger(__name__)

SIDES = ("Model A", "Model B")
CHOICE_TEXT = {
    "a": "Model A is better",
    "b": "Model B is better",
    "tie": "It's a tie",
    "both_bad": "Both are bad",
}
MISSING_MODEL_MESSAGE = (
    "One of this battle's models is no longer available. Press “New battle” to start another."
)


class BattlePage:
    """The Battle tab's event handlers: raw values in, ui/turn/, component values out."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    async def _pick_pair(self, *, seeing: bool = False) -> tuple[str, str]:
        """Two models at random (`seeing`: among those that take images)."""
        models = self.ctx.models
        choices = await models.choices(deadline=MODEL_LIST_DEADLINE_S)
        tags = [label.tag for label in choices.labels]
        if choices.provisional and not models.allowed:
            # Only the backend knows which models it has: wait for it (the page shows
            # that it waits, and the status line what the backend is doing).
            try:
                tags = [m.name for m in await models.available(
                    deadline=self.ctx.settings.cold_start_deadline
                )]  # fmt: skip
            except BackendError as exc:
                raise InputRejected(exc.user_message) from None
        if seeing:
            tags = [tag for tag in tags if await models.can_see(tag)]
        try:
            return pick_battle_pair(tags)
        except ValueError:
            if seeing:
                raise InputRejected(
                    f"A battle with an image needs two models that see images; {len(tags)} "
                    f"{'is' if len(tags) == 1 else 'are'} available. Remove the image."
                ) from None
            why = f" ({choices.problem})" if choices.problem else ""
            raise InputRejected(
                f"A battle needs at least two models and {len(tags)} "
                f"{'is' if len(tags) == 1 else 'are'} available{why}."
            ) from None

    async def _prepare(
        self,
        text: str,
        token: object,
        history_a: object,
        history_b: object,
        temperature: object,
        max_tokens: object,
        request: gr.Request | None,
        image: object = None,
    ) -> tuple[BattlePairing, PreparedTurn]:
        """(the battle's pairing, the turn): a new battle when `token` is empty."""
        ctx = self.ctx
        # No system prompt; the chat's default top-p (there is no control for either).
        params = check_parameters(ctx, "", temperature, DEFAULT_TOP_P, max_tokens)
        if not (isinstance(token, str) and token.strip()):
            model_a, model_b = await self._pick_pair(seeing=upload_path(image) is not None)
            pairing = new_pairing(model_a, model_b)
            histories: list[list[Message]] = [[], []]
        else:
            pairing = open_pairing(token, ctx.secret)  # BattleTokenError: InputRejected
            model_a, model_b = pairing.model_a, pairing.model_b
            try:
                # The model may have been removed since; its name must not show.
                for model in (model_a, model_b):
                    await ctx.models.check(model)
            except ModelRejected:
                raise InputRejected(MISSING_MODEL_MESSAGE) from None
            histories = [parse_history(history_a), parse_history(history_b)]
        attached, sees = await check_image(ctx, image, (model_a, model_b), histories, blind=True)
        columns = [
            Column(model, history, label=side, blind=True, sees=can)
            for model, side, history, can in zip(
                (model_a, model_b), SIDES, histories, sees, strict=True
            )
        ]
        turn = prepare(ctx, text, params, columns, request=request, scope=BATTLE, image=attached)
        return replace(pairing, replies=None), turn

    async def battle(
        self,
        message: object,
        token: object,
        history_a: object,
        history_b: object,
        temperature: object,
        max_tokens: object,
        image: object = None,
        request: gr.Request | None = None,
    ) -> AsyncIterator[tuple[Any, ...]]:
        try:
            text = check_message(self.ctx, message)
            if text is None:
                yield (gr.skip(), banner_html(EMPTY_MESSAGE_HINT), *[gr.skip()] * 7)
                return
            if not (isinstance(token, str) and token.strip()) and not self.ctx.models.seen:
                waiting = "Waiting for the GPU backend to start and list its models…"
                yield (gr.skip(), banner_html(waiting), *[gr.skip()] * 7)
            pairing, turn = await self._prepare(
                text, token, history_a, history_b, temperature, max_tokens, request, image
            )
        except InputRejected as exc:
            yield (gr.skip(), banner_html(exc.user_message, "error"), *[gr.skip()] * 7)
            return
        banner: Any = banner_html(" ".join(turn.notices), "warning") if turn.notices else ""
        # Every update carries the token and the (anonymous) headers, so an API caller can
        # take them from the final result (Gradio streams only what changed). The prompt
        # box and the banner are set once: later updates leave a new prompt being typed,
        # and a message from a vote pressed too early, alone.
        heads = (blind_head_html(SIDES[0]), blind_head_html(SIDES[1]))
        box: Any = ""
        token = seal_pairing(pairing, self.ctx.secret)  # not votable while streaming
        views: Sequence[ColumnView] = ()
        async for views in stream_turn(self.ctx, turn):
            yield (box, banner, token, *_battle_columns(views, heads))
            box = banner = gr.skip()
        # Both replies streamed to their end: the token is bound to them, and a vote is
        # taken (unless a reply names a model: the battle is no longer blind).
        ended = [_last_reply(column_messages(v)) for v in views if v.phase == "done"]
        if len(ended) == 2 and all(ended):
            names = {m: display_name(m) for m in (pairing.model_a, pairing.model_b)}
            if names_a_model(ended, names):
                logger.info("battle %s names a model: no vote", pairing.battle_id)
                yield (box, banner_html(NAMES_A_MODEL_MESSAGE, "warning"), token,
                       *_battle_columns(views, heads))  # fmt: skip
            else:
                bound = seal_pairing(votable(pairing, ended[0], ended[1]), self.ctx.secret)
                yield (box, banner, bound, *_battle_columns(views, heads))

    async def load(self, request: gr.Request) -> tuple[Any]:
        """Battle's part of the page load (ui/pages/page_load.py)."""
        return (await self.image_control(),)

    async def image_control(self) -> Any:
        """The image input shows when at least two offered models see (a battle with an
        image is drawn among them)."""
        choices = await self.ctx.models.choices(deadline=MODEL_LIST_DEADLINE_S)
        seeing = [label.tag for label in choices.labels if await self.ctx.models.can_see(label.tag)]
        return gr.update(visible=len(seeing) >= 2)

    async def vote(
        self,
        token: object,
        choice: object,
        history_a: object,
        history_b: object,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """Record the vote, reveal the names, end the battle."""
        unchanged = (gr.skip(), gr.skip(), gr.skip())
        if choice not in VALID_CHOICES:
            valid = ", ".join(VALID_CHOICES)
            return (banner_html(f"Unknown vote {choice!r}: use one of {valid}.", "error"),
                    *unchanged)  # fmt: skip
        if turn_running(self.ctx, request, BATTLE):
            # The running stream would overwrite the revealed names with "Model A/B".
            text = "Wait until both answers are complete (or press Stop) before voting."
            return (banner_html(text, "error"), *unchanged)
        try:
            pairing = open_pairing(token, self.ctx.secret)
            parsed = [parse_history(history_a), parse_history(history_b)]
            if pairing.replies is None or not all(has_reply(h) for h in parsed):
                raise InputRejected("Wait until both models have answered before voting.")
            if tuple(reply_digest(_last_reply(h)) for h in parsed) != pairing.replies:
                raise InputRejected(
                    "These answers are not the ones this battle streamed, so the vote "
                    "cannot be counted. Press “New battle” to start another one."
                )
            check_rate(self.ctx, request, BATTLE)
            check_vote_quota(self.ctx, request)
        except InputRejected as exc:
            return (banner_html(exc.user_message, "error"), *unchanged)
        choice = str(choice)
        try:
            # The store is blocking I/O (SQLite or Firestore): off the event loop. It
            # refuses a second vote for this battle, whichever UI instance it reaches.
            await asyncio.to_thread(
                self.ctx.votes.record,
                pairing.model_a,
                pairing.model_b,
                choice,
                battle_id=pairing.battle_id,
            )
        except (InputRejected, VoteNotSaved) as exc:  # AlreadyVoted is an InputRejected
            # Not saved: the token stays, so the same vote can be sent again.
            return (banner_html(exc.user_message, "error"), *unchanged)
        name_a = display_name(pairing.model_a)
        name_b = display_name(pairing.model_b)
        text = (
            f"Thanks for voting: {CHOICE_TEXT[choice]}. Model A was {name_a} and "
            f"Model B was {name_b}. Send a new prompt for the next battle."
        )
        return (
            banner_html(text, "info"),
            "",  # the battle is over: the next prompt starts a new one
            blind_head_html(SIDES[0], name_a),
            blind_head_html(SIDES[1], name_b),
        )

    async def stop(self, request: gr.Request) -> None:
        if not stop_turn(self.ctx, request, BATTLE):
            raise gr.Error("No battle is running.", visible=False, print_exception=False)


def _last_reply(history: Sequence[Message]) -> str:
    """The text of the last reply in a display history ("" if none)."""
    for message in reversed(history):
        if message["role"] == "assistant" and not is_note(message):
            return str(message["content"] or "")
    return ""


def _battle_columns(views: Sequence[ColumnView], heads: tuple[str, str]) -> list[Any]:
    outputs: list[Any] = []
    for view, head in zip(views, heads, strict=True):
        outputs += [head, column_messages(view), column_status_html(view)]
    return outputs


# === layout and wiring ===================================================================
@dataclass
class BattleComponents:
    banner: gr.HTML
    heads: list[gr.HTML]
    chats: list[gr.Chatbot]
    statuses: list[gr.HTML]
    votes: dict[str, gr.Button]
    message: gr.Textbox
    image: gr.Image
    send: gr.Button
    stop: gr.Button
    new_battle: gr.Button
    temperature: gr.Slider
    max_tokens: gr.Slider
    token: gr.Textbox
    choice: gr.Textbox


def build_battle_page(demo: gr.Blocks, ctx: AppContext, loads: PageLoads) -> BattleComponents:
    """Lay out the Battle tab inside the current Blocks context and wire its events; its
    part of the page load (the image control) goes to `loads`."""
    components = _layout(ctx.settings)
    page = BattlePage(ctx)
    _wire(page, components)
    loads.add(page.load, [components.image])
    return components


def _layout(settings: Settings) -> BattleComponents:
    gr.Markdown(
        "Two anonymous models answer your prompt. Vote for the better answer: the names "
        "are revealed after your vote.",
        elem_id="battle-intro",
    )
    banner = gr.HTML("", elem_id="battle-banner", padding=False)
    heads, chats, statuses = [], [], []
    with gr.Row(equal_height=False, elem_classes=["compare-columns"], elem_id="battle-columns"):
        for side, key in zip(SIDES, ("a", "b"), strict=True):
            with gr.Column(min_width=300, elem_id=f"battle-col-{key}"):
                heads.append(
                    gr.HTML(blind_head_html(side), elem_id=f"battle-head-{key}", padding=False)
                )
                chats.append(
                    gr.Chatbot(
                        label=side,
                        show_label=False,
                        elem_id=f"battle-chat-{key}",
                        height=400,
                        buttons=["copy"],
                        feedback_options=None,
                        allow_tags=RAW_HTML_SHOWN_AS_TEXT,
                        placeholder=f"{side}'s answer appears here.",
                    )
                )
                # Under the answer: first token, speed, tokens, load time (or warming).
                statuses.append(gr.HTML("", elem_id=f"battle-status-{key}", padding=False))
    with gr.Row(elem_id="battle-votes"):
        votes = {
            "a": gr.Button("← A is better", elem_id="vote-a", min_width=120),
            "tie": gr.Button("Tie", elem_id="vote-tie", min_width=120),
            "both_bad": gr.Button("Both are bad", elem_id="vote-both-bad", min_width=120),
            "b": gr.Button("B is better →", elem_id="vote-b", min_width=120),
        }
    row, message, send, stop = prompt_row(
        "battle", "Ask both models something; press Enter to send"
    )
    with row:
        new_battle = gr.Button("New battle", scale=1, min_width=110, elem_id="battle-new")
    image = image_input("battle-image")
    with gr.Accordion("Parameters", open=False, elem_id="battle-params"), gr.Row():
        temperature = temperature_slider("battle-temperature")
        max_tokens = max_tokens_slider(settings, DEFAULT_COLUMNS_MAX_TOKENS, "battle-max-tokens")
    # Held by the browser (not gr.State, which lives in server memory).
    token = gr.Textbox("", visible=False, elem_id="battle-token")
    choice = gr.Textbox("", visible=False, elem_id="battle-choice")
    return BattleComponents(
        banner, heads, chats, statuses, votes, message, image, send, stop, new_battle,
        temperature, max_tokens, token, choice,
    )  # fmt: skip


def _wire(page: BattlePage, c: BattleComponents) -> None:
    column_outputs: list[Any] = []
    for head, chat, status in zip(c.heads, c.chats, c.statuses, strict=True):
        column_outputs += [head, chat, status]
    battle_inputs = [c.message, c.token, *c.chats, c.temperature, c.max_tokens]
    battle_kwargs: dict[str, Any] = {
        "outputs": [c.message, c.banner, c.token, *column_outputs],
        "preprocess": False,
        "show_progress": "hidden",  # each column has its status line
        "concurrency_limit": "default",
    }
    battle_event = gr.on(
        triggers=[c.message.submit, c.send.click],
        fn=page.battle,
        inputs=[*battle_inputs, c.image],
        api_name="battle_with_image",
        **battle_kwargs,
    )
    text_api_trigger().click(page.battle, inputs=battle_inputs, api_name="battle", **battle_kwargs)
    battle_event.then(**announce_reply_end("battle", [*c.heads, *c.statuses]))
    battle_event.then(**clear_image_when_sent(c.message, c.image))
    c.stop.click(page.stop, api_name="battle_stop", queue=False, show_progress="hidden").failure(
        fn=None, cancels=[battle_event]
    )
    vote_outputs = [c.banner, c.token, *c.heads]
    for index, (choice, button) in enumerate(c.votes.items()):
        # The js runs first and its result becomes the handler's inputs: it puts this
        # button's choice in. One public endpoint takes the choice as an input.
        button.click(
            page.vote,
            inputs=[c.token, c.choice, *c.chats],
            outputs=vote_outputs,
            js=f"(token, choice, a, b) => [token, {json.dumps(choice)}, a, b]",
            api_name="battle_vote" if index == 0 else None,
            api_visibility="public" if index == 0 else "undocumented",
            preprocess=False,
            show_progress="hidden",
        )
    fresh = [blind_head_html(SIDES[0]), [], "", blind_head_html(SIDES[1]), [], ""]
    c.new_battle.click(
        fn=None,
        js=f"() => {json.dumps(['', '', *fresh])}",
        outputs=[c.banner, c.token, *column_outputs],
    )
