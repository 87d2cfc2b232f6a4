"""The Battle tab: two anonymous models answer the same prompt; the user votes; then the
names are revealed.

No server state: the pairing travels with the browser in an encrypted, authenticated token
(ui/battle_token.py), so no response before the vote contains a model name: not the token,
not the column headers, not the warming banners or error messages (names are replaced by
"Model A"/"Model B"), and no speed figures (they would hint at the model).

API endpoints (for `gradio_client`):

    /battle       (message, battle_token, history_a, history_b, temperature, max_tokens)
                  -> (message box, banner, battle_token, head_a, chat_a, status_a,
                      head_b, chat_b, status_b)                                  streams
                  An empty battle_token starts a new battle: two models picked at random,
                  empty conversations. Otherwise the battle continues.
    /battle_vote  (battle_token, choice, history_a, history_b)
                  -> (banner, battle_token, head_a, head_b)
                  choice: "a", "b", "tie" or "both_bad". Records the vote, reveals the
                  names and ends the battle (the token comes back empty).
    /battle_stop  ()

Votes go through `record_vote` (ui/votes.py): one JSON line on stdout (logger
"ui.battle.votes", JsonLogFormatter) once the vote store (LLM_VOTES) has saved them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui.backend_client import BackendClient
from ui.battle_token import (
    BattleTokenError,
    new_pairing,
    open_pairing,
    seal_pairing,
)
from ui.chat_history import HistoryRejected, Message, conversation, fit_to_context, is_note
from ui.chat_history import parse_history as parse_chat_history
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
from ui.compare_page import (
    ColumnRequest,
    ColumnStreamer,
    ColumnView,
    blind_head_html,
)
from ui.model_directory import ModelDirectory, ModelRejected
from ui.model_labels import label_for
from ui.rate_limit import RateLimiter
from ui.settings import Settings
from ui.stop_signals import StopSignals
from ui.vote_store import AlreadyVoted
from ui.votes import VALID_CHOICES, JsonLogFormatter, VoteBook, VoteNotSaved, pick_battle_pair
from ui.warming import ColdStartTracker

logger = logging.getLogger(__name__)

SIDES = ("Model A", "Model B")
DEFAULT_BATTLE_MAX_TOKENS = 256
VOTE_LOGGER_NAME = "ui.battle.votes"
CHOICE_TEXT = {
    "a": "Model A is better",
    "b": "Model B is better",
    "tie": "It's a tie",
    "both_bad": "Both are bad",
}
MISSING_MODEL_MESSAGE = (
    "One of this battle's models is no longer available. Press “New battle” to start another."
)


class _StdoutJsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """JSON lines on the current sys.stdout (looked up per record, so a replaced stdout,
    e.g. under a test runner, is followed)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(JsonLogFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def vote_logger() -> logging.Logger:
    """The logger votes go to: one JSON object per line on stdout (Cloud Logging reads
    `severity`, `message` and `timestamp` from it). Set up once per process."""
    log = logging.getLogger(VOTE_LOGGER_NAME)
    if not any(isinstance(h, _StdoutJsonHandler) for h in log.handlers):
        log.addHandler(_StdoutJsonHandler())
        log.setLevel(logging.INFO)
        log.propagate = False  # not a second, plain-text copy through the root logger
    return log


def has_reply(history: Sequence[Message]) -> bool:
    return any(m["role"] == "assistant" and not is_note(m) and m["content"] for m in history)


@dataclass
class PreparedBattle:
    token: str
    columns: list[ColumnRequest]
    options: dict[str, Any]
    notices: list[str]
    session: str | None


class BattlePage:
    def __init__(
        self,
        settings: Settings,
        client: BackendClient,
        directory: ModelDirectory,
        secret: bytes,
        *,
        limiter: RateLimiter | None = None,
        tracker: ColdStartTracker | None = None,
        votes: VoteBook | None = None,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.secret = secret
        self.limiter = limiter or RateLimiter(settings.rate_limit_per_minute)
        self.checks = ChatPage(settings, client, directory, limiter=self.limiter)
        self.streamer = ColumnStreamer(
            client, tracker or ColdStartTracker(settings.typical_cold_start)
        )
        self.stops = StopSignals()
        # The store refuses a second vote per battle, whichever UI instance it reaches.
        self.votes = votes or VoteBook(settings.votes, vote_logger())
        self.components: BattleComponents | None = None

    async def _pick_pair(self) -> tuple[str, str]:
        choices = await self.directory.choices(deadline=MODEL_LIST_DEADLINE_S)
        tags = [label.tag for label in choices.labels]
        try:
            return pick_battle_pair(tags)
        except ValueError:
            why = f" ({choices.problem})" if choices.problem else ""
            raise InputRejected(
                f"A battle needs at least two models and {len(tags)} "
                f"{'is' if len(tags) == 1 else 'are'} available{why}."
            ) from None

    async def prepare(
        self,
        message: object,
        token: object,
        history_a: object,
        history_b: object,
        temperature: object,
        max_tokens: object,
        request: gr.Request | None,
    ) -> PreparedBattle | None:
        text = self.checks.check_message(message)
        if text is None:
            return None
        options, notices = self.checks.check_options(temperature, DEFAULT_TOP_P, max_tokens)
        new = not (isinstance(token, str) and token.strip())
        if new:
            model_a, model_b = await self._pick_pair()
            token = seal_pairing(new_pairing(model_a, model_b), self.secret)
            histories: list[list[Message]] = [[], []]
        else:
            try:
                pairing = open_pairing(token, self.secret)
            except BattleTokenError as exc:
                raise InputRejected(exc.user_message) from None
            model_a, model_b = pairing.model_a, pairing.model_b
            try:
                # The model may have been removed since; its name must not show.
                for model in (model_a, model_b):
                    await self.directory.check(model)
            except ModelRejected:
                raise InputRejected(MISSING_MODEL_MESSAGE) from None
            histories = [parse_chat_history(history_a), parse_chat_history(history_b)]
        self.checks.check_rate(request)
        columns = []
        for model, side, history in zip((model_a, model_b), SIDES, histories, strict=True):
            display = [*history, {"role": "user", "content": text}]
            fitted = fit_to_context(
                "",
                conversation(display),
                context_tokens=self.settings.context_tokens,
                reply_tokens=options["num_predict"],
            )
            columns.append(ColumnRequest(model, display, fitted.messages, label=side, blind=True))
        assert isinstance(token, str)
        session = getattr(request, "session_hash", None) if request is not None else None
        return PreparedBattle(token, columns, options, notices, session)

    # --- Gradio handlers ------------------------------------------------------------------
    async def battle(
        self,
        message: object,
        token: object,
        history_a: object,
        history_b: object,
        temperature: object,
        max_tokens: object,
        request: gr.Request,
    ) -> AsyncIterator[tuple[Any, ...]]:
        try:
            prepared = await self.prepare(
                message, token, history_a, history_b, temperature, max_tokens, request
            )
        except (InputRejected, HistoryRejected) as exc:
            yield (gr.skip(), banner_html(exc.user_message, "error"), *[gr.skip()] * 7)
            return
        if prepared is None:
            yield (gr.skip(), banner_html(EMPTY_MESSAGE_HINT), *[gr.skip()] * 7)
            return
        banner = banner_html(" ".join(prepared.notices), "warning") if prepared.notices else ""
        # Every update carries the token and the (anonymous) headers, so an API caller can
        # take them from the final result (Gradio streams only what changed). The prompt
        # box and the banner are set once: later updates leave a new prompt being typed,
        # and a message from a vote pressed too early, alone.
        heads = (blind_head_html(SIDES[0]), blind_head_html(SIDES[1]))
        box: Any = ""
        stop = self.stops.register(prepared.session) if prepared.session else None
        try:
            async for views in self.streamer.stream(prepared.columns, prepared.options, stop):
                yield (box, banner, prepared.token, *_battle_columns(views, heads))
                box = banner = gr.skip()
        finally:
            if stop is not None and prepared.session:
                self.stops.release(prepared.session, stop)

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
        session = getattr(request, "session_hash", None)
        if session and self.stops.running(session):
            # The running stream would overwrite the revealed names with "Model A/B".
            text = "Wait until both answers are complete (or press Stop) before voting."
            return (banner_html(text, "error"), *unchanged)
        try:
            pairing = open_pairing(token, self.secret)
            if not (
                has_reply(parse_chat_history(history_a))
                and has_reply(parse_chat_history(history_b))
            ):
                raise InputRejected("Wait until both models have answered before voting.")
            self.checks.check_rate(request)
        except BattleTokenError as exc:
            return (banner_html(exc.user_message, "error"), *unchanged)
        except (InputRejected, HistoryRejected) as exc:
            return (banner_html(exc.user_message, "error"), *unchanged)
        choice = str(choice)
        try:
            # The store is blocking I/O (SQLite or Firestore): off the event loop.
            await asyncio.to_thread(
                self.votes.record,
                pairing.model_a,
                pairing.model_b,
                choice,
                battle_id=pairing.battle_id,
            )
        except (AlreadyVoted, VoteNotSaved) as exc:
            # Not saved: the token stays, so the same vote can be sent again.
            return (banner_html(exc.user_message, "error"), *unchanged)
        name_a = label_for(pairing.model_a).display_name
        name_b = label_for(pairing.model_b).display_name
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
        session = getattr(request, "session_hash", None)
        if not (session and self.stops.stop(session)):
            raise gr.Error("No battle is running.", visible=False, print_exception=False)


def _battle_columns(views: Sequence[ColumnView], heads: tuple[str, str]) -> list[Any]:
    outputs: list[Any] = []
    for view, head in zip(views, heads, strict=True):
        outputs += [head, view.history, view.status]
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
    send: gr.Button
    stop: gr.Button
    new_battle: gr.Button
    temperature: gr.Slider
    max_tokens: gr.Slider
    token: gr.Textbox
    choice: gr.Textbox


def build_battle_page(
    demo: gr.Blocks,
    settings: Settings,
    client: BackendClient,
    directory: ModelDirectory,
    secret: bytes,
    *,
    limiter: RateLimiter | None = None,
    tracker: ColdStartTracker | None = None,
    votes: VoteBook | None = None,
) -> BattlePage:
    page = BattlePage(
        settings, client, directory, secret, limiter=limiter, tracker=tracker, votes=votes
    )
    page.components = _layout(settings)
    _wire(page, page.components)
    return page


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
    with gr.Row(equal_height=True, elem_id="battle-composer"):
        message = gr.Textbox(
            label="Prompt",
            show_label=False,
            placeholder="Ask both models something; press Enter to send",
            lines=1,
            max_lines=8,
            scale=6,
            elem_id="battle-message",
            container=False,
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="battle-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="battle-stop")
        new_battle = gr.Button("New battle", scale=1, min_width=110, elem_id="battle-new")
    with gr.Accordion("Parameters", open=False, elem_id="battle-params"), gr.Row():
        temperature = gr.Slider(
            *TEMPERATURE_RANGE, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature",
            elem_id="battle-temperature",
        )  # fmt: skip
        max_tokens = gr.Slider(
            1, settings.max_tokens_limit,
            value=min(DEFAULT_BATTLE_MAX_TOKENS, settings.max_tokens_limit), step=1,
            label="Max tokens", elem_id="battle-max-tokens",
        )  # fmt: skip
    # Held by the browser (not gr.State, which lives in server memory).
    token = gr.Textbox("", visible=False, elem_id="battle-token")
    choice = gr.Textbox("", visible=False, elem_id="battle-choice")
    return BattleComponents(
        banner, heads, chats, statuses, votes, message, send, stop, new_battle,
        temperature, max_tokens, token, choice,
    )  # fmt: skip


def _wire(page: BattlePage, c: BattleComponents) -> None:
    column_outputs: list[Any] = []
    for head, chat, status in zip(c.heads, c.chats, c.statuses, strict=True):
        column_outputs += [head, chat, status]
    battle_event = gr.on(
        triggers=[c.message.submit, c.send.click],
        fn=page.battle,
        inputs=[c.message, c.token, *c.chats, c.temperature, c.max_tokens],
        outputs=[c.message, c.banner, c.token, *column_outputs],
        api_name="battle",
        preprocess=False,
        show_progress="hidden",  # each column has its status line
        concurrency_limit="default",
    )
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
